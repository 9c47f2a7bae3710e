// kv_write_ / kv_append_: copy k/v[b, t] (t < q_lens[b]) into slot cache_lens[b] + t.
// Any batch/token/head strides of the source and the cache; unit stride along D.
// One CTA per (token, column block, k-or-v); each thread moves V-sized units.
#pragma once
#include "../common/vec.cuh"
#include "slots.cuh"

namespace td {

struct KvWriteArgs {
  char* k_cache;
  char* v_cache;
  const char* k;
  const char* v;
  int64_t src_batch_stride[2];  // bytes, [0] for k and [1] for v
  int64_t src_token_stride[2];  // bytes
  const int32_t* cache_lens;
  const int32_t* q_lens;
  CacheLayout cache;
  int64_t B, T;
  int64_t heads, head_bytes;   // a token's features: `heads` runs of head_bytes (slots.cuh)
  int64_t src_head_stride[2];  // bytes between runs of k ([0]) and v ([1])
  int64_t cache_head_stride;   // bytes between runs, both caches
};

// Source and destination byte offsets of token (b, t); false if t is padding.
TD_HD bool kv_write_token(const KvWriteArgs& a, int which, int64_t b, int64_t t, int64_t& src,
                          int64_t& dst) {
  if (t >= (int64_t)a.q_lens[b]) return false;
  src = b * a.src_batch_stride[which] + t * a.src_token_stride[which];
  dst = slot_offset(a.cache, b, (int64_t)a.cache_lens[b] + t);
  return true;
}

TD_HD void kv_commit_row(int32_t* cache_lens, const int32_t* n, int64_t b) { cache_lens[b] += n[b]; }

#if TD_CUDA
// Kernel bodies are __device__ functions so other entry points (the cupy wrappers
// taking scalar arguments) can reuse them; the __global__ below is a thin shell.
template <typename V>
__device__ __forceinline__ void kv_write_body(const KvWriteArgs& a) {
  const int64_t token = blockIdx.x;
  const int64_t b = token / a.T, t = token % a.T;
  int64_t src, dst;
  if (!kv_write_token(a, blockIdx.z, b, t, src, dst)) return;
  const char* from = (blockIdx.z == 0 ? a.k : a.v) + src;
  char* to = (blockIdx.z == 0 ? a.k_cache : a.v_cache) + dst;
  const int64_t units = a.heads * a.head_bytes / (int64_t)sizeof(V);
  const int64_t src_stride = a.src_head_stride[blockIdx.z];
  for (int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; c < units;
       c += (int64_t)gridDim.y * blockDim.x) {
    const int64_t byte = c * (int64_t)sizeof(V);
    *reinterpret_cast<V*>(to + run_offset(byte, a.head_bytes, a.cache_head_stride)) =
        *reinterpret_cast<const V*>(from + run_offset(byte, a.head_bytes, src_stride));
  }
}

template <typename V>
__global__ void kv_write_kernel(KvWriteArgs a) { kv_write_body<V>(a); }

// Non-template kernels are static: the headers are included by several translation units.
static __global__ void kv_commit_kernel(int32_t* cache_lens, const int32_t* n, int64_t B) {
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b < B) kv_commit_row(cache_lens, n, b);
}
#endif

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::kv_write_kernel<td::u128>(td::KvWriteArgs);
template __global__ void td::kv_write_kernel<uint16_t>(td::KvWriteArgs);
#endif
