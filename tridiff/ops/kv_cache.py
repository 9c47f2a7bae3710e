"""Public KV-cache management ops. All are in place (names end in `_`).

  kv_write_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None)
      store k/v[b, :q_lens[b]] at slots cache_lens[b].. of row b. Mutates the caches.
  kv_append_(...same...)          kv_write_ then cache_lens += q_lens. Mutates caches, cache_lens.
  kv_commit_(cache_lens, n, *, capacity)   cache_lens += n. Metadata only.
  kv_rollback_(cache_lens, new_lens)       cache_lens = new_lens (<= current). Metadata only.
  kv_compact_(k_cache, v_cache, cache_lens, src_index, *, block_table=None)
      slot P+i of row b takes the old slot P+src_index[b, i] (all reads before writes;
      -1 keeps the slot). QUADRATIC keeps its verify slots with
      src_index = quadratic_verify_slots(L, B). Contiguous caches may carry a leading
      layer dimension [layers, B, Tmax, Hkv, D] to move all layers in one call.
  paged_reserve_(block_table, free_pages, free_count, target_lens, *, page_size)
  paged_release_(block_table, free_pages, free_count, keep_lens, *, page_size)
      page allocation from / release to a device-side stack (free_pages [N] int32,
      free_count [1] int32): no host round trip.

Layouts as in tridiff.ops.attention. Every capacity and range check runs before
anything is written: a refused call leaves caches, lengths and page tables as they were.
"""
from __future__ import annotations

from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.ops._common import block_table_tensor, lens_tensor, pages_cover, per_row, run
from tridiff.reference.slots import capacity
from tridiff.reference.kv_cache import quadratic_verify_slots  # noqa: F401  (public helper)


def _impl(op):
    return lambda *args: _dispatch.implementation(op, args[-1])(*args[:-1])


# ---- torch.library registrations -------------------------------------------------------

@torch.library.custom_op("tridiff::kv_write_", mutates_args=("k_cache", "v_cache"))
def _kv_write_op(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 cache_lens: torch.Tensor, q_lens: torch.Tensor, block_table: Optional[torch.Tensor],
                 backend: str) -> None:
    _dispatch.implementation("kv_write_", backend)(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)


@torch.library.custom_op("tridiff::kv_append_", mutates_args=("k_cache", "v_cache", "cache_lens"))
def _kv_append_op(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  cache_lens: torch.Tensor, q_lens: torch.Tensor, block_table: Optional[torch.Tensor],
                  backend: str) -> None:
    _dispatch.implementation("kv_append_", backend)(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)


@torch.library.custom_op("tridiff::kv_commit_", mutates_args=("cache_lens",))
def _kv_commit_op(cache_lens: torch.Tensor, n: torch.Tensor, backend: str) -> None:
    _dispatch.implementation("kv_commit_", backend)(cache_lens, n)


@torch.library.custom_op("tridiff::kv_rollback_", mutates_args=("cache_lens",))
def _kv_rollback_op(cache_lens: torch.Tensor, new_lens: torch.Tensor, backend: str) -> None:
    _dispatch.implementation("kv_rollback_", backend)(cache_lens, new_lens)


@torch.library.custom_op("tridiff::kv_compact_", mutates_args=("k_cache", "v_cache"))
def _kv_compact_op(k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor,
                   src_index: torch.Tensor, block_table: Optional[torch.Tensor], backend: str) -> None:
    _dispatch.implementation("kv_compact_", backend)(k_cache, v_cache, cache_lens, src_index, block_table)


@torch.library.custom_op("tridiff::paged_reserve_", mutates_args=("block_table", "free_count"))
def _paged_reserve_op(block_table: torch.Tensor, free_pages: torch.Tensor, free_count: torch.Tensor,
                      target_lens: torch.Tensor, page_size: int, backend: str) -> None:
    _dispatch.implementation("paged_reserve_", backend)(block_table, free_pages, free_count, target_lens,
                                                        page_size)


@torch.library.custom_op("tridiff::paged_release_",
                         mutates_args=("block_table", "free_pages", "free_count"))
def _paged_release_op(block_table: torch.Tensor, free_pages: torch.Tensor, free_count: torch.Tensor,
                      keep_lens: torch.Tensor, page_size: int, backend: str) -> None:
    _dispatch.implementation("paged_release_", backend)(block_table, free_pages, free_count, keep_lens,
                                                        page_size)


# ---- public functions ----------------------------------------------------------------------

def _check_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
    chk.tensor("k", k, ndim=4, dtypes=chk.FLOAT_DTYPES)
    B, T, Hkv, D = k.shape
    dev = k.device
    chk.tensor("v", v, ndim=4, dtypes=(k.dtype,), device=dev)
    chk.shape("v", v, (B, T, Hkv, D))
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        chk.tensor(name, x, ndim=4, dtypes=(k.dtype,), device=dev)
        chk.shape(name, x, (None, None, Hkv, D) if block_table is not None else (B, None, Hkv, D))
    chk.shape("v_cache", v_cache, tuple(k_cache.shape))
    lens_tensor("cache_lens", cache_lens, B, dev)
    if block_table is not None:
        block_table_tensor(block_table, B, dev)
    q_lens_t = per_row("q_lens", q_lens, B, dev, default=T)
    cap = capacity(k_cache, block_table)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("q_lens", q_lens_t, 0, T, f"T={T}")
        chk.lengths_in_range("cache_lens", cache_lens, 0, cap - q_lens_t, f"capacity {cap} minus q_lens")
    if block_table is not None:
        pages_cover(block_table, k_cache.shape[0], k_cache.shape[1], cache_lens + q_lens_t,
                    "receiving the new keys")
    return (k_cache, v_cache, k, v, cache_lens, q_lens_t, block_table)


def kv_write_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None, backend="auto"):
    args = _check_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    run("kv_write_", backend, k.device, args, _kv_write_op)


def kv_append_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None, backend="auto"):
    args = _check_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    run("kv_append_", backend, k.device, args, _kv_append_op)


def kv_commit_(cache_lens, n, *, capacity, backend="auto"):
    """cache_lens += n (int or [B] tensor); refuses to pass `capacity` (Tmax or pages*page)."""
    chk.tensor("cache_lens", cache_lens, ndim=1, dtypes=(torch.int32,))
    B = cache_lens.shape[0]
    n_t = per_row("n", n, B, cache_lens.device)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("n", n_t, 0, capacity - cache_lens, f"capacity {capacity} minus cache_lens")
    run("kv_commit_", backend, cache_lens.device, (cache_lens, n_t), _kv_commit_op)


def kv_rollback_(cache_lens, new_lens, *, backend="auto"):
    """cache_lens = new_lens; each new length must lie in [0, current length]."""
    chk.tensor("cache_lens", cache_lens, ndim=1, dtypes=(torch.int32,))
    B = cache_lens.shape[0]
    new_t = per_row("new_lens", new_lens, B, cache_lens.device)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("new_lens", new_t, 0, cache_lens, "the current cache_lens")
    run("kv_rollback_", backend, cache_lens.device, (cache_lens, new_t), _kv_rollback_op)


def kv_compact_(k_cache, v_cache, cache_lens, src_index, *, block_table=None, backend="auto"):
    chk.tensor("k_cache", k_cache, dtypes=chk.FLOAT_DTYPES)
    dev = k_cache.device
    chk.tensor("v_cache", v_cache, dtypes=(k_cache.dtype,), device=dev)
    chk.shape("v_cache", v_cache, tuple(k_cache.shape))
    chk.tensor("cache_lens", cache_lens, ndim=1, dtypes=(torch.int32,), device=dev)
    B = cache_lens.shape[0]
    if block_table is None:
        if k_cache.dim() not in (4, 5) or k_cache.shape[-4] != B:
            chk.fail("k_cache", f"shape [B={B}, Tmax, Hkv, D] or [layers, B={B}, Tmax, Hkv, D]",
                     f"shape {tuple(k_cache.shape)}")
    else:
        chk.tensor("k_cache", k_cache, ndim=4)
        block_table_tensor(block_table, B, dev)
    chk.tensor("src_index", src_index, ndim=2, dtypes=(torch.int32,), device=dev)
    if src_index.shape[0] != B:
        chk.fail("src_index", f"shape [B={B}, n]", f"shape {tuple(src_index.shape)}")
    n = src_index.shape[1]
    cap = capacity(k_cache, block_table)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("cache_lens", cache_lens, 0, cap - n, f"capacity {cap} minus n={n}")
        src = src_index.detach().cpu().long()
        limit = (cap - cache_lens.detach().cpu().long())[:, None]
        bad = (src < -1) | (src >= limit)
        if bool(bad.any()):
            b, i = (int(x) for x in bad.nonzero()[0])
            chk.fail("src_index", "-1 or an offset in [0, capacity - cache_lens)",
                     f"{int(src[b, i])} at row {b}, column {i} (limit {int(limit[b, 0])})")
    if block_table is not None:
        upto = cache_lens + torch.clamp(src_index.max(dim=1).values + 1, min=n) if n else cache_lens
        pages_cover(block_table, k_cache.shape[0], k_cache.shape[1], upto, "read or written")
    run("kv_compact_", backend, dev, (k_cache, v_cache, cache_lens, src_index, block_table), _kv_compact_op)


def _check_pages(block_table, free_pages, free_count, lens, lens_name, page_size):
    chk.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,))
    dev = block_table.device
    chk.tensor("free_pages", free_pages, ndim=1, dtypes=(torch.int32,), device=dev)
    chk.tensor("free_count", free_count, ndim=1, dtypes=(torch.int32,), device=dev)
    chk.shape("free_count", free_count, (1,))
    B, max_pages = block_table.shape
    lens_tensor(lens_name, lens, B, dev)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        chk.fail("page_size", "a positive int", page_size)
    if chk.values_checkable(lens) and not chk.is_fake(lens):
        chk.lengths_in_range(lens_name, lens, 0, max_pages * page_size,
                             f"max_pages*page_size={max_pages * page_size}")
        chk.lengths_in_range("free_count", free_count, 0, free_pages.shape[0], f"{free_pages.shape[0]}")
        table = block_table.detach().cpu().long()
        held = (table >= 0).sum(1)
        # Rows hold pages as a prefix of their table: allocation appends, release truncates.
        prefix = (table >= 0) == (torch.arange(max_pages)[None, :] < held[:, None])
        if not bool(prefix.all()) or bool((table >= free_pages.shape[0]).any()):
            chk.fail("block_table", f"rows whose valid page ids (< {free_pages.shape[0]}) form a prefix, -1 after",
                     "a gap or an out-of-range page id")
        return held
    return None


def paged_reserve_(block_table, free_pages, free_count, target_lens, *, page_size, backend="auto"):
    held = _check_pages(block_table, free_pages, free_count, target_lens, "target_lens", page_size)
    if held is not None:
        want = (target_lens.detach().cpu().long() + page_size - 1) // page_size
        need = int((want - held).clamp(min=0).sum())
        have = int(free_count.detach().cpu()[0])
        if need > have:
            chk.fail("target_lens", f"at most {have} more pages in total (the free pages)", f"{need} pages")
    args = (block_table, free_pages, free_count, target_lens, int(page_size))
    run("paged_reserve_", backend, block_table.device, args, _paged_reserve_op)


def paged_release_(block_table, free_pages, free_count, keep_lens, *, page_size, backend="auto"):
    _check_pages(block_table, free_pages, free_count, keep_lens, "keep_lens", page_size)
    args = (block_table, free_pages, free_count, keep_lens, int(page_size))
    run("paged_release_", backend, block_table.device, args, _paged_release_op)
