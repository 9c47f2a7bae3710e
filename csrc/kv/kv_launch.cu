// CUDA launchers for the KV-cache kernels (torch-free: plain C++ entry points of api.h).
#include <cuda_runtime.h>

#include "../api.h"

namespace td {

namespace {
uint64_t bits(const void* p) { return (uint64_t)(uintptr_t)p; }
uint64_t bits(int64_t v) { return (uint64_t)v; }
}  // namespace

int CudaImpl::kv_write(const KvWriteArgs& a, bool commit, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t row_bytes = a.heads * a.head_bytes;
  if (a.B * a.T > 0 && row_bytes > 0) {
    const uint64_t align = bits(a.k_cache) | bits(a.v_cache) | bits(a.k) | bits(a.v) | bits(a.head_bytes) |
                           bits(a.src_batch_stride[0]) | bits(a.src_token_stride[0]) |
                           bits(a.src_batch_stride[1]) | bits(a.src_token_stride[1]) |
                           bits(a.src_head_stride[0]) | bits(a.src_head_stride[1]) | bits(a.cache_head_stride) |
                           bits(a.cache.outer_stride) | bits(a.cache.token_stride);
    const int vb = vec_bytes_for(align);
    const int64_t units = row_bytes / vb;
    const int threads = (int)min64(256, ceil_div(units, 32) * 32);
    const dim3 grid((unsigned)(a.B * a.T), (unsigned)ceil_div(units, threads), 2);
    TD_DISPATCH_VEC(vb, V, kv_write_kernel<V><<<grid, threads, 0, s>>>(a));
    TD_CUDA_TRY(cudaGetLastError(), "kv_write_kernel");
  }
  if (commit && a.B > 0) {
    kv_commit_kernel<<<(unsigned)ceil_div(a.B, 256), 256, 0, s>>>(const_cast<int32_t*>(a.cache_lens), a.q_lens, a.B);
    TD_CUDA_TRY(cudaGetLastError(), "kv_commit_kernel");
  }
  return kOk;
}

int CudaImpl::kv_compact(const KvCompactArgs& a, void* stream) {
  const int64_t row_bytes = a.heads * a.head_bytes;
  if (a.B == 0 || a.n == 0 || row_bytes == 0 || a.layers == 0) return kOk;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint64_t align = bits(a.k_cache) | bits(a.v_cache) | bits(a.head_bytes) | bits(a.head_stride) |
                         bits(a.layer_stride) | bits(a.cache.outer_stride) | bits(a.cache.token_stride);
  const int vb = vec_bytes_for(align);
  const int64_t units = row_bytes / vb;
  const int64_t smem_limit = 48 * 1024;  // default dynamic shared memory without opt-in
  const int64_t per_thread = a.n * vb;
  if (per_thread > smem_limit) return kTooLarge;
  const int threads = (int)max64(1, min64(min64(units, 128), smem_limit / per_thread));
  const dim3 grid((unsigned)ceil_div(units, threads), (unsigned)a.B, (unsigned)(a.layers * 2));
  const size_t smem = (size_t)(threads * per_thread);
  TD_DISPATCH_VEC(vb, V, kv_compact_kernel<V><<<grid, threads, smem, s>>>(a));
  TD_CUDA_TRY(cudaGetLastError(), "kv_compact_kernel");
  return kOk;
}

int CudaImpl::paged_reserve(const PagedArgs& a, void* stream) {
  paged_reserve_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "paged_reserve_kernel");
  return kOk;
}

int CudaImpl::paged_release(const PagedArgs& a, void* stream) {
  paged_release_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "paged_release_kernel");
  return kOk;
}

}  // namespace td
