"""Triton launchers for the KV-cache ops (same positional signatures as the reference).

Launch choices (see kernels/kv_cache.py for the kernels):
Stride rule: caches and k/v are addressed through all their strides (any view); index
tensors are made contiguous where read; the page ops need unit-stride, int32 tables
(refused otherwise). tridiff.ops converts int64 index tensors before dispatch.
- kv_write_/kv_append_: grid (B, cdiv(T, BLOCK_T)); a program copies BLOCK_T tokens of a
  row, looping over the Hkv*D features in chunks of at most 1024 (tile <= 4096 elements,
  wide enough for 16-byte vector accesses, small enough for registers). No host sync:
  programs past a row's q_len exit through their masks.
- kv_compact_: grid (layers*B, feature chunks) in ONE launch for k and v of every layer.
  A program owns all n slots of its (layer, row, feature chunk), so no other program ever
  reads or writes those bytes; inside it every load precedes every store (a barrier
  separates them). For n > FUSED_MAX_N the moved rows do not fit in registers: a gather
  launch copies them to a scratch buffer and a second launch scatters them (stream order
  makes that race-free).
- kv_commit_/kv_rollback_: metadata only, one torch elementwise op each (no KV bytes).
- paged_reserve_/paged_release_: one program (the prefix sums run over all B rows).
"""
from __future__ import annotations

import torch

from tridiff.triton._common import cdiv, device_reason, p2

FUSED_MAX_N = 256  # larger compactions take the two-launch gather/scatter path
_TILE = 4096


def _kernels():
    # imported on first launch: importing tridiff (and this module) needs no triton
    from tridiff.kernels import kv_cache
    return kv_cache


def _copy_dtype_reason(t):
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"unsupported cache dtype {t.dtype}"
    return None


def supports_kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
    return device_reason(k_cache, v_cache, k, v, cache_lens, q_lens, block_table) or _copy_dtype_reason(k_cache)


supports_kv_append_ = supports_kv_write_


def kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table) -> None:
    B, T, Hkv, D = k.shape
    if B == 0 or T == 0 or Hkv * D == 0:
        return
    HD = Hkv * D
    block_hd = min(p2(HD), 1024)
    block_t = min(p2(T), max(1, _TILE // block_hd))
    paged = block_table is not None
    # Read-only index tensors: unit inner stride assumed, so make them contiguous (tiny).
    lens, q_lens = cache_lens.contiguous(), q_lens.to(torch.int32).contiguous()
    bt = block_table.contiguous() if paged else lens  # dummy pointer when contiguous
    s_bt = bt.stride(0) if paged else 0
    page = k_cache.shape[1] if paged else 1
    _kernels().kv_write_kernel[(B, cdiv(T, block_t))](
        k_cache, v_cache, k, v, lens, q_lens, bt, s_bt, HD, page,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        D=D, PAGED=paged, BLOCK_T=block_t, BLOCK_HD=block_hd)


def kv_append_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table) -> None:
    kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    cache_lens.add_(q_lens.to(cache_lens.dtype))  # stream-ordered after the copy kernel


def supports_kv_commit_(cache_lens, n):
    return device_reason(cache_lens, n)


def kv_commit_(cache_lens, n) -> None:
    cache_lens.add_(n.to(cache_lens.dtype))


def supports_kv_rollback_(cache_lens, new_lens):
    return device_reason(cache_lens, new_lens)


def kv_rollback_(cache_lens, new_lens) -> None:
    cache_lens.copy_(new_lens.to(cache_lens.dtype))


def supports_kv_compact_(k_cache, v_cache, cache_lens, src_index, block_table):
    return device_reason(k_cache, v_cache, cache_lens, src_index, block_table) or _copy_dtype_reason(k_cache)


def kv_compact_(k_cache, v_cache, cache_lens, src_index, block_table) -> None:
    B, n = src_index.shape
    Hkv, D = k_cache.shape[-2:]
    HD = Hkv * D
    if B == 0 or n == 0 or HD == 0:
        return
    paged = block_table is not None
    layers = k_cache.shape[0] if k_cache.dim() == 5 else 1

    def strides(c):
        s = c.stride()
        return s if c.dim() == 5 else (0,) + tuple(s)

    fused = p2(n) <= FUSED_MAX_N
    block_n = p2(n) if fused else min(p2(n), 64)
    block_hd = max(16, min(p2(HD), _TILE // block_n))
    grid = (layers * B, cdiv(HD, block_hd), 1 if fused else cdiv(n, block_n))
    lens, src_index = cache_lens.contiguous(), src_index.contiguous()
    bt = block_table.contiguous() if paged else lens
    s_bt = bt.stride(0) if paged else 0
    page = k_cache.shape[-3] if paged else 1
    common = (lens, src_index, bt, B, n, HD, page, src_index.stride(0), s_bt,
              *strides(k_cache), *strides(v_cache))
    meta = dict(D=D, PAGED=paged, BLOCK_N=block_n, BLOCK_HD=block_hd)
    K = _kernels()
    if fused:
        K.kv_compact_kernel[grid](k_cache, v_cache, k_cache, v_cache, *common, PHASE=0, **meta)
        return
    tmp_k = torch.empty((layers * B * n * HD,), dtype=k_cache.dtype, device=k_cache.device)
    tmp_v = torch.empty_like(tmp_k)
    K.kv_compact_kernel[grid](k_cache, v_cache, tmp_k, tmp_v, *common, PHASE=1, **meta)
    K.kv_compact_kernel[grid](k_cache, v_cache, tmp_k, tmp_v, *common, PHASE=2, **meta)


def _pages_launch(kernel, block_table, free_pages, free_count, lens, page_size):
    B, max_pages = block_table.shape
    if B == 0 or max_pages == 0:
        return
    block_b = p2(B)
    block_p = min(p2(max_pages), max(1, _TILE // block_b))
    kernel[(1,)](block_table, free_pages, free_count, lens.contiguous(), B, max_pages, block_table.stride(0),
                 int(page_size), BLOCK_B=block_b, BLOCK_P=block_p,
                 num_warps=8)  # 4 warps spill on [64, 256] tables (255 regs); 8: 171 regs


def supports_paged_reserve_(block_table, free_pages, free_count, target_lens, page_size):
    reason = device_reason(block_table, free_pages, free_count, target_lens)
    if reason is None and (block_table.stride(1) != 1 or free_pages.stride(0) != 1):
        reason = "block_table columns and free_pages must have unit stride (they are written in place)"
    if reason is None and any(t.dtype != torch.int32 for t in (block_table, free_pages, free_count)):
        reason = "block_table, free_pages and free_count must be int32 (page ids move between them in place)"
    return reason


def paged_reserve_(block_table, free_pages, free_count, target_lens, page_size) -> None:
    _pages_launch(_kernels().paged_reserve_kernel, block_table, free_pages, free_count, target_lens, page_size)


supports_paged_release_ = supports_paged_reserve_


def paged_release_(block_table, free_pages, free_count, keep_lens, page_size) -> None:
    _pages_launch(_kernels().paged_release_kernel, block_table, free_pages, free_count, keep_lens, page_size)
