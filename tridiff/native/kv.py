"""KV-cache ops of the native backends (csrc/kv)."""
from __future__ import annotations

import torch

from tridiff.native.base import CUDA_SMEM_BYTES, NativeBase
from tridiff.reference import kv_cache as _ref_kv

# kv_compact stages the n moved slots of one 16-byte vector per thread in shared memory
# (csrc/kv/kv_launch.cu kv_compact: per_thread = n * vb > smem_limit is kTooLarge).
KV_COMPACT_MAX_N = CUDA_SMEM_BYTES // 16


def _index_reason(**tensors):
    """The kernels read index tensors as dense int32 arrays."""
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != torch.int32:
            return f"{name} must be int32, got {t.dtype}"
        if not t.is_contiguous():
            return f"{name} must be contiguous, got strides {tuple(t.stride())}"
    return None


def _feature_reason(**tensors):
    """Stride rule of the KV kernels: any batch/row/page/token/head strides, unit stride
    along D (a token's features are copied as per-head runs of D contiguous elements)."""
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            return f"{name} needs unit stride along D, got strides {tuple(t.stride())}"
    return None


def _dense_slab(t) -> bool:
    """Whether a token's [Hkv, D] features are one contiguous run (given unit D stride)."""
    return t.shape[-2] <= 1 or t.stride(-2) == t.shape[-1]


def _runs(*tensors):
    """(heads, head_bytes, per-tensor bytes between runs) for csrc/kv/slots.cuh: one run of
    Hkv*D elements when every tensor's slab is dense, else one run of D per head."""
    t0 = tensors[0]
    H, D, es = t0.shape[-2], t0.shape[-1], t0.element_size()
    if all(_dense_slab(t) for t in tensors):
        return 1, H * D * es, [H * D * es] * len(tensors)
    return H, D * es, [t.stride(-2) * es for t in tensors]


def _layout(cache, block_table):
    """(block_table pointer, outer and token byte strides, tokens per row/page, max_pages) of
    a cache [(layers,) B, Tmax, Hkv, D] or paged [(layers,) num_pages, page, Hkv, D]."""
    es = cache.element_size()
    outer, token, tokens = cache.stride(-4) * es, cache.stride(-3) * es, cache.shape[-3]
    if block_table is None:
        return 0, outer, token, tokens, 0
    return block_table.data_ptr(), outer, token, tokens, block_table.shape[1]


class KvOps(NativeBase):
    """Stride rules (supports_<op> refuses anything else, so "auto" falls back):
    caches and k/v take any batch/row/page/token/head strides with unit stride along D,
    k_cache and v_cache with equal strides; index tensors (cache_lens, q_lens, src_index,
    block_table, free_pages, free_count, target/keep lens) dense int32 (tridiff.ops
    converts int64 ones before dispatch). kv_commit_/kv_rollback_ run torch ops: any
    layout."""

    def supports_kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        return (self.device_reason(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
                or _index_reason(cache_lens=cache_lens, q_lens=q_lens, block_table=block_table)
                or _feature_reason(k=k, v=v, k_cache=k_cache)
                or self.cache_pair_reason(k_cache, v_cache))

    supports_kv_append_ = supports_kv_write_  # the same copy, then cache_lens += q_lens in the kernel

    def kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=False):
        B, T, H, D = k.shape
        es = k.element_size()
        bt, outer, token, tokens, max_pages = _layout(k_cache, block_table)
        heads, head_bytes, (k_hs, v_hs, cache_hs) = _runs(k, v, k_cache)
        self.lib().kv_write(commit, k_cache.data_ptr(), v_cache.data_ptr(), k.data_ptr(), v.data_ptr(),
                            k.stride(0) * es, k.stride(1) * es, v.stride(0) * es, v.stride(1) * es,
                            cache_lens.data_ptr(), q_lens.data_ptr(), bt, outer, token, tokens, max_pages,
                            B, T, heads, head_bytes, k_hs, v_hs, cache_hs, self.stream(k))

    def kv_append_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        self.kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=True)

    def supports_kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        return (self.device_reason(k_cache, v_cache, cache_lens, src_index, block_table)
                or _index_reason(cache_lens=cache_lens, src_index=src_index, block_table=block_table)
                or _feature_reason(k_cache=k_cache)
                or self.cuda_limit(src_index.shape[1], KV_COMPACT_MAX_N, "src_index columns n")
                or self.cache_pair_reason(k_cache, v_cache))

    def kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        es = k_cache.element_size()
        B, n = src_index.shape
        layers = k_cache.shape[0] if k_cache.dim() == 5 else 1
        layer_stride = k_cache.stride(0) * es if k_cache.dim() == 5 else 0
        bt, outer, token, tokens, max_pages = _layout(k_cache, block_table)
        heads, head_bytes, (head_stride,) = _runs(k_cache)
        self.lib().kv_compact(k_cache.data_ptr(), v_cache.data_ptr(), layers, layer_stride, cache_lens.data_ptr(),
                              src_index.data_ptr(), B, n, bt, outer, token, tokens, max_pages, heads, head_bytes,
                              head_stride, self.stream(k_cache))

    # Metadata-only ops: one tiny torch op each, nothing to gain from a kernel.
    def kv_commit_(self, cache_lens, n):
        _ref_kv.kv_commit_(cache_lens, n)

    def kv_rollback_(self, cache_lens, new_lens):
        _ref_kv.kv_rollback_(cache_lens, new_lens)

    def supports_kv_commit_(self, cache_lens, n):
        return self.device_reason(cache_lens, n)

    def supports_kv_rollback_(self, cache_lens, new_lens):
        return self.device_reason(cache_lens, new_lens)

    def _paged_reason(self, block_table, free_pages, free_count, lens):
        return (self.device_reason(block_table, free_pages, free_count, lens)
                or _index_reason(block_table=block_table, free_pages=free_pages, free_count=free_count, lens=lens))

    def supports_paged_reserve_(self, block_table, free_pages, free_count, target_lens, page_size):
        return self._paged_reason(block_table, free_pages, free_count, target_lens)

    def supports_paged_release_(self, block_table, free_pages, free_count, keep_lens, page_size):
        return self._paged_reason(block_table, free_pages, free_count, keep_lens)

    def _paged(self, reserve, block_table, free_pages, free_count, lens, page_size):
        B, max_pages = block_table.shape
        self.lib().paged(reserve, block_table.data_ptr(), free_pages.data_ptr(), free_count.data_ptr(),
                         lens.data_ptr(), B, max_pages, free_pages.shape[0], int(page_size), self.stream(block_table))

    def paged_reserve_(self, block_table, free_pages, free_count, target_lens, page_size):
        self._paged(True, block_table, free_pages, free_count, target_lens, page_size)

    def paged_release_(self, block_table, free_pages, free_count, keep_lens, page_size):
        self._paged(False, block_table, free_pages, free_count, keep_lens, page_size)
