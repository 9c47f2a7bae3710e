// CUDA launchers for the row scan (chunked argmax / Gumbel-max / softmax statistics)
// and the acceptance / sampling finish kernels (torch-free entry points of api.h).
#include <cuda_runtime.h>

#include "../api.h"

namespace td {

namespace {
template <int KIND, typename T>
int launch_scan(const RowScanArgs& a, cudaStream_t s) {
  const int64_t es = (int64_t)sizeof(T);
  const bool vec = ((uintptr_t)a.logits % 16 == 0) && ((a.b_stride * es) % 16 == 0) && ((a.t_stride * es) % 16 == 0) &&
                   (a.chunk % (16 / (int64_t)sizeof(T)) == 0);
  const dim3 grid((unsigned)(a.nchunks * a.rows));
  if (vec) row_scan_kernel<KIND, T, true><<<grid, 256, 0, s>>>(a);
  else row_scan_kernel<KIND, T, false><<<grid, 256, 0, s>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "row_scan_kernel");
  return kOk;
}
}  // namespace

int CudaImpl::row_scan(const RowScanArgs& a, int kind, int dtype, void* stream) {
  if (a.rows == 0 || a.nchunks == 0) return kOk;
  if (a.rows * a.nchunks > 0x7fffffffLL) return kTooLarge;  // grid.x limit
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  TD_DISPATCH_FLOAT(dtype, T, {
    switch (kind) {
      case kGreedy: return launch_scan<kGreedy, T>(a, s);
      case kSampleScore: return launch_scan<kSampleScore, T>(a, s);
      case kDiffusionScore: return launch_scan<kDiffusionScore, T>(a, s);
      default: return kBadArgument;
    }
  });
  return kOk;
}

int CudaImpl::accept_finish(const AcceptArgs& a, bool quadratic, void* stream) {
  if (a.B == 0) return kOk;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t smem = (size_t)a.R * sizeof(int64_t);
  if (smem > 48 * 1024) return kTooLarge;
  if (quadratic) accept_finish_kernel<true><<<(unsigned)a.B, 128, smem, s>>>(a);
  else accept_finish_kernel<false><<<(unsigned)a.B, 128, smem, s>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "accept_finish_kernel");
  return kOk;
}

int CudaImpl::sample_finish(const double* part_val, const int64_t* part_idx, int64_t nchunks, int64_t rows,
                            int64_t* out, void* stream) {
  if (rows == 0) return kOk;
  sample_finish_kernel<<<(unsigned)ceil_div(rows, 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      part_val, part_idx, nchunks, rows, out);
  TD_CUDA_TRY(cudaGetLastError(), "sample_finish_kernel");
  return kOk;
}

int CudaImpl::confidence_finish(const ConfArgs& a, int dtype, void* stream) {
  if (a.rows == 0) return kOk;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  TD_DISPATCH_FLOAT(dtype, T, { confidence_finish_kernel<T><<<(unsigned)ceil_div(a.rows, 128), 128, 0, s>>>(a); });
  TD_CUDA_TRY(cudaGetLastError(), "confidence_finish_kernel");
  return kOk;
}

int CudaImpl::unmask(const UnmaskArgs& a, int dtype, void* stream) {
  if (a.B == 0) return kOk;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  TD_DISPATCH_FLOAT(dtype, T, { unmask_kernel<T><<<(unsigned)ceil_div(a.B, 128), 128, 0, s>>>(a); });
  TD_CUDA_TRY(cudaGetLastError(), "unmask_kernel");
  return kOk;
}

int CudaImpl::rejection(const RejectionArgs& a, int dtype, int64_t chunk, void* stream) {
  if (a.B == 0) return kOk;
  if (a.n > 1024 || (a.n + 1) * 32 * (int64_t)sizeof(int64_t) > 48 * 1024) return kTooLarge;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  TD_DISPATCH_FLOAT(dtype, T, {
    if (a.n > 0) {
      const int coin_threads = (int)min64(1024, max64(32, ceil_div(a.n, 32) * 32));
      rejection_coins_kernel<T><<<(unsigned)a.B, coin_threads, (size_t)a.n, s>>>(a);
      TD_CUDA_TRY(cudaGetLastError(), "rejection_coins_kernel");
      rejection_residual_kernel<T><<<(unsigned)(a.B * a.nchunks), 256, 0, s>>>(a, chunk);
      TD_CUDA_TRY(cudaGetLastError(), "rejection_residual_kernel");
    } else {
      TD_CUDA_TRY(cudaMemsetAsync(a.c, 0, (size_t)a.B * sizeof(int32_t), s), "cudaMemsetAsync (rejection counts)");
    }
  });
  rejection_finish_kernel<<<(unsigned)ceil_div(a.B, 32), 32, (size_t)(32 * (a.n + 1) * sizeof(int64_t)), s>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "rejection_finish_kernel");
  return kOk;
}

}  // namespace td
