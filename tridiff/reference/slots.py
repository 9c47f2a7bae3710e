"""Sync-free slot arithmetic of a KV cache, contiguous or paged (used by the reference ops
and by the public ops' checks).

A row's logical cache position t lives at [b, t] in a contiguous cache
[B, Tmax, Hkv, D], or at [block_table[b, t // page], t % page] in a paged cache
[num_pages, page, Hkv, D]. All helpers work on whole tensors, never read values
on the host, and so add no host synchronisation on CUDA.
"""
from __future__ import annotations

import torch


def capacity(k_cache: torch.Tensor, block_table) -> int:
    """Tokens a row can hold: Tmax, or max_pages * page_size when paged."""
    if block_table is None:
        return k_cache.shape[-3]
    return block_table.shape[1] * k_cache.shape[-3]


def logical_view(cache: torch.Tensor, block_table) -> torch.Tensor:
    """[B, capacity, Hkv, D] copy/view of a row-major cache (pages gathered in order)."""
    if block_table is None:
        return cache
    pages = block_table.long().clamp(min=0)  # unallocated entries (-1) are never visible
    B, max_pages = pages.shape
    page = cache.shape[1]
    return cache[pages].reshape(B, max_pages * page, *cache.shape[2:])


def physical_index(cache: torch.Tensor, block_table, rows: torch.Tensor, pos: torch.Tensor):
    """Index tuple addressing logical positions `pos` of `rows` (same shapes)."""
    if block_table is None:
        return rows, pos
    page = cache.shape[1]
    pages = block_table.long()[rows, torch.div(pos, page, rounding_mode="floor")]
    return pages, pos % page


def write_rows(cache, block_table, values, start, count) -> None:
    """cache[b, start[b] + i] = values[b, i] for i < count[b], without host sync.

    index_put_ needs a fixed number of writes, so padded entries (i >= count[b]) are
    redirected to a real write carrying the same bytes: the row's last valid entry,
    or, for a row writing nothing, the batch's first valid entry. Duplicate indices
    then carry identical data and the result is deterministic. If no row writes at
    all, every entry rewrites one slot with its own value.
    """
    B, T = values.shape[:2]
    device = values.device
    i = torch.arange(T, device=device).expand(B, T)
    rows = torch.arange(B, device=device)[:, None].expand(B, T)
    start = start.long()
    count = count.long()[:, None]
    has_any = count > 0
    donor = torch.argmax(has_any[:, 0].to(torch.int32))  # first row with a write (0 if none)
    src_row = torch.where(has_any, rows, donor)
    src_i = torch.where(has_any, torch.minimum(i, count - 1), torch.zeros_like(i))
    pos = (start[src_row] + src_i).clamp(max=capacity(cache, block_table) - 1)
    idx = physical_index(cache, block_table, src_row, pos)
    old = cache[idx]
    new = values[src_row, src_i].to(cache.dtype)
    anyone = has_any.any()
    cache[idx] = torch.where(anyone, new, old)
