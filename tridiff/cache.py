"""KV caches for tridiff.model: one object holds every layer's keys and values plus the
committed length of each row, shared by all layers.

KVCache (contiguous):  k, v [num_layers, B, Tmax, Hkv, D]; lens int32 [B].
PagedKVCache:          k, v [num_layers, num_pages, page, Hkv, D] (= pages_k/pages_v);
                       block_table int32 [B, max_pages] (-1 = no page), shared by all
                       layers; a device-side free stack (free_pages, free_count).

Common interface (what the model and the decoding loop use):
  capacity            tokens one row can hold
  layer(i)            (k_i, v_i) views in the layout tridiff.ops.attention takes
  block_table         None (contiguous) or the page table
  reserve_(target)    make room for target_lens[b] tokens (paged: pops pages; contiguous:
                      nothing to do, capacity is checked by the ops)
  commit_(n)          lens += n                          (tridiff.ops.kv_commit_)
  rollback_(new_lens) lens = new_lens (<= lens); paged also returns whole pages past
                      new_lens to the free stack          (ops.kv_rollback_, paged_release_)
  compact_(src)       slot P+i <- old slot P+src[b, i] in every layer (ops.kv_compact_)
  reset_()            every row empty
All mutation goes through tridiff.ops, so the same code runs on every backend and
nothing synchronises with the host on CUDA beyond the ops' own input checks.
"""
from __future__ import annotations

import torch

from tridiff import ops
from tridiff._checks import TridiffInputError


def _lens(value, batch: int, device, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int32)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TridiffInputError(f"{name}: expected an int or an integer tensor [B], got {type(value).__name__}")
    return torch.full((batch,), value, dtype=torch.int32, device=device)


class _Cache:
    """What both layouts share: k/v with the layer first, and the committed lengths."""

    block_table = None
    paged = False

    @property
    def batch(self) -> int:
        return self.lens.shape[0]

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def device(self):
        return self.lens.device

    @property
    def dtype(self):
        return self.k.dtype

    def layer(self, i: int):
        return self.k[i], self.v[i]

    def commit_(self, n, *, backend="auto") -> None:
        ops.kv_commit_(self.lens, n, capacity=self.capacity, backend=backend)

    def rollback_(self, new_lens, *, backend="auto") -> None:
        ops.kv_rollback_(self.lens, new_lens, backend=backend)

    def reset_(self) -> None:
        self.lens.zero_()


class KVCache(_Cache):
    """Contiguous cache: row b's position t lives at k[layer, b, t]."""

    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 *, dtype=torch.float32, device="cpu"):
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        # Zero-filled so that never-written slots are finite (they are masked anyway).
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, dtype=torch.int32, device=device)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve_(self, target_lens, *, backend="auto") -> None:
        """Nothing to allocate; the ops check capacity when writing."""

    def compact_(self, src_index, *, backend="auto") -> None:
        # One call moves every layer (the op accepts the 5-D layout).
        ops.kv_compact_(self.k, self.v, self.lens, src_index, backend=backend)


class PagedKVCache(_Cache):
    """Paged cache: row b's position t lives at page block_table[b, t // page], slot t % page."""

    paged = True

    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 *, page_size: int = 16, num_pages=None, dtype=torch.float32, device="cpu"):
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise TridiffInputError(f"page_size: expected a positive int, got {page_size!r}")
        max_pages = -(-max_len // page_size)
        if num_pages is None:
            num_pages = batch * max_pages  # enough for every row at full length
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.block_table = torch.full((batch, max_pages), -1, dtype=torch.int32, device=device)
        self.free_pages = torch.arange(num_pages, dtype=torch.int32, device=device)
        self.free_count = torch.full((1,), num_pages, dtype=torch.int32, device=device)
        self.page_size = page_size

    pages_k = property(lambda self: self.k)
    pages_v = property(lambda self: self.v)

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.block_table.shape[1] * self.page_size

    def reserve_(self, target_lens, *, backend="auto") -> None:
        target = _lens(target_lens, self.batch, self.device, "target_lens")
        ops.paged_reserve_(self.block_table, self.free_pages, self.free_count, target,
                           page_size=self.page_size, backend=backend)

    def rollback_(self, new_lens, *, backend="auto") -> None:
        super().rollback_(new_lens, backend=backend)
        self.release_(self.lens, backend=backend)

    def release_(self, keep_lens, *, backend="auto") -> None:
        """Return each row's pages past keep_lens[b] tokens to the free stack."""
        keep = _lens(keep_lens, self.batch, self.device, "keep_lens")
        ops.paged_release_(self.block_table, self.free_pages, self.free_count, keep,
                           page_size=self.page_size, backend=backend)

    def compact_(self, src_index, *, backend="auto") -> None:
        # One call moves every layer (the op takes [layers, num_pages, page, Hkv, D] with
        # the shared block table).
        ops.kv_compact_(self.k, self.v, self.lens, src_index, block_table=self.block_table, backend=backend)

    def reset_(self) -> None:
        super().reset_()
        self.release_(0)
