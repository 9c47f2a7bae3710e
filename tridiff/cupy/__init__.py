"""KV-cache, sampling and acceptance kernels callable on cupy arrays (tridiff[cupy]).

The kernels are the csrc/ headers compiled at first use by NVRTC (cupy.RawModule),
so this path needs no compiled extension and no torch CUDA build. Importing this
module never fails: status() / unavailable() say whether cupy is installed and a
GPU is usable (cupy.is_available()), and why not.

Functions (arrays on the current cupy device; layouts as in tridiff.ops; logits may be
float16/float32/float64, or uint16 holding bfloat16 with bf16=True; KV caches any dtype):
  kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table=None)
  kv_append_(...)                      kv_write_ then cache_lens += q_lens
  kv_compact_(k_cache, v_cache, cache_lens, src_index, block_table=None)
                                       (either layout may carry a leading layer dimension)
  sample(logits [B,T,V], temperature=0.0, seed=None, offset=None, bf16=False) -> int64 [B,T]
  accept_linear(target_logits, draft_tokens, cache_lens, eos_id, temperature=0.0, seed=None,
                offset=None, bf16=False) -> 6-tuple (AcceptResult order)
  accept_quadratic(logits, draft, cache_lens, eos_id, bf16=False) -> 6-tuple
Stride rule of the KV functions: any batch/row/page/token strides, a dense [Hkv, D] slab
per token, v_cache with k_cache's strides, dense int32 index arrays; anything else is
refused with TridiffInputError (the torch ops serve every view).
Arguments are checked before anything is allocated or launched (tridiff/cupy/_validate.py):
layouts always, values (lengths within capacity, ids and pages in range; a host copy)
unless TRIDIFF_CHECK_VALUES=0. Bad input raises tridiff.errors.TridiffInputError naming
the argument. Nothing here imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from tridiff.cupy import _validate  # torch-free, no cupy import

_module = None


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        return None, f"cupy is not installed (pip install tridiff[cupy]): {exc}"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not break the import
        return None, f"cupy failed to import: {exc!r}"
    return cupy, None


def csrc_dir():
    """The kernel headers: $TRIDIFF_CSRC, else tridiff/_csrc (installed wheel), else csrc/
    next to the package (source checkout / editable install); None if none has them."""
    env = os.environ.get("TRIDIFF_CSRC")
    package = Path(__file__).resolve().parents[1]
    candidates = [Path(env)] if env else [package / "_csrc", package.parent / "csrc"]
    for path in candidates:
        if (path / "kv" / "kv_write.cuh").exists():
            return path
    return None


def status() -> dict:
    cupy, err = _cupy()
    if cupy is None:
        return {"version": None, "available": False, "error": err}
    try:
        available = bool(cupy.is_available())
    except Exception as exc:  # noqa: BLE001
        return {"version": cupy.__version__, "available": False, "error": f"cupy.is_available() failed: {exc!r}"}
    if not available:
        return {"version": cupy.__version__, "available": False, "error": "cupy sees no usable CUDA device"}
    if csrc_dir() is None:
        return {"version": cupy.__version__, "available": False,
                "error": "kernel headers not found (neither tridiff/_csrc nor a source checkout's csrc/): "
                         "reinstall tridiff or set TRIDIFF_CSRC"}
    return {"version": cupy.__version__, "available": True, "error": None}


def unavailable():
    """None if the cupy path can run here, else why not."""
    return status()["error"]


def nvrtc_options() -> tuple:
    """NVRTC options for SOURCE (tests compile with exactly these on CPU)."""
    return ("-std=c++17", f"-I{csrc_dir()}")


def _mod():
    global _module
    if _module is None:
        reason = unavailable()
        if reason:
            raise RuntimeError(f"tridiff.cupy is unavailable: {reason}")
        import cupy

        from tridiff.cupy._source import SOURCE, name_expressions

        _module = cupy.RawModule(code=SOURCE, options=nvrtc_options(),
                                 name_expressions=name_expressions())
    return _module


def _vec_bytes(*values):
    acc = 0
    for v in values:
        acc |= int(v)
    for width in (16, 8, 4, 2):
        if acc % width == 0:
            return width
    return 1


def _i(x):
    import numpy

    return numpy.int64(x)


def _null():
    import numpy

    return numpy.uint64(0)


def _layout(cache, block_table):
    """(block table, outer and token byte strides, tokens per row/page, max_pages) of a
    cache [(layers,) B, Tmax, Hkv, D] or paged [(layers,) num_pages, page, Hkv, D]."""
    bt, max_pages = (_null(), 0) if block_table is None else (block_table, block_table.shape[1])
    return bt, cache.strides[-4], cache.strides[-3], cache.shape[-3], max_pages


def kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table=None, commit=False):
    _mod()
    from tridiff.cupy._source import VEC_TYPES

    _validate.kv_write(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
    B, T, H, D = k.shape
    row_bytes = H * D * k.itemsize
    bt, outer, token, tokens, max_pages = _layout(k_cache, block_table)
    vb = _vec_bytes(k_cache.data.ptr, v_cache.data.ptr, k.data.ptr, v.data.ptr, row_bytes, *k.strides[:2],
                    *v.strides[:2], outer, token)
    units = row_bytes // vb
    threads = min(256, -(-units // 32) * 32)
    if B * T and row_bytes:
        fn = _mod().get_function(f"cupy_kv_write<{VEC_TYPES[vb]}>")
        fn((B * T, -(-units // threads), 2), (threads,),
           (k_cache, v_cache, k, v, _i(k.strides[0]), _i(k.strides[1]), _i(v.strides[0]), _i(v.strides[1]),
            cache_lens, q_lens, bt, _i(outer), _i(token), _i(tokens), _i(max_pages), _i(B), _i(T), _i(row_bytes)))
    if commit and B:
        _mod().get_function("cupy_kv_commit")((-(-B // 256),), (256,), (cache_lens, q_lens, _i(B)))


def kv_append_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table=None):
    kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=True)


def kv_compact_(k_cache, v_cache, cache_lens, src_index, block_table=None):
    _mod()
    from tridiff.cupy._source import VEC_TYPES

    _validate.kv_compact(k_cache, v_cache, cache_lens, src_index, block_table)
    B, n = src_index.shape
    layers = k_cache.shape[0] if k_cache.ndim == 5 else 1
    layer_stride = k_cache.strides[0] if k_cache.ndim == 5 else 0
    row_bytes = k_cache.shape[-2] * k_cache.shape[-1] * k_cache.itemsize
    bt, outer, token, tokens, max_pages = _layout(k_cache, block_table)
    if not (B and n and row_bytes):
        return
    vb = _vec_bytes(k_cache.data.ptr, v_cache.data.ptr, row_bytes, layer_stride, outer, token)
    units = row_bytes // vb
    limit = 48 * 1024
    if n * vb > limit:
        _validate.fail("src_index", f"at most {limit // vb} columns (shared-memory staging)", f"n={n}")
    threads = max(1, min(units, 128, limit // (n * vb)))
    fn = _mod().get_function(f"cupy_kv_compact<{VEC_TYPES[vb]}>")
    fn((-(-units // threads), B, layers * 2), (threads,),
       (k_cache, v_cache, _i(layers), _i(layer_stride), cache_lens, src_index, _i(B), _i(n), bt, _i(outer),
        _i(token), _i(tokens), _i(max_pages), _i(row_bytes)), shared_mem=threads * n * vb)


def _scan(logits, temperature, seed, offset, bf16):
    import cupy

    from tridiff.cupy._source import LOGIT_TYPES

    B, R, V = logits.shape
    name = "bfloat16" if bf16 else logits.dtype.name
    ctype = LOGIT_TYPES[name]
    es = logits.itemsize
    if logits.strides[2] != es:
        logits = cupy.ascontiguousarray(logits)
    b_stride, t_stride = logits.strides[0] // es, logits.strides[1] // es
    chunk = 256 * 4 * (16 // es)
    nchunks = max(1, -(-V // chunk))
    rows = B * R
    pv = cupy.empty(rows * nchunks, dtype=cupy.float64)
    pi = cupy.empty(rows * nchunks, dtype=cupy.int64)
    kind = 1 if temperature else 0
    vec = logits.data.ptr % 16 == 0 and (b_stride * es) % 16 == 0 and (t_stride * es) % 16 == 0
    fn = _mod().get_function(f"cupy_row_scan<{kind}, {ctype}, {'true' if vec else 'false'}>")
    import numpy

    fn((rows * nchunks,), (256,),
       (logits, _i(rows), _i(R), _i(V), _i(b_stride), _i(t_stride), numpy.float64(temperature),
        seed if kind else _null(), offset if kind else _null(), _i(chunk), _i(nchunks), pv, pi))
    return nchunks, pv, pi


def sample(logits, temperature=0.0, seed=None, offset=None, bf16=False):
    _mod()  # raises with the reason when the cupy path is unavailable
    import cupy

    _validate.logits("logits", logits, bf16)
    _validate.sampling(temperature, seed, offset, logits.shape[0])
    B, T, V = logits.shape
    nchunks, pv, pi = _scan(logits, temperature, seed, offset, bf16)
    out = cupy.empty((B, T), dtype=cupy.int64)
    _mod().get_function("cupy_sample_finish")((-(-(B * T) // 128),), (128,), (pv, pi, _i(nchunks), _i(B * T), out))
    return out


def _accept(logits, draft, cache_lens, eos_id, quadratic, temperature, seed, offset, bf16):
    _mod()
    import cupy

    _validate.accept(logits, draft, cache_lens, eos_id, quadratic, temperature, seed, offset, bf16)
    B, R, V = logits.shape
    n = draft.shape[1]
    nchunks, pv, pi = _scan(logits, temperature, seed, offset, bf16)
    n_acc = cupy.empty(B, dtype=cupy.int32)
    tokens = cupy.empty((B, n if quadratic else n + 1), dtype=cupy.int64)
    n_emit = cupy.empty(B, dtype=cupy.int32)
    nxt = cupy.empty((B, n) if quadratic else (B,), dtype=cupy.int64)
    new_lens = cupy.empty(B, dtype=cupy.int32)
    hit = cupy.empty(B, dtype=cupy.bool_)
    fn = _mod().get_function(f"cupy_accept_finish<{'true' if quadratic else 'false'}>")
    fn((B,), (128,), (pv, pi, _i(nchunks), _i(B), _i(R), _i(n), cupy.ascontiguousarray(draft, dtype=cupy.int64),
                      cupy.ascontiguousarray(cache_lens, dtype=cupy.int32), _i(eos_id), n_acc, tokens, n_emit, nxt,
                      new_lens, hit), shared_mem=R * 8)
    return n_acc, tokens, n_emit, nxt, new_lens, hit


def accept_linear(target_logits, draft_tokens, cache_lens, eos_id, temperature=0.0, seed=None, offset=None,
                  bf16=False):
    return _accept(target_logits, draft_tokens, cache_lens, eos_id, False, temperature, seed, offset, bf16)


def accept_quadratic(logits, draft, cache_lens, eos_id, bf16=False):
    return _accept(logits, draft, cache_lens, eos_id, True, 0.0, None, None, bf16)
