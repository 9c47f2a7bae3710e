// Sampling and diffusion helpers, phase 2 after row_scan, plus diffusion_unmask.
//   sample               out[row] = best index (greedy or Gumbel-max, see rowscan.cuh)
//   diffusion_confidence x0 = best index; conf = exp(x[x0] - max) / sum exp(x - max)
//                        (softmax statistics in double), cast to the logits dtype
//   diffusion_unmask     per row, among positions holding mask_id: rank by conf
//                        (ties -> lower position); threshold mode transfers rank 0 and
//                        every conf >= threshold, top-k mode the first min(k, count).
#pragma once
#include "rowscan.cuh"

namespace td {

struct ConfArgs {
  const void* logits;
  int64_t rows, R, V, b_stride, t_stride;  // row r = (r / R, r % R)
  const double* part_val;
  const int64_t* part_idx;
  const double* part_max;
  const double* part_sum;
  int64_t nchunks;
  int64_t* x0;  // [rows]
  void* conf;   // [rows], logits dtype
};

template <typename T>
TD_HD void confidence_row(const ConfArgs& a, int64_t row) {
  const int64_t p = row * a.nchunks;
  const int64_t x0 = combine_argmax(a.part_val + p, a.part_idx + p, a.nchunks);
  SoftStats st; st.init();
  for (int64_t c = 0; c < a.nchunks; ++c) st.merge(a.part_max[p + c], a.part_sum[p + c]);
  const int64_t off = (row / a.R) * a.b_stride + (row % a.R) * a.t_stride + x0;
  const double x = (double)to_acc(reinterpret_cast<const T*>(a.logits)[off]);
  a.x0[row] = x0;
  store_as(exp_d(x - st.m) / st.s, reinterpret_cast<T*>(a.conf) + row);
}

struct UnmaskArgs {
  const int64_t* block;   // [B, L]
  const int64_t* x0;      // [B, L]
  const void* conf;       // [B, L] float dtype
  int64_t B, L;
  int64_t mask_id;
  int use_threshold;
  double threshold;        // already rounded to conf's dtype by the caller
  const int32_t* num_transfer;  // [B] when !use_threshold
  int64_t* new_block;     // [B, L]
  uint8_t* transferred;   // [B, L]
};

template <typename T>
TD_HD void unmask_row(const UnmaskArgs& a, int64_t b) {
  const int64_t* blk = a.block + b * a.L;
  const T* conf = reinterpret_cast<const T*>(a.conf) + b * a.L;
  int64_t count = 0;
  for (int64_t i = 0; i < a.L; ++i) count += blk[i] == a.mask_id;
  int64_t k = 0;
  if (!a.use_threshold) k = min64(max64(a.num_transfer[b], 0), count);
  for (int64_t i = 0; i < a.L; ++i) {
    bool take = false;
    if (blk[i] == a.mask_id) {
      const double ci = (double)to_acc(conf[i]);
      int64_t rank = 0;  // candidates ranked before i: higher conf, or equal conf at a lower position
      for (int64_t j = 0; j < a.L; ++j) {
        if (j == i || blk[j] != a.mask_id) continue;
        const double cj = (double)to_acc(conf[j]);
        rank += cj > ci || (cj == ci && j < i);
      }
      take = a.use_threshold ? (rank == 0 || ci >= a.threshold) : rank < k;
    }
    a.transferred[b * a.L + i] = take ? 1 : 0;
    a.new_block[b * a.L + i] = take ? a.x0[b * a.L + i] : blk[i];
  }
}

#if TD_CUDA
static __global__ void sample_finish_kernel(const double* part_val, const int64_t* part_idx, int64_t nchunks,
                                     int64_t rows, int64_t* out) {
  const int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r < rows) out[r] = combine_argmax(part_val + r * nchunks, part_idx + r * nchunks, nchunks);
}

template <typename T>
__global__ void confidence_finish_kernel(ConfArgs a) {
  const int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r < a.rows) confidence_row<T>(a, r);
}

template <typename T>
__global__ void unmask_kernel(UnmaskArgs a) {
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b < a.B) unmask_row<T>(a, b);
}
#endif

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::confidence_finish_kernel<td::f16>(td::ConfArgs);
template __global__ void td::unmask_kernel<td::bf16>(td::UnmaskArgs);
#endif
