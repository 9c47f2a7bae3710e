// Chunked scan of logit rows [rows, V]: per (row, chunk) the best (score, index)
// and, optionally, online-softmax statistics (max, sum exp(x - max)) in double.
// Phase 1 of every acceptance/sampling op: a grid of (chunk, row) CTAs keeps all SMs
// busy even for one short verify block; a small "finish" kernel combines the chunks.
//   kGreedy     score = logit in native precision (double only for fp64 input)
//   kSample     score = float32(logit) / T + gumbel(seed[b], v, t, SAMPLE, offset[b])
//   kDiffusion  score = double(logit) - T * log(-log(double(u))), u on the DIFFUSION stream
//               (product and difference rounded separately, as torch computes them)
// Ties go to the lowest index; NaN beats everything (torch.argmax semantics).
#pragma once
#include "../common/philox.cuh"

namespace td {

enum ScoreKind : int { kGreedy = 0, kSampleScore = 1, kDiffusionScore = 2 };

struct RowScanArgs {
  const void* logits;
  int64_t rows;            // B * R
  int64_t R;               // rows per batch item; row r has b = r / R, t = t_base + r % R
  int64_t t_base;          // position of the first row (the Philox counter t)
  int64_t V;
  int64_t b_stride;        // elements between batch items
  int64_t t_stride;        // elements between positions (the vocabulary is contiguous)
  double temperature;
  int stats_scaled;        // statistics of float32(x) / float32(T) instead of x
  const int64_t* seed;     // [B] (sampled kinds)
  const int64_t* offset;   // [B]
  int64_t chunk;           // elements per chunk (multiple of 16)
  int64_t nchunks;
  double* part_val;        // [rows, nchunks]
  int64_t* part_idx;       // [rows, nchunks]
  double* part_max;        // [rows, nchunks] or nullptr (no softmax statistics)
  double* part_sum;        // [rows, nchunks] or nullptr
};

TD_HD bool better(double v, int64_t i, double bv, int64_t bi) {
  const bool vn = is_nan(v), bn = is_nan(bv);
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

struct Best {
  double val;
  int64_t idx;
  TD_HD void init() { val = neg_inf(); idx = (int64_t)0x7fffffffffffffffLL; }
  TD_HD void push(double v, int64_t i) { if (better(v, i, val, idx)) { val = v; idx = i; } }
};

// Online softmax statistics in double: m = running max, s = sum exp(x - m), every
// product and sum rounded on its own (no FMA), as on the host. A NaN anywhere poisons
// both (as torch.softmax does).
struct SoftStats {
  double m, s;
  TD_HD void init() { m = neg_inf(); s = 0.0; }
  TD_HD void push(double x) {
    if (is_nan(m)) return;
    if (is_nan(x)) { m = x; s = x; return; }
    if (x == neg_inf()) return;
    if (x > m) { s = add_rn(mul_rn(s, exp_d(m - x)), 1.0); m = x; }
    else s = add_rn(s, exp_d(x - m));
  }
  TD_HD void merge(double m2, double s2) {
    if (is_nan(m)) return;
    if (is_nan(m2)) { m = m2; s = m2; return; }
    if (m2 == neg_inf()) return;
    if (m == neg_inf()) { m = m2; s = s2; return; }
    if (m2 > m) { s = add_rn(mul_rn(s, exp_d(m - m2)), s2); m = m2; }
    else s = add_rn(s, mul_rn(s2, exp_d(m2 - m)));
  }
};

template <typename T>
TD_HD double stat_value(const RowScanArgs& a, T x) {
  return a.stats_scaled ? (double)(to_float(x) / (float)a.temperature) : (double)to_acc(x);
}

TD_HD const void* row_ptr(const RowScanArgs& a, int64_t row, int64_t elem_size) {
  const int64_t off = (row / a.R) * a.b_stride + (row % a.R) * a.t_stride;
  return reinterpret_cast<const char*>(a.logits) + off * elem_size;
}

template <int KIND, typename T>
TD_HD double row_score(const RowScanArgs& a, T x, int64_t b, int64_t t, int64_t v) {
  if (KIND == kGreedy) return (double)to_acc(x);
  if (KIND == kSampleScore)
    return (double)(to_float(x) / (float)a.temperature +
                    philox_gumbel(a.seed[b], v, t, kSample, a.offset[b]));
  const double u = (double)philox_uniform(a.seed[b], v, t, kDiffusion, a.offset[b]);
  return sub_rn((double)to_acc(x), mul_rn(a.temperature, log_d(-log_d(u))));
}

// Whole-row scan on the host (CPU build) or by one thread: the reference loop.
template <int KIND, typename T>
TD_HD void scan_range(const RowScanArgs& a, int64_t row, int64_t lo, int64_t hi, Best& best,
                      SoftStats* stats) {
  const T* x = reinterpret_cast<const T*>(row_ptr(a, row, sizeof(T)));
  const int64_t b = row / a.R, t = a.t_base + row % a.R;
  for (int64_t v = lo; v < hi; ++v) {
    best.push(row_score<KIND, T>(a, x[v], b, t, v), v);
    if (stats) stats->push(stat_value(a, x[v]));
  }
}

#if TD_CUDA
template <typename U>
__device__ __forceinline__ U shfl_down(U v, int d) { return __shfl_down_sync(0xffffffffu, v, d); }

// Block-wide combine of Best (+ stats) into thread 0. blockDim.x is a multiple of 32, <= 1024.
__device__ __forceinline__ void block_reduce(Best& best, SoftStats& st, bool with_stats) {
  __shared__ double s_val[32], s_m[32], s_s[32];
  __shared__ int64_t s_idx[32];
  for (int d = 16; d > 0; d >>= 1) {
    const double ov = shfl_down(best.val, d);
    const long long oi = shfl_down((long long)best.idx, d);
    if (better(ov, oi, best.val, best.idx)) { best.val = ov; best.idx = oi; }
    if (with_stats) {
      const double om = shfl_down(st.m, d), os = shfl_down(st.s, d);
      st.merge(om, os);
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { s_val[warp] = best.val; s_idx[warp] = best.idx; s_m[warp] = st.m; s_s[warp] = st.s; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
      if (better(s_val[w], s_idx[w], best.val, best.idx)) { best.val = s_val[w]; best.idx = s_idx[w]; }
      if (with_stats) st.merge(s_m[w], s_s[w]);
    }
  }
}

// grid = rows * nchunks CTAs (chunk fastest); 16-byte loads when VEC (base and strides 16-byte aligned).
template <int KIND, typename T, bool VEC>
__device__ __forceinline__ void row_scan_body(const RowScanArgs& a) {
  const int64_t row = blockIdx.x / a.nchunks;
  const int64_t chunk = blockIdx.x % a.nchunks;
  const int64_t lo = chunk * a.chunk;
  const int64_t hi = min64(lo + a.chunk, a.V);
  const bool with_stats = a.part_max != nullptr;
  Best best; best.init();
  SoftStats st; st.init();
  const T* x = reinterpret_cast<const T*>(row_ptr(a, row, sizeof(T)));
  const int64_t b = row / a.R, t = a.t_base + row % a.R;
  constexpr int E = 16 / (int)sizeof(T);
  int64_t scalar_from = lo;
  if (VEC) {
    const int64_t groups = (hi - lo) / E;
    for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
      const u128 raw = reinterpret_cast<const u128*>(x + lo)[g];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < E; ++k) {
        const int64_t v = lo + g * E + k;
        best.push(row_score<KIND, T>(a, e[k], b, t, v), v);
        if (with_stats) st.push(stat_value(a, e[k]));
      }
    }
    scalar_from = lo + groups * E;
  }
  for (int64_t v = scalar_from + threadIdx.x; v < hi; v += blockDim.x) {
    best.push(row_score<KIND, T>(a, x[v], b, t, v), v);
    if (with_stats) st.push(stat_value(a, x[v]));
  }
  block_reduce(best, st, with_stats);
  if (threadIdx.x == 0) {
    const int64_t p = (int64_t)blockIdx.x;
    a.part_val[p] = best.val;
    a.part_idx[p] = best.idx;
    if (with_stats) { a.part_max[p] = st.m; a.part_sum[p] = st.s; }
  }
}

template <int KIND, typename T, bool VEC>
__global__ void row_scan_kernel(RowScanArgs a) { row_scan_body<KIND, T, VEC>(a); }
#endif

// Combine a row's chunk partials (finish kernels and the CPU path share this).
TD_HD int64_t combine_argmax(const double* val, const int64_t* idx, int64_t nchunks) {
  Best best; best.init();
  for (int64_t c = 0; c < nchunks; ++c) best.push(val[c], idx[c]);
  return best.idx;
}

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::row_scan_kernel<td::kGreedy, td::bf16, true>(td::RowScanArgs);
template __global__ void td::row_scan_kernel<td::kSampleScore, float, false>(td::RowScanArgs);
template __global__ void td::row_scan_kernel<td::kDiffusionScore, double, true>(td::RowScanArgs);
#endif
