"""Public KV-cache management ops. All are in place (names end in `_`).

  kv_write_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None)
      store k/v[b, :q_lens[b]] at slots cache_lens[b].. of row b. Mutates the caches.
  kv_append_(...same...)          kv_write_ then cache_lens += q_lens. Mutates caches, cache_lens.
  kv_commit_(cache_lens, n, *, capacity=None)   cache_lens += n. Metadata only. Default
      capacity None: the op does not see the cache, so only n >= 0 and an int32-
      representable result are checked (pass the cache's capacity to check that too).
  kv_rollback_(cache_lens, new_lens)       cache_lens = new_lens (<= current). Metadata only.
  kv_compact_(k_cache, v_cache, cache_lens, src_index, *, block_table=None)
      slot P+i of row b takes the old slot P+src_index[b, i] (all reads before writes;
      -1 keeps the slot). QUADRATIC keeps its verify slots with
      src_index = quadratic_verify_slots(L, B). Both layouts may carry a leading layer
      dimension ([layers, B, Tmax, Hkv, D], or [layers, num_pages, page, Hkv, D] with one
      block table shared by all layers) to move every layer in one call.
  paged_reserve_(block_table, free_pages, free_count, target_lens, *, page_size)
  paged_release_(block_table, free_pages, free_count, keep_lens, *, page_size)
      page allocation from / release to a device-side stack (free_pages [N], free_count
      [1]): no host round trip.

Layouts as in tridiff.ops.attention. Every capacity and range check runs before
anything is written: a refused call leaves caches, lengths and page tables as they were.

Strides. Caches and k/v may be any strided view with the documented logical shape
(head-major pages [N, Hkv, page, D] seen through .transpose(1, 2), a [B, Hkv, T, D] cache
seen as [B, T, Hkv, D], slices, k/v sliced out of a fused projection); k_cache and v_cache
may differ. Every backend either serves a layout exactly or refuses it in its
supports_<op> with the reason, and "auto" then falls back (the torch reference serves
every layout). Index tensors may be strided too. The rules today: torch serves every
view; triton addresses caches and k/v through all their strides and refuses page tables
and free stacks without unit stride (they are written in place); cpp and cuda take any
batch/row/page/token/head strides with unit stride along D, k_cache and v_cache with
equal strides, and dense index tensors (tridiff/native/kv.py); tridiff.cupy refuses
anything but dense [Hkv, D] slabs with TridiffInputError.

Index dtypes. cache_lens, q_lens/n/new_lens, src_index, block_table, free_pages,
free_count, target_lens and keep_lens may each be int32 or int64: the op converts every
int64 one to int32 once on entry, after the range checks (lengths are bounded by the
capacity, page ids by the number of pages), runs the backend on int32, and writes the
tensors it mutates (cache_lens, block_table, free_pages, free_count) back into the
caller's int64 tensors. Backends therefore only ever see int32 index tensors. Under
CUDA-graph capture or TRIDIFF_CHECK_VALUES=0 the range checks are skipped, and int64
values must then fit int32 (they always do for a valid cache).
"""
from __future__ import annotations

from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.ops._common import pages_cover, per_row, run
from tridiff.reference.slots import capacity
from tridiff.reference.kv_cache import quadratic_verify_slots  # noqa: F401  (public helper)


_INT32_MAX = 2**31 - 1


def _index(arg, t, ndim, device=None):
    """An int32 or int64 index tensor of `ndim` dimensions (see "Index dtypes")."""
    chk.tensor(arg, t, ndim=ndim, dtypes=chk.INDEX_DTYPES, device=device)


def _int32(t):
    """`t` as int32: itself when it already is (no copy), else one converted copy."""
    return t if t is None or t.dtype == torch.int32 else t.to(torch.int32)


def _run(op, backend, device, args, custom_op, mutated=()):
    """Run `op` on `args` with every index tensor at position `mutated` converted to
    int32, then copy the results back into the caller's int64 tensors."""
    converted = list(args)
    for i in mutated:
        converted[i] = _int32(args[i])
    run(op, backend, device, tuple(converted), custom_op)
    for i in mutated:
        if converted[i] is not args[i]:
            args[i].copy_(converted[i])


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
    _index("cache_lens", cache_lens, 1, dev)
    chk.shape("cache_lens", cache_lens, (B,))
    if block_table is not None:
        _check_table(block_table, B, dev)
    q_lens_t = per_row("q_lens", q_lens, B, dev, default=T)
    cap = capacity(k_cache, block_table)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("q_lens", q_lens_t, 0, T, f"T={T}")
        chk.lengths_in_range("cache_lens", cache_lens, 0, cap - q_lens_t, f"capacity {cap} minus q_lens")
    if block_table is not None:
        pages_cover(block_table, k_cache.shape[0], k_cache.shape[1], cache_lens + q_lens_t,
                    "receiving the new keys")
    return (k_cache, v_cache, k, v, cache_lens, q_lens_t, _int32(block_table))


def _check_table(block_table, B, dev):
    _index("block_table", block_table, 2, dev)
    if block_table.shape[0] != B:
        chk.fail("block_table", f"shape [{B}, max_pages]", f"shape {tuple(block_table.shape)}")


def kv_write_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None, backend="auto"):
    """Store k/v [B, T, Hkv, D] (rows b, tokens t < q_lens[b], default T) at positions
    cache_lens[b] + t of the caches. Mutates k_cache, v_cache; cache_lens is read only."""
    args = _check_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    args = args[:4] + (_int32(cache_lens),) + args[5:]
    run("kv_write_", backend, k.device, args, _kv_write_op)


def kv_append_(k_cache, v_cache, k, v, cache_lens, *, q_lens=None, block_table=None, backend="auto"):
    """kv_write_, then cache_lens += q_lens (int32 or int64 cache_lens, updated in place)."""
    args = _check_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    _run("kv_append_", backend, k.device, args, _kv_append_op, mutated=(4,))


def kv_commit_(cache_lens, n, *, capacity=None, backend="auto"):
    """cache_lens += n (n: int or [B] tensor, each >= 0). Metadata only.

    capacity: the cache's tokens per row (KVCache/PagedKVCache.capacity, or
    tridiff.reference.slots.capacity(k_cache, block_table)); the op refuses to pass it.
    The op does not see the cache, so by default (None) it checks only that the new
    lengths stay representable (<= 2**31 - 1); the ops that then read or write the
    cache check cache_lens against its real capacity before touching it.
    """
    _index("cache_lens", cache_lens, 1)
    B = cache_lens.shape[0]
    n_t = per_row("n", n, B, cache_lens.device)
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0):
        chk.fail("capacity", "None or an int >= 0 (tokens per row)", repr(capacity))
    limit, desc = (_INT32_MAX, "2**31 - 1") if capacity is None else (capacity, f"capacity {capacity}")
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("n", n_t, 0, limit - cache_lens.long(), f"{desc} minus cache_lens")
    _run("kv_commit_", backend, cache_lens.device, (cache_lens, n_t), _kv_commit_op, mutated=(0,))


def kv_rollback_(cache_lens, new_lens, *, backend="auto"):
    """cache_lens = new_lens; each new length must lie in [0, current length]."""
    _index("cache_lens", cache_lens, 1)
    B = cache_lens.shape[0]
    new_t = per_row("new_lens", new_lens, B, cache_lens.device)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("new_lens", new_t, 0, cache_lens, "the current cache_lens")
    _run("kv_rollback_", backend, cache_lens.device, (cache_lens, new_t), _kv_rollback_op, mutated=(0,))


def kv_compact_(k_cache, v_cache, cache_lens, src_index, *, block_table=None, backend="auto"):
    """Slot P+i of row b takes the old slot P+src_index[b, i] (P = cache_lens[b]; -1 keeps
    the slot), in k_cache and v_cache, all reads before writes. Caches: [B, Tmax, Hkv, D]
    or paged [num_pages, page, Hkv, D] + block_table, each optionally with a leading layer
    dimension (every layer moves, one call). Mutates the caches; lengths are untouched."""
    chk.tensor("k_cache", k_cache, dtypes=chk.FLOAT_DTYPES)
    dev = k_cache.device
    chk.tensor("v_cache", v_cache, dtypes=(k_cache.dtype,), device=dev)
    chk.shape("v_cache", v_cache, tuple(k_cache.shape))
    _index("cache_lens", cache_lens, 1, dev)
    B = cache_lens.shape[0]
    if block_table is None:
        if k_cache.dim() not in (4, 5) or k_cache.shape[-4] != B:
            chk.fail("k_cache", f"shape [B={B}, Tmax, Hkv, D] or [layers, B={B}, Tmax, Hkv, D]",
                     f"shape {tuple(k_cache.shape)}")
    else:
        if k_cache.dim() not in (4, 5):
            chk.fail("k_cache", "shape [num_pages, page, Hkv, D] or [layers, num_pages, page, Hkv, D]",
                     f"shape {tuple(k_cache.shape)}")
        _check_table(block_table, B, dev)
    _index("src_index", src_index, 2, dev)
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
        pages_cover(block_table, k_cache.shape[-4], k_cache.shape[-3], upto, "read or written")
    args = (k_cache, v_cache, _int32(cache_lens), _int32(src_index), _int32(block_table))
    run("kv_compact_", backend, dev, args, _kv_compact_op)


def _check_pages(block_table, free_pages, free_count, lens, lens_name, page_size):
    _index("block_table", block_table, 2)
    dev = block_table.device
    _index("free_pages", free_pages, 1, dev)
    _index("free_count", free_count, 1, dev)
    chk.shape("free_count", free_count, (1,))
    B, max_pages = block_table.shape
    _index(lens_name, lens, 1, dev)
    chk.shape(lens_name, lens, (B,))
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
    args = (block_table, _int32(free_pages), free_count, _int32(target_lens), int(page_size))
    _run("paged_reserve_", backend, block_table.device, args, _paged_reserve_op, mutated=(0, 2))


def paged_release_(block_table, free_pages, free_count, keep_lens, *, page_size, backend="auto"):
    _check_pages(block_table, free_pages, free_count, keep_lens, "keep_lens", page_size)
    args = (block_table, free_pages, free_count, _int32(keep_lens), int(page_size))
    _run("paged_release_", backend, block_table.device, args, _paged_release_op, mutated=(0, 1, 2))
