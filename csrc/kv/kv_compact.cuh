// kv_compact_: slot P+i of row b takes the old content of slot P+src_index[b, i]
// (src < 0 keeps the slot). All sources are read before any write, as through a
// temporary. One CTA per (column block, row, layer x {k, v}); each thread owns one
// V-wide byte column of the row and stages its n source units in shared memory, so
// no other thread ever touches the bytes it reads and writes: no cross-CTA hazard.
// The cache (contiguous or paged) may carry a leading layer dimension: one launch moves
// all layers. Any page/row/token/head strides; unit stride along D.
#pragma once
#include "../common/vec.cuh"
#include "slots.cuh"

namespace td {

struct KvCompactArgs {
  char* k_cache;
  char* v_cache;
  int64_t layers;
  int64_t layer_stride;  // bytes between layers (0 when layers == 1)
  const int32_t* cache_lens;
  const int32_t* src_index;  // [B, n]
  int64_t B, n;
  CacheLayout cache;
  int64_t heads, head_bytes;  // a token's features: `heads` runs of head_bytes (slots.cuh)
  int64_t head_stride;        // bytes between runs (k and v caches share strides)
};

// Does column i of row b move, and from which logical position? (identity moves skipped)
TD_HD bool compact_source(const KvCompactArgs& a, int64_t b, int64_t i, int64_t& from_pos, int64_t& to_pos) {
  const int64_t s = a.src_index[b * a.n + i];
  if (s < 0 || s == i) return false;
  const int64_t P = a.cache_lens[b];
  from_pos = P + s;
  to_pos = P + i;
  return true;
}

#if TD_CUDA
// Dynamic shared memory: n * blockDim.x units of V.
template <typename V>
__device__ __forceinline__ void kv_compact_body(const KvCompactArgs& a) {
  extern __shared__ __align__(16) unsigned char td_compact_smem[];
  V* stage = reinterpret_cast<V*>(td_compact_smem);
  const int64_t b = blockIdx.y;
  const int64_t layer = blockIdx.z >> 1;
  char* base = ((blockIdx.z & 1) ? a.v_cache : a.k_cache) + layer * a.layer_stride;
  const int64_t units = a.heads * a.head_bytes / (int64_t)sizeof(V);
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= units) return;
  const int64_t off = run_offset(c * (int64_t)sizeof(V), a.head_bytes, a.head_stride);
  for (int64_t i = 0; i < a.n; ++i) {
    int64_t from, to;
    if (compact_source(a, b, i, from, to))
      stage[i * blockDim.x + threadIdx.x] = *reinterpret_cast<const V*>(base + slot_offset(a.cache, b, from) + off);
  }
  for (int64_t i = 0; i < a.n; ++i) {
    int64_t from, to;
    if (compact_source(a, b, i, from, to))
      *reinterpret_cast<V*>(base + slot_offset(a.cache, b, to) + off) = stage[i * blockDim.x + threadIdx.x];
  }
}

template <typename V>
__global__ void kv_compact_kernel(KvCompactArgs a) { kv_compact_body<V>(a); }
#endif

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::kv_compact_kernel<td::u128>(td::KvCompactArgs);
template __global__ void td::kv_compact_kernel<uint8_t>(td::KvCompactArgs);
#endif
