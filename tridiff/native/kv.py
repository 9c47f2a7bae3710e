"""KV-cache ops of the native backends (csrc/kv)."""
from __future__ import annotations

from tridiff.native.base import CUDA_SMEM_BYTES, NativeBase
from tridiff.reference import kv_cache as _ref_kv

# kv_compact stages the n moved slots of one 16-byte vector per thread in shared memory
# (csrc/kv/kv_launch.cu kv_compact: per_thread = n * vb > smem_limit is kTooLarge).
KV_COMPACT_MAX_N = CUDA_SMEM_BYTES // 16


class KvOps(NativeBase):
    def supports_kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        return (self.device_reason(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
                or self.index_reason(cache_lens=cache_lens, q_lens=q_lens, block_table=block_table)
                or self.slab_reason("k", k) or self.slab_reason("v", v) or self.slab_reason("k_cache", k_cache)
                or self.cache_pair_reason(k_cache, v_cache))

    def kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=False):
        B, T, H, D = k.shape
        es = k.element_size()
        bt, outer, token, tokens, max_pages = self.layout(k_cache, block_table)
        self.lib().kv_write(commit, k_cache.data_ptr(), v_cache.data_ptr(), k.data_ptr(), v.data_ptr(),
                            k.stride(0) * es, k.stride(1) * es, v.stride(0) * es, v.stride(1) * es,
                            cache_lens.data_ptr(), q_lens.data_ptr(), bt, outer, token, tokens, max_pages,
                            B, T, H * D * es, self.stream(k))

    def kv_append_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        self.kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=True)

    def supports_kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        return (self.device_reason(k_cache, v_cache, cache_lens, src_index, block_table)
                or self.index_reason(cache_lens=cache_lens, src_index=src_index, block_table=block_table)
                or self.slab_reason("k_cache", k_cache)
                or self.cuda_limit(src_index.shape[1], KV_COMPACT_MAX_N, "src_index columns n")
                or self.cache_pair_reason(k_cache, v_cache))

    def kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        es = k_cache.element_size()
        B, n = src_index.shape
        layers = k_cache.shape[0] if k_cache.dim() == 5 else 1
        layer_stride = k_cache.stride(0) * es if k_cache.dim() == 5 else 0
        bt, outer, token, tokens, max_pages = self.layout(k_cache, block_table)
        row_bytes = k_cache.shape[-2] * k_cache.shape[-1] * es
        self.lib().kv_compact(k_cache.data_ptr(), v_cache.data_ptr(), layers, layer_stride, cache_lens.data_ptr(),
                              src_index.data_ptr(), B, n, bt, outer, token, tokens, max_pages, row_bytes,
                              self.stream(k_cache))

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
                or self.index_reason(block_table=block_table, free_pages=free_pages, free_count=free_count,
                                     lens=lens))

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
