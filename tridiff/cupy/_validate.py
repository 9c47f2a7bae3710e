"""Argument checks for tridiff.cupy, torch-free, run before any allocation or launch.

Layout checks (rank, shape, dtype, unit strides where the kernels assume them) read only
array attributes. Value checks (lengths within capacity, ids and pages in range) copy a
few integers to the host (cupy.asnumpy, a device sync); TRIDIFF_CHECK_VALUES=0 turns
them off, e.g. under stream capture. Errors are tridiff.errors.TridiffInputError naming
the argument, as for the torch ops.
"""
from __future__ import annotations

import operator
import os

from tridiff.errors import TridiffInputError

FLOAT_NAMES = ("float16", "float32", "float64")


def fail(arg, expected, got):
    raise TridiffInputError(f"{arg}: expected {expected}, got {got}")


def array(arg, x, *, ndim=None, dtypes=None, shape=None):
    """x must be an array (shape/dtype/strides/data.ptr) of that rank, dtype and shape
    (None entries in `shape` are free)."""
    if not all(hasattr(x, a) for a in ("shape", "dtype", "strides", "data")):
        fail(arg, "a cupy array", type(x).__name__)
    if ndim is not None and len(x.shape) != ndim:
        fail(arg, f"{ndim} dimensions", f"shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype.name not in dtypes:
        fail(arg, "dtype " + "/".join(dtypes), x.dtype.name)
    if shape is not None and (len(x.shape) != len(shape)
                              or any(e is not None and e != s for e, s in zip(shape, x.shape))):
        want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        fail(arg, f"shape {want}", f"shape {tuple(x.shape)}")


def dense_rows(arg, x, row_dims):
    """The last `row_dims` dimensions form one densely packed row (the kernels move rows
    as byte runs)."""
    step = x.dtype.itemsize
    for size, stride in zip(reversed(x.shape[-row_dims:]), reversed(x.strides[-row_dims:])):
        if size > 1 and stride != step:
            fail(arg, f"its last {row_dims} dimensions packed densely (strides of a C-contiguous array)",
                 f"strides {tuple(x.strides)}")
        step *= size


def values_checked() -> bool:
    return os.environ.get("TRIDIFF_CHECK_VALUES", "1") != "0"


def host(x):
    import cupy

    return cupy.asnumpy(x)


def int_in(arg, value, lo, hi):
    try:
        ok = not isinstance(value, bool) and lo <= operator.index(value) <= hi
    except TypeError:
        ok = False
    if not ok:
        fail(arg, f"an int in [{lo}, {hi}]", repr(value))


def logits(arg, x, bf16):
    """[B, R, V] float16/float32/float64, or uint16 storage with bf16=True; unit vocab stride."""
    array(arg, x, ndim=3)
    want = ("uint16",) if bf16 else FLOAT_NAMES
    if x.dtype.name not in want:
        fail(arg, "dtype uint16 holding bfloat16 (bf16=True)" if bf16 else "dtype " + "/".join(FLOAT_NAMES),
             x.dtype.name + ("" if bf16 else " (pass bf16=True for uint16 bfloat16 storage)"))
    if x.shape[2] < 1:
        fail(arg, "a vocabulary of at least 1", f"shape {tuple(x.shape)}")


def sampling(temperature, seed, offset, B):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        fail("temperature", "a number >= 0", repr(temperature))
    if temperature > 0:
        for name, t in (("seed", seed), ("offset", offset)):
            if t is None:
                fail(name, "an int64 array [B] when temperature > 0", None)
            array(name, t, dtypes=("int64",), shape=(B,))


def unit_stride(arg, x):
    """A 1-D index array the kernels read as x[b]: dense."""
    if x.shape[0] > 1 and x.strides[0] != x.dtype.itemsize:
        fail(arg, "a contiguous array", f"strides {tuple(x.strides)}")


def cache_layout(k_cache, v_cache, block_table, B, H, D, *, five_d_ok=False):
    """Returns the capacity in tokens per row and the page size (1 when contiguous).
    five_d_ok: a leading layer dimension is allowed (kv_compact)."""
    ndim = len(getattr(k_cache, "shape", ()))
    paged = block_table is not None
    if five_d_ok and ndim == 5:
        array("k_cache", k_cache, shape=(None, None, None, H, D) if paged else (None, B, None, H, D))
    else:
        array("k_cache", k_cache, ndim=4, shape=(None, None, H, D) if paged else (B, None, H, D))
    array("v_cache", v_cache, shape=tuple(k_cache.shape))
    if v_cache.dtype != k_cache.dtype:
        fail("v_cache", f"dtype {k_cache.dtype.name} (that of k_cache)", v_cache.dtype.name)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        dense_rows(name, c, 2)
    if tuple(v_cache.strides) != tuple(k_cache.strides):  # the kernels address both with k_cache's
        fail("v_cache", f"the strides of k_cache {tuple(k_cache.strides)}", f"strides {tuple(v_cache.strides)}")
    if not paged:
        return k_cache.shape[-3], 1
    array("block_table", block_table, ndim=2, dtypes=("int32",), shape=(B, None))
    if block_table.strides[1] != 4:
        fail("block_table", "unit stride along pages", f"strides {tuple(block_table.strides)}")
    return block_table.shape[1] * k_cache.shape[-3], k_cache.shape[-3]


def pages_valid(block_table, ends, page, num_pages):
    """Every page a row touches (tokens [0, ends[b])) is a real page id."""
    table = host(block_table)
    for b, end in enumerate(ends):
        used = table[b, : -(-int(end) // page)]
        if ((used < 0) | (used >= num_pages)).any():
            fail("block_table", f"page ids in [0, {num_pages}) for the {-(-int(end) // page)} pages row {b} uses",
                 used.tolist())


def kv_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
    array("k", k, ndim=4)
    B, T, H, D = k.shape
    array("v", v, shape=(B, T, H, D))
    if v.dtype != k.dtype:
        fail("v", f"dtype {k.dtype.name} (that of k)", v.dtype.name)
    dense_rows("k", k, 2)
    dense_rows("v", v, 2)
    capacity, page = cache_layout(k_cache, v_cache, block_table, B, H, D)
    if k_cache.dtype != k.dtype:
        fail("k_cache", f"dtype {k.dtype.name} (that of k)", k_cache.dtype.name)
    array("cache_lens", cache_lens, dtypes=("int32",), shape=(B,))
    array("q_lens", q_lens, dtypes=("int32",), shape=(B,))
    unit_stride("cache_lens", cache_lens)
    unit_stride("q_lens", q_lens)
    if not values_checked():
        return
    lens, n = host(cache_lens).astype("int64"), host(q_lens).astype("int64")
    if ((n < 0) | (n > T)).any():
        fail("q_lens", f"values in [0, T={T}]", n.tolist())
    if ((lens < 0) | (lens + n > capacity)).any():
        fail("cache_lens", f"values in [0, capacity {capacity} - q_lens]", lens.tolist())
    if block_table is not None:
        pages_valid(block_table, lens + n, page, k_cache.shape[0])


def kv_compact(k_cache, v_cache, cache_lens, src_index, block_table):
    array("src_index", src_index, ndim=2, dtypes=("int32",))
    B, n = src_index.shape
    array("k_cache", k_cache)
    if len(k_cache.shape) not in (4, 5):
        fail("k_cache", "4 dimensions (or 5 with a leading layer dimension)", f"shape {tuple(k_cache.shape)}")
    H, D = k_cache.shape[-2], k_cache.shape[-1]
    capacity, page = cache_layout(k_cache, v_cache, block_table, B, H, D, five_d_ok=True)
    array("cache_lens", cache_lens, dtypes=("int32",), shape=(B,))
    unit_stride("cache_lens", cache_lens)
    if src_index.strides[1] != 4 or src_index.strides[0] != 4 * n:
        fail("src_index", "a C-contiguous array", f"strides {tuple(src_index.strides)}")
    if not values_checked():
        return
    lens, src = host(cache_lens).astype("int64"), host(src_index)
    if ((lens < 0) | (lens + n > capacity)).any():
        fail("cache_lens", f"values in [0, capacity {capacity} - n={n}]", lens.tolist())
    if ((src < -1) | (src >= n)).any():
        fail("src_index", f"-1 or an offset in [0, n={n})", src.tolist())
    if block_table is not None:
        pages_valid(block_table, lens + n, page, k_cache.shape[-4])


def accept(logits_arr, draft, cache_lens, eos_id, quadratic, temperature, seed, offset, bf16):
    name = "logits" if quadratic else "target_logits"
    logits(name, logits_arr, bf16)
    B, R, V = logits_arr.shape
    array("draft" if quadratic else "draft_tokens", draft, ndim=2, dtypes=("int32", "int64"))
    n = draft.shape[1]
    want_r = n * (n + 1) if quadratic else n + 1
    if draft.shape[0] != B or R != want_r or (quadratic and n < 1):
        rule = "L*(L+1) with L = draft.shape[1] >= 1" if quadratic else "n+1 with n = draft_tokens.shape[1]"
        fail(name, f"shape [B={draft.shape[0]}, {rule}, V]", f"shape {tuple(logits_arr.shape)}")
    array("cache_lens", cache_lens, dtypes=("int32",), shape=(B,))
    int_in("eos_id", eos_id, -1, V - 1)
    sampling(temperature, seed, offset, B)
    if values_checked():
        d = host(draft)
        if ((d < 0) | (d >= V)).any():
            fail("draft" if quadratic else "draft_tokens", f"token ids in [0, {V})", d.tolist())
        lens = host(cache_lens)
        if (lens < 0).any():
            fail("cache_lens", "values >= 0", lens.tolist())
