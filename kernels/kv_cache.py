"""KV-cache data movement and page bookkeeping (Triton).

Addressing: a token's Hkv*D features are flattened to j = h*D + d and addressed with the
tensor's own strides, so sliced caches and strided k/v (e.g. views of a fused QKV) work
without copies. Logical position pos of row b lives at
    contiguous: base + b*s_b + pos*s_t
    paged:      base + block_table[b, pos // PAGE]*s_p + (pos % PAGE)*s_s
All offsets are int64: real caches exceed 2**31 elements.

Why kv_compact_ is race-free on a GPU, where programs run concurrently: a program owns
one (layer, row, feature chunk) and ALL n moved slots of it, so every byte it reads
(slots P+src[i]) or writes (slots P+i) of that layer/row/feature range is touched by no
other program -- different programs never read a slot another program writes. (Paged:
this assumes rows do not share a page holding positions >= P, which holds for pages
handed out by paged_reserve_.) Inside the program, a source slot can be another lane's
destination, so all loads complete before any store: tl.debug_barrier() (bar.sync)
separates the two phases, and the CUDA memory model orders the block's reads before its
writes across the barrier. Too many slots for registers (n > FUSED_MAX_N in the
launcher): gather to scratch in one launch, scatter in the next (stream order).
"""
import triton
import triton.language as tl


@triton.jit
def _token_base(b, pos, bt_ptr, s_bt, s_b, s_t, PAGE, PAGED: tl.constexpr, mask):
    """int64 element offset of logical position `pos` of row `b` (pos may be a vector)."""
    if PAGED:
        page = tl.load(bt_ptr + b.to(tl.int64) * s_bt + pos // PAGE, mask=mask, other=0)
        return page.to(tl.int64) * s_b + (pos % PAGE).to(tl.int64) * s_t
    else:
        return b.to(tl.int64) * s_b + pos.to(tl.int64) * s_t


@triton.jit
def _feature_offset(j, s_h, s_d, D: tl.constexpr):
    return (j // D).to(tl.int64) * s_h + (j % D).to(tl.int64) * s_d


@triton.jit
def _write_one(cache_ptr, src_ptr, b, t, tm, dst_base, HD,
               s_ib, s_it, s_ih, s_id, s_ch, s_cd,
               D: tl.constexpr, BLOCK_HD: tl.constexpr):
    src_base = b.to(tl.int64) * s_ib + t.to(tl.int64) * s_it
    for j0 in range(0, HD, BLOCK_HD):
        j = j0 + tl.arange(0, BLOCK_HD)
        m = tm[:, None] & (j < HD)[None, :]
        x = tl.load(src_ptr + src_base[:, None] + _feature_offset(j, s_ih, s_id, D)[None, :], mask=m)
        tl.store(cache_ptr + dst_base[:, None] + _feature_offset(j, s_ch, s_cd, D)[None, :],
                 x.to(cache_ptr.dtype.element_ty), mask=m)


@triton.jit
def kv_write_kernel(k_cache, v_cache, k, v, cache_lens, q_lens, block_table, s_bt, HD, PAGE,
                    s_kb, s_kt, s_kh, s_kd, s_vb, s_vt, s_vh, s_vd,
                    s_cb, s_ct, s_ch, s_cd, s_wb, s_wt, s_wh, s_wd,
                    D: tl.constexpr, PAGED: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_HD: tl.constexpr):
    """Grid (B, cdiv(T, BLOCK_T)): tokens t of row b go to logical slot cache_lens[b] + t.

    s_k*/s_v* are the strides of k/v [B, T, Hkv, D]; s_c* of k_cache and s_w* of v_cache
    ([B, Tmax, Hkv, D] or paged [pages, PAGE, Hkv, D]). Each program writes only its own
    destination slots and reads nothing another program writes.
    """
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.load(q_lens + b)
    tm = t < n
    pos = tl.load(cache_lens + b) + t
    dst_k = _token_base(b, pos, block_table, s_bt, s_cb, s_ct, PAGE, PAGED, tm)
    dst_v = _token_base(b, pos, block_table, s_bt, s_wb, s_wt, PAGE, PAGED, tm)
    _write_one(k_cache, k, b, t, tm, dst_k, HD, s_kb, s_kt, s_kh, s_kd, s_ch, s_cd, D, BLOCK_HD)
    _write_one(v_cache, v, b, t, tm, dst_v, HD, s_vb, s_vt, s_vh, s_vd, s_wh, s_wd, D, BLOCK_HD)


@triton.jit
def _compact_one(cache_ptr, tmp_ptr, layer, b, src, dst, im, j, jm, bt_ptr, s_bt,
                 s_l, s_b, s_t, s_h, s_d, PAGE, tmp_row,
                 D: tl.constexpr, PAGED: tl.constexpr, PHASE: tl.constexpr):
    base = layer.to(tl.int64) * s_l
    feat = _feature_offset(j, s_h, s_d, D)[None, :]
    m = im[:, None] & jm[None, :]
    if PHASE != 2:
        src_off = base + _token_base(b, src, bt_ptr, s_bt, s_b, s_t, PAGE, PAGED, im)
        x = tl.load(cache_ptr + src_off[:, None] + feat, mask=m)
    if PHASE == 0:
        # Every load of this program has returned before any store: the sources may be
        # destinations of other lanes of the same program.
        tl.debug_barrier()
    if PHASE == 1:
        tl.store(tmp_ptr + tmp_row[:, None] + j[None, :], x, mask=m)
    else:
        if PHASE == 2:
            x = tl.load(tmp_ptr + tmp_row[:, None] + j[None, :], mask=m)
        dst_off = base + _token_base(b, dst, bt_ptr, s_bt, s_b, s_t, PAGE, PAGED, im)
        tl.store(cache_ptr + dst_off[:, None] + feat, x, mask=m)


@triton.jit
def kv_compact_kernel(k_cache, v_cache, tmp_k, tmp_v, cache_lens, src_index, block_table,
                      B, n, HD, PAGE, s_si, s_bt,
                      s_kl, s_kb, s_kt, s_kh, s_kd, s_vl, s_vb, s_vt, s_vh, s_vd,
                      D: tl.constexpr, PAGED: tl.constexpr, PHASE: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr):
    """Grid (layers*B, cdiv(HD, BLOCK_HD), cdiv(n, BLOCK_N)): slot P+i <- old slot P+src[b,i].

    PHASE 0 (n <= BLOCK_N, one program owns every slot of its (layer, row, feature chunk)):
    load all moved rows, barrier, store. PHASE 1/2 (large n): gather into tmp
    [layers, B, n, HD], then scatter in a second launch. Rows with src < 0 are neither
    read nor written (the reference rewrites them with their own value).
    """
    lb = tl.program_id(0)
    layer = lb // B
    b = lb % B
    j = tl.program_id(1) * BLOCK_HD + tl.arange(0, BLOCK_HD)
    jm = j < HD
    i = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    s = tl.load(src_index + b.to(tl.int64) * s_si + i, mask=i < n, other=-1)
    im = (i < n) & (s >= 0)
    P = tl.load(cache_lens + b)
    src = P + s
    dst = P + i
    tmp_row = ((lb.to(tl.int64) * n) + i) * HD
    _compact_one(k_cache, tmp_k, layer, b, src, dst, im, j, jm, block_table, s_bt,
                 s_kl, s_kb, s_kt, s_kh, s_kd, PAGE, tmp_row, D, PAGED, PHASE)
    _compact_one(v_cache, tmp_v, layer, b, src, dst, im, j, jm, block_table, s_bt,
                 s_vl, s_vb, s_vt, s_vh, s_vd, PAGE, tmp_row, D, PAGED, PHASE)


@triton.jit
def _held(block_table, rows, rm, s_bt, max_pages, BLOCK_P: tl.constexpr):
    """Per row: number of valid (>= 0) page ids in its table."""
    held = tl.zeros(rows.shape, tl.int32)
    for p0 in range(0, max_pages, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        m = rm[:, None] & (cols < max_pages)[None, :]
        tile = tl.load(block_table + rows[:, None].to(tl.int64) * s_bt + cols[None, :], mask=m, other=-1)
        held += tl.sum((tile >= 0).to(tl.int32), axis=1)
    return held


@triton.jit
def paged_reserve_kernel(block_table, free_pages, free_count, target_lens, B, max_pages, s_bt, page_size,
                         BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """One program: row b takes need[b] pages from the top of the free stack, rows in order.

    need = max(0, ceil(target/page) - held); row b's pages are the stack entries
    free_count - total + (exclusive prefix of need)[b] + k, appended after its held pages.
    """
    rows = tl.arange(0, BLOCK_B)
    rm = rows < B
    held = _held(block_table, rows, rm, s_bt, max_pages, BLOCK_P)
    target = tl.load(target_lens + rows, mask=rm, other=0)
    want = (target + page_size - 1) // page_size
    need = tl.where(rm, tl.maximum(want - held, 0), 0)
    total = tl.sum(need, axis=0)
    first = tl.cumsum(need, axis=0) - need
    fc = tl.load(free_count)
    base = fc - total + first - held
    tl.debug_barrier()  # all table reads (counting) precede the table writes below
    for p0 in range(0, max_pages, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        take = (rm[:, None] & (cols < max_pages)[None, :] & (cols[None, :] >= held[:, None])
                & (cols[None, :] < (held + need)[:, None]))
        page = tl.load(free_pages + base[:, None] + cols[None, :], mask=take, other=0)
        tl.store(block_table + rows[:, None].to(tl.int64) * s_bt + cols[None, :], page, mask=take)
    tl.debug_barrier()  # every thread has read free_count before it changes
    tl.store(free_count, fc - total)


@triton.jit
def paged_release_kernel(block_table, free_pages, free_count, keep_lens, B, max_pages, s_bt, page_size,
                         BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """One program: pages at table columns >= ceil(keep/page) are pushed on the free stack
    in row-major order (rank = exclusive prefix over rows, then over columns) and their
    table entries become -1."""
    rows = tl.arange(0, BLOCK_B)
    rm = rows < B
    keep = (tl.load(keep_lens + rows, mask=rm, other=0) + page_size - 1) // page_size
    count = tl.zeros([BLOCK_B], tl.int32)
    for p0 in range(0, max_pages, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        m = rm[:, None] & (cols < max_pages)[None, :]
        tile = tl.load(block_table + rows[:, None].to(tl.int64) * s_bt + cols[None, :], mask=m, other=-1)
        count += tl.sum(((tile >= 0) & (cols[None, :] >= keep[:, None])).to(tl.int32), axis=1)
    total = tl.sum(count, axis=0)
    fc = tl.load(free_count)
    running = fc + tl.cumsum(count, axis=0) - count
    tl.debug_barrier()
    for p0 in range(0, max_pages, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        m = rm[:, None] & (cols < max_pages)[None, :]
        ptrs = block_table + rows[:, None].to(tl.int64) * s_bt + cols[None, :]
        tile = tl.load(ptrs, mask=m, other=-1)
        rel = ((tile >= 0) & (cols[None, :] >= keep[:, None])).to(tl.int32)
        rank = tl.cumsum(rel, axis=1) - rel
        tl.debug_barrier()  # this chunk is fully read before any of it is overwritten
        tl.store(free_pages + running[:, None] + rank, tile, mask=rel != 0)
        tl.store(ptrs, tl.full(tile.shape, -1, tile.dtype), mask=rel != 0)
        running += tl.sum(rel, axis=1)
    tl.debug_barrier()
    tl.store(free_count, fc + total)
