"""Reference KV-cache management. All ops are in place and sync-free.

Cache layouts: contiguous [B, Tmax, Hkv, D], or paged [num_pages, page, Hkv, D] with
block_table [B, max_pages] (-1 = no page); kv_compact_ also takes either with a leading
layer dimension ([layers, B, Tmax, Hkv, D] or [layers, num_pages, page, Hkv, D], one
block table for every layer) to move every layer in one call. cache_lens [B] is the
committed length P of each row. Any strides (the ops index through the views); index
tensors int32 or int64, mutated ones keep their dtype.

Paged pages come from a stack: free_pages [num_pages] int32 whose first
free_count[0] entries are the free page ids.
"""
from __future__ import annotations

import torch

from tridiff.reference.slots import write_rows


def kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table) -> None:
    """Write k[b, :q_lens[b]] at positions cache_lens[b]... of row b. Lengths untouched."""
    write_rows(k_cache, block_table, k, cache_lens, q_lens)
    write_rows(v_cache, block_table, v, cache_lens, q_lens)


def kv_append_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table) -> None:
    """kv_write_, then commit: cache_lens += q_lens."""
    kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    cache_lens.add_(q_lens.to(cache_lens.dtype))


def kv_commit_(cache_lens, n) -> None:
    """cache_lens += n. Metadata only: no KV byte moves."""
    cache_lens.add_(n.to(cache_lens.dtype))


def kv_rollback_(cache_lens, new_lens) -> None:
    """cache_lens = new_lens (each <= the current length). Metadata only."""
    cache_lens.copy_(new_lens.to(cache_lens.dtype))


def kv_compact_(k_cache, v_cache, cache_lens, src_index, block_table) -> None:
    """For each row b and i < n: slot P+i takes the old content of slot P+src_index[b, i].

    P = cache_lens[b]. Reads all sources before writing (as if through a temporary),
    so sources and destinations may overlap. src_index < 0 leaves slot P+i as it is.
    Lengths are untouched: commit or roll back separately.
    """
    for cache in (k_cache, v_cache):
        _compact_one(cache, cache_lens, src_index, block_table)


def _compact_one(cache, cache_lens, src_index, block_table):
    B, n = src_index.shape
    device = cache.device
    rows = torch.arange(B, device=device)[:, None].expand(B, n)
    P = cache_lens.long()[:, None]
    i = torch.arange(n, device=device)[None, :].expand(B, n)
    src = src_index.long()
    keep = src < 0
    src_pos = P + torch.where(keep, i, src)
    dst_pos = P + i
    def at(pos):  # the slots in every layer: [..., row or page, slot, :, :]
        if block_table is None:
            where = (rows, pos)
        else:
            page = cache.shape[-3]
            where = (block_table.long()[rows, torch.div(pos, page, rounding_mode="floor")], pos % page)
        return (Ellipsis,) + where + (slice(None), slice(None))

    moved = cache[at(src_pos)].clone()
    cache[at(dst_pos)] = moved


def quadratic_verify_slots(L: int, batch: int, device=None) -> torch.Tensor:
    """src_index for QUADRATIC compaction: the d slots a*(L+1), a < L, for every row."""
    return (torch.arange(L, device=device, dtype=torch.int32) * (L + 1)).expand(batch, L).contiguous()


def paged_reserve_(block_table, free_pages, free_count, target_lens, page_size: int) -> None:
    """Give each row enough pages to hold target_lens[b] tokens, popping the free stack.

    Pages are taken from the top of the stack, rows in order; rows that already hold
    enough pages are untouched. block_table gains page ids, free_count shrinks.
    """
    B, max_pages = block_table.shape
    device = block_table.device
    held = (block_table >= 0).sum(dim=1)
    want = torch.div(target_lens.long() + page_size - 1, page_size, rounding_mode="floor")
    need = (want - held).clamp(min=0)
    total = need.sum()
    first = torch.cumsum(need, 0) - need  # exclusive prefix: this row's first stack entry
    col = torch.arange(max_pages, device=device)[None, :]
    take = (col >= held[:, None]) & (col < (held + need)[:, None])
    src = free_count.long() - total + first[:, None] + (col - held[:, None])
    src = src.clamp(0, free_pages.shape[0] - 1)
    block_table.copy_(torch.where(take, free_pages.long()[src], block_table.long()).to(block_table.dtype))
    free_count.sub_(total.to(free_count.dtype))


def paged_release_(block_table, free_pages, free_count, keep_lens, page_size: int) -> None:
    """Return each row's pages beyond what keep_lens[b] tokens need to the free stack."""
    B, max_pages = block_table.shape
    device = block_table.device
    N = free_pages.shape[0]
    keep = torch.div(keep_lens.long() + page_size - 1, page_size, rounding_mode="floor")
    col = torch.arange(max_pages, device=device)[None, :]
    release = (block_table >= 0) & (col >= keep[:, None])
    flat = release.reshape(-1)
    rank = torch.cumsum(flat.long(), 0) - flat.long()
    # Released pages go on top of the stack; the rest go to distinct dump slots past N.
    target = torch.where(flat, free_count.long() + rank, N + torch.arange(flat.numel(), device=device))
    buffer = torch.cat([free_pages, torch.empty(flat.numel(), dtype=free_pages.dtype, device=device)])
    buffer.scatter_(0, target, block_table.reshape(-1).to(free_pages.dtype))
    free_pages.copy_(buffer[:N])
    block_table.masked_fill_(release, -1)
    free_count.add_(flat.sum().to(free_count.dtype))
