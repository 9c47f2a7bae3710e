"""Vocabulary-streaming token selection: argmax / Gumbel-max / softmax statistics.

A logits row is split into S contiguous vocabulary ranges (one program each, so small
batches still fill the GPU); a program streams its range in BLOCK_V chunks keeping a
running (best score, best id) and, when asked, online softmax statistics (max m, sum s
of exp(x - m)). Probabilities are never materialised. Partial results of the S ranges
are combined by a second, tiny kernel. Ties go to the lowest id everywhere: within a
chunk by tie_break_left, across chunks and ranges by a strict '>' in id order.

Score modes (bit definitions in tridiff.reference.sample):
  MODE 0  x                                   (argmax; fp32 compare, fp64 for fp64)
  MODE 1  div_rn(float32(x), T) + gumbel(seed, v, t, STREAM, offset)      float32
  MODE 2  float64(x) - T * log(-log(float64(u))), u on the DIFFUSION stream  float64
The temperature arrives as the bits of a float64 (Triton would round a Python float
argument to float32); MODE 1 rounds it to float32 as torch.tensor(T, float32) does.
"""
import triton
import triton.language as tl

from .philox import DIFFUSION, _int64, gumbel, precise_exp, precise_log, uniform

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def div_rn(a, b):
    """IEEE round-to-nearest division (torch's `/`); Triton's fp32 `/` may be approximate."""
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def f64_from_bits(bits):
    """The float64 whose bit pattern is the int argument `bits`. The JIT types an int by its
    value (i32 when it fits, as the bits of 0.0 and of subnormals do; a constant when it
    is 1), so it is widened to int64 before the 64-bit bitcast."""
    return _int64(bits).to(tl.float64, bitcast=True)


@triton.jit
def temperature(temp_bits):
    return f64_from_bits(temp_bits)


@triton.jit
def load_row(row_ptr, v, vm, s_v, ACC: tl.constexpr):
    """Logits at ids v as ACC (float32, or float64 for float64 logits); -inf where masked."""
    return tl.load(row_ptr + v.to(tl.int64) * s_v, mask=vm, other=NEG_INF).to(ACC)


@triton.jit
def score(x, v, vm, temp_bits, seed, t, offset, MODE: tl.constexpr, STREAM: tl.constexpr,
          PRECISE: tl.constexpr):
    if MODE == 0:
        sc = x
    elif MODE == 1:
        T32 = temperature(temp_bits).to(tl.float32)
        sc = div_rn(x.to(tl.float32), T32) + gumbel(seed, v, t, STREAM, offset, PRECISE)
    else:
        T64 = temperature(temp_bits)
        u = uniform(seed, v, t, DIFFUSION, offset).to(tl.float64)
        sc = x.to(tl.float64) - T64 * precise_log(-precise_log(u, PRECISE), PRECISE)
    return tl.where(vm, sc, NEG_INF)


@triton.jit
def argmax_update(best_val, best_idx, sc, v0):
    """Fold one chunk's scores into the running (value, id); earlier ids win ties."""
    cmax, cidx = tl.max(sc, axis=0, return_indices=True, return_indices_tie_break_left=True)
    upd = cmax > best_val
    return tl.where(upd, cmax, best_val), tl.where(upd, v0 + cidx, best_idx)


@triton.jit
def stats_update(m, s, x, PRECISE: tl.constexpr):
    """Online softmax statistics: fold chunk x (-inf where masked) into (max m, sum s)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    alpha = tl.where(m_new == NEG_INF, 1.0, precise_exp(m - m_new, PRECISE))
    e = tl.where(x == NEG_INF, 0.0, precise_exp(x - m_new, PRECISE))
    return m_new, s * alpha + tl.sum(e, axis=0)


@triton.jit
def store_pair(ptr_a, ptr_b, at, a, b):
    """One range's partials, e.g. (best score, best id) or softmax (max, sum), at index r*S + sp."""
    tl.store(ptr_a + at, a)
    tl.store(ptr_b + at, b)


@triton.jit
def load_pair(ptr_a, ptr_b, rows, rm, S, other_a, other_b, BLOCK_S: tl.constexpr):
    """(mask, a, b [rows, BLOCK_S]): the S range partials of rows, as store_pair left them."""
    sp = tl.arange(0, BLOCK_S)
    m = rm[:, None] & (sp < S)[None, :]
    off = rows[:, None].to(tl.int64) * S + sp[None, :]
    return m, tl.load(ptr_a + off, mask=m, other=other_a), tl.load(ptr_b + off, mask=m, other=other_b)


@triton.jit
def combine_argmax(part_val, part_idx, rows, rm, S, BLOCK_S: tl.constexpr):
    """Best id per row from S range partials [rows, S] (lowest range wins ties)."""
    m, val, idx = load_pair(part_val, part_idx, rows, rm, S, NEG_INF, 2147483647, BLOCK_S)
    best = tl.max(val, axis=1)
    return tl.min(tl.where(m & (val == best[:, None]), idx, 2147483647), axis=1)


@triton.jit
def combine_stats(part_m, part_s, rows, rm, S, PRECISE: tl.constexpr, BLOCK_S: tl.constexpr):
    """Softmax (max, sum) per row from S range partials."""
    _, pm, ps = load_pair(part_m, part_s, rows, rm, S, NEG_INF, 0.0, BLOCK_S)
    M = tl.max(pm, axis=1)
    w = tl.where(pm == NEG_INF, 0.0, precise_exp(pm - M[:, None], PRECISE))
    return M, tl.sum(ps * w, axis=1)


@triton.jit
def vocab_range(V, split_len):
    """(range sp, ranges S, [start, end)): the ids of this program's vocabulary range (grid axis 1)."""
    sp = tl.program_id(1)
    start = sp * split_len
    return sp, tl.num_programs(1), start, tl.minimum(V, start + split_len)


@triton.jit
def scan_vocab(row_ptr, start, end, s_v, temp_bits, seed, t, offset, ACC: tl.constexpr,
               SACC: tl.constexpr, MODE: tl.constexpr, STREAM: tl.constexpr, PRECISE: tl.constexpr,
               STATS: tl.constexpr, BLOCK_V: tl.constexpr):
    """(best score as SACC, best id int32, softmax max, sum) over ids [start, end) of one row.
    The statistics are of the unscaled logits in ACC, and only kept when STATS (else -inf, 0)."""
    best_val = tl.full([], NEG_INF, SACC)
    best_idx = start + tl.zeros([], tl.int32)
    m = tl.full([], NEG_INF, ACC)
    s = tl.zeros([], ACC)
    for v0 in range(start, end, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        vm = v < end
        x = load_row(row_ptr, v, vm, s_v, ACC)
        sc = score(x, v, vm, temp_bits, seed, t, offset, MODE, STREAM, PRECISE).to(SACC)
        best_val, best_idx = argmax_update(best_val, best_idx, sc, v0)
        if STATS:
            m, s = stats_update(m, s, x, PRECISE)
    return best_val, best_idx, m, s


@triton.jit
def scan_argmax(row_ptr, start, end, s_v, temp_bits, seed, t, offset, ACC: tl.constexpr,
                SACC: tl.constexpr, MODE: tl.constexpr, STREAM: tl.constexpr, PRECISE: tl.constexpr,
                BLOCK_V: tl.constexpr):
    """(best score as SACC, best id int32) over ids [start, end) of one row."""
    best_val, best_idx, _, _ = scan_vocab(row_ptr, start, end, s_v, temp_bits, seed, t, offset, ACC, SACC,
                                          MODE, STREAM, PRECISE, False, BLOCK_V)
    return best_val, best_idx


@triton.jit
def logits_row(logits, seed_ptr, offset_ptr, r, T, s_b, s_t, MODE: tl.constexpr):
    """(t, row pointer, seed, offset) of row r = b*T + t of logits [B, T, V]; MODE 0 reads no seed."""
    b = r // T
    t = r % T
    row = logits + b.to(tl.int64) * s_b + t.to(tl.int64) * s_t
    if MODE == 0:
        seed = 0
        offset = 0
    else:
        seed = tl.load(seed_ptr + b)
        offset = tl.load(offset_ptr + b)
    return t, row, seed, offset


@triton.jit
def vocab_argmax_kernel(logits, seed_ptr, offset_ptr, out, part_val, part_idx,
                        T, V, split_len, s_b, s_t, s_v, temp_bits,
                        ACC: tl.constexpr, SACC: tl.constexpr, MODE: tl.constexpr, STREAM: tl.constexpr,
                        PRECISE: tl.constexpr, DIRECT: tl.constexpr, BLOCK_V: tl.constexpr):
    """Grid (B*T, S). Row r = b*T + t of logits [B, T, V] (any strides), vocabulary range
    pid1: best id (DIRECT: straight to out[r] as int64, S must be 1) or range partials."""
    r = tl.program_id(0)
    sp, S, start, end = vocab_range(V, split_len)
    t, row, seed, offset = logits_row(logits, seed_ptr, offset_ptr, r, T, s_b, s_t, MODE)
    best_val, best_idx = scan_argmax(row, start, end, s_v, temp_bits, seed, t, offset,
                                     ACC, SACC, MODE, STREAM, PRECISE, BLOCK_V)
    if DIRECT:
        tl.store(out + r, best_idx.to(tl.int64))
    else:
        store_pair(part_val, part_idx, r * S + sp, best_val, best_idx)


@triton.jit
def argmax_finish_kernel(part_val, part_idx, out, R, S, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < R
    idx = combine_argmax(part_val, part_idx, rows, rm, S, BLOCK_S)
    tl.store(out + rows, idx.to(tl.int64), mask=rm)


@triton.jit
def confidence_kernel(logits, seed_ptr, offset_ptr, part_val, part_idx, part_m, part_s,
                      L, V, split_len, s_b, s_t, s_v, temp_bits,
                      ACC: tl.constexpr, SACC: tl.constexpr, MODE: tl.constexpr, PRECISE: tl.constexpr,
                      BLOCK_V: tl.constexpr):
    """Grid (B*L, S): x0 candidate (argmax, or MODE 2 float64 Gumbel-max) and online
    softmax statistics of the unscaled logits (ACC precision) over one vocabulary range."""
    r = tl.program_id(0)
    sp, S, start, end = vocab_range(V, split_len)
    t, row, seed, offset = logits_row(logits, seed_ptr, offset_ptr, r, L, s_b, s_t, MODE)
    best_val, best_idx, m, s = scan_vocab(row, start, end, s_v, temp_bits, seed, t, offset, ACC, SACC, MODE,
                                          DIFFUSION, PRECISE, True, BLOCK_V)
    store_pair(part_val, part_idx, r * S + sp, best_val, best_idx)
    store_pair(part_m, part_s, r * S + sp, m, s)


@triton.jit
def confidence_finish_kernel(logits, part_val, part_idx, part_m, part_s, x0_out, conf_out,
                             R, L, S, s_b, s_t, s_v, ACC: tl.constexpr, PRECISE: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    """x0 = combined best id; conf = exp(x[x0] - max) / sum, rounded to conf_out's dtype."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < R
    x0 = combine_argmax(part_val, part_idx, rows, rm, S, BLOCK_S)
    M, Z = combine_stats(part_m, part_s, rows, rm, S, PRECISE, BLOCK_S)
    b = rows // L
    t = rows % L
    xl = tl.load(logits + b.to(tl.int64) * s_b + t.to(tl.int64) * s_t + x0.to(tl.int64) * s_v,
                 mask=rm, other=0.0).to(ACC)
    conf = div_rn(precise_exp(xl - M, PRECISE), Z)
    tl.store(x0_out + rows, x0.to(tl.int64), mask=rm)
    tl.store(conf_out + rows, conf.to(conf_out.dtype.element_ty), mask=rm)


@triton.jit
def unmask_kernel(block, x0, conf, num_transfer, new_block, transferred, L, mask_id, thr_bits,
                  s_bb, s_xb, s_cb, s_nb, s_tb,
                  THRESHOLD: tl.constexpr, BLOCK_L: tl.constexpr):
    """One program per row, L <= BLOCK_L positions. rank[i] = candidates j ordered before i
    (higher conf, or equal conf and j < i), by an L x L comparison in registers.
    Threshold rule: rank 0 or conf >= thr (thr pre-rounded to conf's dtype, compared in
    float64, which is exact for every conf dtype). Top-k rule: rank < num_transfer[b]."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_L)
    im = i < L
    blk = tl.load(block + b * s_bb + i, mask=im, other=0)
    x = tl.load(x0 + b * s_xb + i, mask=im, other=0)
    c = tl.load(conf + b * s_cb + i, mask=im, other=0.0).to(tl.float64)
    cand = im & (blk == mask_id)
    ci = c[:, None]
    cj = c[None, :]
    before = cand[None, :] & ((cj > ci) | ((cj == ci) & (i[None, :] < i[:, None])))
    rank = tl.sum(before.to(tl.int32), axis=1)
    if THRESHOLD:
        thr = f64_from_bits(thr_bits)
        take = cand & ((rank == 0) | (c >= thr))
    else:
        k = tl.load(num_transfer + b)
        take = cand & (rank < k)
    tl.store(new_block + b * s_nb + i, tl.where(take, x, blk), mask=im)
    tl.store(transferred + b * s_tb + i, take, mask=im)
