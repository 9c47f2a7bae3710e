"""The engine's one paged KV cache, shared by every request, and views of some of its rows.

PagePool owns a tridiff.cache.PagedKVCache with one block-table row per request slot
(max_rows) and num_pages pages. A forward of some requests runs on RowView(pool, slots):
a PagedKVCache over those rows (their lengths and block-table rows gathered; the page
tensors and the free stack are the pool's own, so pages popped by the view come from the
shared stack), written back after use. Nothing here reads the device.
"""
from __future__ import annotations

import torch

from tridiff.cache import PagedKVCache


class PagePool:
    def __init__(self, model, *, max_rows: int, max_context: int, page_size: int, num_pages: int):
        self.cache = model.new_cache(max_rows, max_context, paged=True, page_size=page_size, num_pages=num_pages)
        self.page_size = page_size
        self.max_rows = max_rows

    @property
    def num_pages(self) -> int:
        return self.cache.num_pages

    def view(self, slots: torch.Tensor) -> "RowView":
        return RowView(self, slots)

    def free_rows_(self, slots: torch.Tensor, backend: str) -> None:
        """Empty rows `slots`: length 0, every page back on the free stack."""
        view = self.view(slots)
        view.lens.zero_()
        view.release_(view.lens, backend=backend)
        view.write_back()

    def release_unused_(self, backend: str) -> None:
        """Return every page past its row's committed length (drafts and quadratic scratch
        that were written but not kept) to the free stack."""
        self.cache.release_(self.cache.lens, backend=backend)


class RowView(PagedKVCache):
    """A PagedKVCache over rows `slots` of the pool (int64 [n] on the pool's device)."""

    def __init__(self, pool: PagePool, slots: torch.Tensor):   # no super().__init__: nothing to allocate
        c = pool.cache
        self.pool, self.slots = pool, slots
        self.k, self.v = c.k, c.v
        self.free_pages, self.free_count, self.page_size = c.free_pages, c.free_count, c.page_size
        self.lens = c.lens.index_select(0, slots)
        self.block_table = c.block_table.index_select(0, slots)

    def write_back(self) -> None:
        c = self.pool.cache
        c.lens.index_copy_(0, self.slots, self.lens)
        c.block_table.index_copy_(0, self.slots, self.block_table)
