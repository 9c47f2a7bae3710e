"""Triton kernels for mode-switchable attention over a KV cache (docs/spec.md section 2).

Only @triton.jit code lives here (installed as tridiff.kernels.attention); the launcher
with its checks, tile choices and grid is tridiff/triton/attention.py.

One program owns a tile of BLOCK_M query rows of one sequence b and one KV head:
BLOCK_M // GROUP_P2 consecutive query positions times the GROUP query heads that share
that KV head (GQA packing), so every K/V tile it loads serves all of those heads.
Keys are walked in two parts, never materialising a mask:
  1. committed cache slots [0, P) (every valid row of every mode sees all of them),
     contiguous [B, Tmax, Hkv, D] or paged [pages, PAGE_SIZE, Hkv, D] via block_table;
     with NUM_SPLITS > 1 this range is cut into NUM_SPLITS chunks (flash-decoding),
     one per program along grid axis 2, sized from the row's own P;
  2. new tokens (read from k/v, not from the cache), done by the last split only, over
     just the key range the tile's rows can see (computed from P, n, mode, mode_arg):
     for ANCHORED_QUADRATIC, clean keys [0, max(last clean row, a_{g_hi})] and the
     tile's own mask groups, never the groups between (a_g found by _anchor, a 32-step
     running bit count, once per tile and once per row).
Visibility is recomputed per element from three per-row bounds (from the mode per row
of the int8 modes tensor, so a mixed batch is one launch). Softmax is online, in base 2, fp32.
NUM_SPLITS == 1 writes the output directly; otherwise each split writes its normalised
partial output and log2-sum-exp to a float32 workspace and merge_kernel combines them.
"""
import triton
import triton.language as tl

# tridiff.Mode values (kernels never import tridiff); tl.constexpr so @jit code may read them.
CAUSAL = tl.constexpr(0)
BIDIR_BLOCK = tl.constexpr(1)
QUADRATIC = tl.constexpr(2)
CAUSAL_THEN_BIDIR = tl.constexpr(3)
ANCHORED_QUADRATIC = tl.constexpr(4)


@triton.jit
def _popcount(x):
    """Set bits of uint32 x (SWAR; no popc instruction under the interpreter)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _anchor(bits, g):
    """a_g, the (g+1)-th set bit of uint32 `bits` (g scalar or tensor): the number of bit
    positions with at most g set bits up to and including them."""
    a = g * 0
    seen = bits.to(tl.int32) * 0   # a scalar whatever g's shape: the bits are the row's
    for b in tl.static_range(32):
        seen += ((bits >> b) & 1).to(tl.int32)
        a += (seen <= g).to(tl.int32)
    return a


@triton.jit
def _cache_index(BT, b64, pos, pmask, stride_btb, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """(outer, inner) int64 index of logical cache position `pos` of row b: (b, pos) in a
    contiguous cache, (page, slot) in a paged one (one table read serves K and V)."""
    if PAGED:
        page = tl.load(BT + b64 * stride_btb + pos // PAGE_SIZE, mask=pmask, other=0)
        return page.to(tl.int64), (pos % PAGE_SIZE).to(tl.int64)
    else:
        return b64, pos.to(tl.int64)


@triton.jit
def _online_update(acc, m_i, l_i, q, k, v, visible, qk_scale, DOT_IEEE: tl.constexpr):
    """One key tile of online softmax. visible: bool [BLOCK_M, BLOCK_N] (broadcastable)."""
    if DOT_IEEE:  # fp32 inputs: keep full precision instead of tf32 on tensor cores
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(visible, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row with nothing visible so far keeps m = -inf; subtract 0 then so no inf - inf.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if DOT_IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _new_key_visible(jn, sub, hi1, lo2, width):
    """docs/spec.md section 2 among new tokens, from per-row bounds (_row_bounds): row r sees new
    key jn [N] (< n) iff jn <= hi1[r] (QUADRATIC: d slots only, jn % sub == 0) or
    lo2[r] <= jn < lo2[r] + width."""
    first = (jn[None, :] <= hi1[:, None]) & ((jn % sub) == 0)[None, :]
    return first | ((jn[None, :] >= lo2[:, None]) & (jn[None, :] < lo2[:, None] + width))


@triton.jit
def _row_bounds(qpos, n, mode, arg, sub, bits, lq):
    """Per query row, the new keys it sees as (hi1, lo2, width), see _new_key_visible
    (lo2 = n: no second range):
      CAUSAL: [0, qpos]; BIDIR_BLOCK, CAUSAL_THEN_BIDIR's last arg rows: [0, n);
      QUADRATIC (sub = L+1, sub-block a = qpos // sub): d slots <= a*sub, and unless the
        row is a d slot, its own sub-block [a*sub, a*sub + sub);
      ANCHORED_QUADRATIC (bits, lq = L; group g = qpos // L - 1, -1 = clean): clean rows
        [0, qpos]; mask rows clean keys [0, a_g] and their own group [(g+1)L, (g+2)L)."""
    everything = (mode == BIDIR_BLOCK) | ((mode == CAUSAL_THEN_BIDIR) & (qpos >= n - arg))
    is_quad = mode == QUADRATIC
    is_anc = mode == ANCHORED_QUADRATIC
    a = qpos // sub
    grp = qpos // lq - 1
    anc = _anchor(bits, grp)
    hi1 = tl.where(is_quad, a * sub,
                   tl.where(is_anc & (grp >= 0), anc, tl.where(everything, n - 1, qpos)))
    own_q = is_quad & (qpos % sub != 0)
    own_a = is_anc & (grp >= 0)
    lo2 = tl.where(own_q, a * sub, tl.where(own_a, (grp + 1) * lq, n))
    return hi1, lo2, tl.where(is_quad, sub, lq)


@triton.jit
def _new_keys_phase(acc, m_i, l_i, q, K, V, b64, kvh, n, sub, hi1, lo2, width,
                    base, step, count, skip_d_slots, qk_scale,
                    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
                    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_IEEE: tl.constexpr):
    """Attend to new keys jn = base + step * t, t < count (step > 1 gathers QUADRATIC's
    d slots). skip_d_slots != 0 drops keys with jn % sub == 0 (already seen as d slots)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for t0 in range(0, count, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        jn = base + t * step
        kmask = (t < count) & (jn < n)
        k = tl.load(K + b64 * s_kb + jn[:, None].to(tl.int64) * s_kt + kvh * s_kh + offs_d[None, :],
                    mask=kmask[:, None], other=0.0)
        v = tl.load(V + b64 * s_vb + jn[:, None].to(tl.int64) * s_vt + kvh * s_vh + offs_d[None, :],
                    mask=kmask[:, None], other=0.0)
        keep = kmask & (((jn % sub) != 0) | (skip_d_slots == 0))
        visible = _new_key_visible(jn, sub, hi1, lo2, width) & keep[None, :]
        acc, m_i, l_i = _online_update(acc, m_i, l_i, q, k, v, visible, qk_scale, DOT_IEEE)
    return acc, m_i, l_i


@triton.jit
def attention_kernel(
    Q, K, V, KC, VC, CACHE_LENS, MODES, MODE_ARGS, Q_LENS, BT, OUT, WS_O, WS_LSE,
    qk_scale, Tq, Hq, Hkv, ws_rows, n_qtiles,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
    s_kcb, s_kct, s_kch, s_vcb, s_vct, s_vch, s_ob, s_ot, s_oh, s_btb,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr,
    WRITE_KV: tl.constexpr, DOT_IEEE: tl.constexpr,
):
    # Longest causal tiles (last query positions) first: better tail at the end of the grid.
    pid_q = n_qtiles - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    b = pid_bh // Hkv
    kvh = pid_bh % Hkv
    b64 = b.to(tl.int64)

    P = tl.load(CACHE_LENS + b)
    n = tl.load(Q_LENS + b)
    mode = tl.load(MODES + b).to(tl.int32)
    arg = tl.load(MODE_ARGS + b)

    q0 = pid_q * BLOCK_Q
    rows = tl.arange(0, BLOCK_M)
    qpos = q0 + rows // GROUP_P2       # query position of each tile row
    g = rows % GROUP_P2                # which head of the GQA group
    head = kvh * GROUP + g
    row_ok = (qpos < n) & (g < GROUP)
    offs_d = tl.arange(0, HEAD_DIM)

    q = tl.load(Q + b64 * s_qb + qpos[:, None].to(tl.int64) * s_qt + head[:, None] * s_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    if WRITE_KV:
        # New K/V of this tile's positions -> cache slots P + qpos (split 0 only). The
        # attention below reads new keys from k/v and cache slots < P only: no hazard.
        if split == 0:
            wmask = (qpos < n) & (g == 0)
            src_k = K + b64 * s_kb + qpos[:, None].to(tl.int64) * s_kt + kvh * s_kh + offs_d[None, :]
            src_v = V + b64 * s_vb + qpos[:, None].to(tl.int64) * s_vt + kvh * s_vh + offs_d[None, :]
            kn = tl.load(src_k, mask=wmask[:, None])
            vn = tl.load(src_v, mask=wmask[:, None])
            o, i = _cache_index(BT, b64, P + qpos, wmask, s_btb, PAGED, PAGE_SIZE)
            tl.store(KC + (o * s_kcb + i * s_kct)[:, None] + kvh * s_kch + offs_d[None, :], kn,
                     mask=wmask[:, None])
            tl.store(VC + (o * s_vcb + i * s_vct)[:, None] + kvh * s_vch + offs_d[None, :], vn,
                     mask=wmask[:, None])

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    tile_live = q0 < n

    # 1. committed cache: this split's chunk of [0, P), chunk sized from the row's P so
    #    the splits share the real length (grid sized from Tmax, no host sync).
    chunk = tl.cdiv(tl.cdiv(P, NUM_SPLITS), BLOCK_N) * BLOCK_N
    c_lo = split * chunk
    c_hi = tl.where(tile_live, tl.minimum(P, c_lo + chunk), c_lo)
    for start in range(c_lo, c_hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pmask = pos < c_hi
        o, i = _cache_index(BT, b64, pos, pmask, s_btb, PAGED, PAGE_SIZE)
        k = tl.load(KC + (o * s_kcb + i * s_kct)[:, None] + kvh * s_kch + offs_d[None, :],
                    mask=pmask[:, None], other=0.0)
        v = tl.load(VC + (o * s_vcb + i * s_vct)[:, None] + kvh * s_vch + offs_d[None, :],
                    mask=pmask[:, None], other=0.0)
        acc, m_i, l_i = _online_update(acc, m_i, l_i, q, k, v, pmask[None, :], qk_scale, DOT_IEEE)

    # 2. new tokens, last split only, over the key range the tile's rows can see.
    is_quad = mode == QUADRATIC
    is_anc = mode == ANCHORED_QUADRATIC
    sub = tl.where(is_quad, arg + 1, 1)          # QUADRATIC sub-block length L + 1
    bits = tl.where(is_anc, arg, 0).to(tl.uint32, bitcast=True)   # ANCHORED_QUADRATIC anchor mask
    lq = tl.maximum(tl.where(is_anc, n // (_popcount(bits).to(tl.int32) + 1), 1), 1)   # its L
    q_last = tl.minimum(q0 + BLOCK_Q, n) - 1
    sees_all = (mode == BIDIR_BLOCK) | ((mode == CAUSAL_THEN_BIDIR) & (q_last >= n - arg))
    a_lo = q0 // sub
    a_hi = q_last // sub
    # A d-slot row sees d slots only: when the tile ends on one, its sub-block's own keys
    # are needed by no row of the tile.
    a_own = a_hi - (q_last % sub == 0).to(tl.int32)
    # ANCHORED_QUADRATIC: mask groups g_lo..g_hi (-1 = clean rows). Clean keys up to the
    # last clean row and up to a_{g_hi} (anchors increase with g), then the groups' own keys.
    g_lo = tl.maximum(q0 // lq - 1, 0)
    g_hi = q_last // lq - 1
    c_last = tl.where(q0 < lq, tl.minimum(q_last, lq - 1), -1)
    c_last = tl.maximum(c_last, tl.where(g_hi >= 0, _anchor(bits, g_hi), -1))
    # phase one: keys [0, count1) (QUADRATIC: the d slots a' <= a_hi, stride L+1);
    # phase two: QUADRATIC's own sub-blocks a_lo..a_own minus their d slots, or
    # ANCHORED_QUADRATIC's own groups g_lo..g_hi.
    count1 = tl.where(is_quad, a_hi + 1, tl.where(is_anc, c_last + 1, tl.where(sees_all, n, q_last + 1)))
    count2 = tl.where(is_quad, tl.maximum(a_own - a_lo + 1, 0) * sub,
                      tl.where(is_anc, tl.maximum(g_hi - g_lo + 1, 0) * lq, 0))
    base2 = tl.where(is_anc, (g_lo + 1) * lq, a_lo * sub)
    last = split == NUM_SPLITS - 1
    count1 = tl.where(tile_live & last, count1, 0)
    count2 = tl.where(tile_live & last, count2, 0)
    hi1, lo2, width = _row_bounds(qpos, n, mode, arg, sub, bits, lq)
    acc, m_i, l_i = _new_keys_phase(acc, m_i, l_i, q, K, V, b64, kvh, n, sub, hi1, lo2, width,
                                    0, sub, count1, 0, qk_scale,
                                    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, BLOCK_N, HEAD_DIM, DOT_IEEE)
    # Phase two drops keys jn % sub == 0 (QUADRATIC's d slots, seen in phase one); an
    # ANCHORED_QUADRATIC group starts at jn >= L > 0, so stride n + 1 drops none of its
    # keys (a constant flag here: a runtime one costs a register spill at decode shapes).
    sub2 = tl.where(is_anc, n + 1, sub)
    acc, m_i, l_i = _new_keys_phase(acc, m_i, l_i, q, K, V, b64, kvh, n, sub2, hi1, lo2, width,
                                    base2, 1, count2, 1, qk_scale,
                                    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, BLOCK_N, HEAD_DIM, DOT_IEEE)

    # Epilogue: rows past q_len, padded group heads and rows with no key get 0.
    has = row_ok & (l_i > 0)
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    out = tl.where(has[:, None], out, 0.0)
    smask = (qpos < Tq) & (g < GROUP)
    if NUM_SPLITS == 1:
        optr = OUT + b64 * s_ob + qpos[:, None].to(tl.int64) * s_ot + head[:, None] * s_oh + offs_d[None, :]
        tl.store(optr, out.to(OUT.dtype.element_ty), mask=smask[:, None])
    else:
        wrow = split * ws_rows + (b64 * Tq + qpos) * Hq + head   # workspace [S, B*Tq*Hq, D]
        tl.store(WS_O + wrow[:, None] * HEAD_DIM + offs_d[None, :], out, mask=smask[:, None])
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(WS_LSE + wrow, lse, mask=smask)


@triton.jit
def merge_kernel(WS_O, WS_LSE, OUT, Tq, Hq, ws_rows, s_ob, s_ot, s_oh,
                 NUM_SPLITS: tl.constexpr, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr):
    """BLOCK_R output rows (flat (b, t, h)) per program: log-sum-exp merge of the split
    partials. Splits without keys for a row wrote lse = -inf and are never read."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = row < ws_rows
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        lse = tl.load(WS_LSE + s * ws_rows + row, mask=rmask, other=float("-inf"))
        live = lse > float("-inf")
        o = tl.load(WS_O + (s * ws_rows + row)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=live[:, None], other=0.0)
        m_new = tl.maximum(m, lse)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_use)
        w = tl.where(live, tl.math.exp2(lse - m_use), 0.0)
        total = total * alpha + w
        acc = acc * alpha[:, None] + o * w[:, None]
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    h = row % Hq
    t = (row // Hq) % Tq
    b = row // (Hq * Tq)
    tl.store(OUT + (b * s_ob + t * s_ot + h * s_oh)[:, None] + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=rmask[:, None])
