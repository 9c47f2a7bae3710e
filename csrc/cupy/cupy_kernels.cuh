// Entry points for the cupy path (tridiff/cupy): thin wrapper kernels taking scalar
// arguments (cupy passes scalars and pointers, not structs) around the same
// __device__ kernel bodies the compiled extension launches. Compiled at run time by
// NVRTC through cupy.RawModule with csrc/ on the include path.
#pragma once

#include "../kv/kv_write.cuh"
#include "../kv/kv_compact.cuh"
#include "../accept/accept.cuh"
#include "../accept/sample.cuh"

typedef long long i64;

__device__ __forceinline__ td::CacheLayout cupy_layout(const int* bt, i64 outer, i64 token, i64 tokens, i64 max_pages) {
  td::CacheLayout c;
  c.outer_stride = outer; c.token_stride = token; c.tokens = tokens; c.block_table = bt; c.max_pages = max_pages;
  return c;
}

template <typename V>
__global__ void cupy_kv_write(char* kc, char* vc, const char* k, const char* v, i64 ksb, i64 kst, i64 vsb,
                              i64 vst, const int* lens, const int* qlens, const int* bt, i64 outer, i64 token,
                              i64 tokens, i64 max_pages, i64 B, i64 T, i64 row_bytes) {
  td::KvWriteArgs a;
  a.k_cache = kc; a.v_cache = vc; a.k = k; a.v = v;
  a.src_batch_stride[0] = ksb; a.src_token_stride[0] = kst; a.src_batch_stride[1] = vsb; a.src_token_stride[1] = vst;
  a.cache_lens = lens; a.q_lens = qlens; a.cache = cupy_layout(bt, outer, token, tokens, max_pages);
  a.B = B; a.T = T;
  a.heads = 1; a.head_bytes = row_bytes;  // tridiff/cupy/_validate.py checks dense [Hkv, D] slabs
  a.src_head_stride[0] = a.src_head_stride[1] = a.cache_head_stride = row_bytes;
  td::kv_write_body<V>(a);
}

__global__ void cupy_kv_commit(int* lens, const int* n, i64 B) {
  const i64 b = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  if (b < B) td::kv_commit_row(lens, n, b);
}

template <typename V>
__global__ void cupy_kv_compact(char* kc, char* vc, i64 layers, i64 layer_stride, const int* lens, const int* src,
                                i64 B, i64 n, const int* bt, i64 outer, i64 token, i64 tokens, i64 max_pages,
                                i64 row_bytes) {
  td::KvCompactArgs a;
  a.k_cache = kc; a.v_cache = vc; a.layers = layers; a.layer_stride = layer_stride;
  a.cache_lens = lens; a.src_index = src; a.B = B; a.n = n;
  a.cache = cupy_layout(bt, outer, token, tokens, max_pages);
  a.heads = 1; a.head_bytes = row_bytes; a.head_stride = row_bytes;  // dense slabs, checked by _validate
  td::kv_compact_body<V>(a);
}

template <int KIND, typename T, bool VEC>
__global__ void cupy_row_scan(const void* logits, i64 rows, i64 R, i64 V, i64 b_stride, i64 t_stride,
                              double temperature, const i64* seed, const i64* offset, i64 chunk, i64 nchunks,
                              double* part_val, i64* part_idx) {
  td::RowScanArgs a;
  a.logits = logits; a.rows = rows; a.R = R; a.t_base = 0; a.V = V; a.b_stride = b_stride; a.t_stride = t_stride;
  a.temperature = temperature; a.stats_scaled = 0;
  a.seed = (const int64_t*)seed; a.offset = (const int64_t*)offset; a.chunk = chunk; a.nchunks = nchunks;
  a.part_val = part_val; a.part_idx = (int64_t*)part_idx; a.part_max = nullptr; a.part_sum = nullptr;
  td::row_scan_body<KIND, T, VEC>(a);
}

__global__ void cupy_sample_finish(const double* pv, const i64* pi, i64 nchunks, i64 rows, i64* out) {
  const i64 r = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  if (r < rows) out[r] = td::combine_argmax(pv + r * nchunks, (const int64_t*)pi + r * nchunks, nchunks);
}

template <bool QUADRATIC>
__global__ void cupy_accept_finish(const double* pv, const i64* pi, i64 nchunks, i64 B, i64 R, i64 n,
                                   const i64* draft, const int* lens, i64 eos, int* n_acc, i64* tokens,
                                   int* n_emit, i64* next, int* new_lens, unsigned char* hit) {
  td::AcceptArgs a;
  a.part_val = pv; a.part_idx = (const int64_t*)pi; a.nchunks = nchunks; a.B = B; a.R = R; a.n = n;
  a.draft = (const int64_t*)draft; a.cache_lens = lens; a.eos = eos;
  a.out.n_accepted = n_acc; a.out.tokens = (int64_t*)tokens; a.out.n_emitted = n_emit;
  a.out.next = (int64_t*)next; a.out.new_cache_lens = new_lens; a.out.hit_eos = hit;
  td::accept_finish_body<QUADRATIC>(a);
}

#if defined(TD_CHECK_INSTANTIATE)
template __global__ void cupy_kv_write<td::u128>(char*, char*, const char*, const char*, i64, i64, i64, i64,
                                                 const int*, const int*, const int*, i64, i64, i64, i64, i64, i64,
                                                 i64);
template __global__ void cupy_kv_compact<td::u128>(char*, char*, i64, i64, const int*, const int*, i64, i64,
                                                   const int*, i64, i64, i64, i64, i64);
template __global__ void cupy_row_scan<1, td::bf16, true>(const void*, i64, i64, i64, i64, i64, double,
                                                          const i64*, const i64*, i64, i64, double*, i64*);
template __global__ void cupy_accept_finish<true>(const double*, const i64*, i64, i64, i64, i64, const i64*,
                                                  const int*, i64, int*, i64*, int*, i64*, int*, unsigned char*);
#endif
