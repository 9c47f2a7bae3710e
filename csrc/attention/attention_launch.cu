// CUDA launcher of the attention kernels (torch-free entry point of api.h): checks what
// the kernel needs (dtype, head dim, 16-byte alignment, GQA group), sizes the grid and
// the dynamic shared memory, launches on the caller's stream (graph-capturable).
#include <cuda_runtime.h>

#include "../api.h"
#include "attn_kernel.cuh"

namespace td {

namespace {
constexpr int kMaxDevices = 64;

template <typename T, int D>
int launch_attention(const AttnArgs& a, cudaStream_t s) {
  const size_t smem = (size_t)AttnSmem<D>::kBytes;
  // Above 48 KB needs the opt-in, once per device and instance (a host-side attribute;
  // done before any graph capture by the first eager call on that device).
  static bool raised[kMaxDevices] = {};
  int dev = 0;
  TD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= kMaxDevices) return kBadArgument;
  if (!raised[dev]) {
    TD_CUDA_TRY(cudaFuncSetAttribute(attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                "cudaFuncSetAttribute (attention_kernel shared memory)");
    raised[dev] = true;
  }
  const dim3 grid((unsigned)attn_qtiles(a), (unsigned)(a.B * a.Hkv), (unsigned)a.num_splits);
  attention_kernel<T, D><<<grid, kAttnThreads, smem, s>>>(a);
  TD_CUDA_TRY(cudaGetLastError(), "attention_kernel");
  if (a.num_splits > 1) {
    attention_merge_kernel<T><<<(unsigned)attn_ws_rows(a), D, 0, s>>>(a);
    TD_CUDA_TRY(cudaGetLastError(), "attention_merge_kernel");
  }
  return kOk;
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }
}  // namespace

int CudaImpl::attention(const AttnArgs& a, int dtype, void* stream) {
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0 || attn_group(a) > kAttnBlockM || a.num_splits < 1 ||
      a.num_splits > kAttnMaxSplits)
    return kBadArgument;
  if (a.B * a.Tq == 0) return kOk;
  if (a.B * a.Hkv > 65535 || attn_qtiles(a) > 0x7fffffffLL) return kTooLarge;
  // 16-byte vector access to every row: pointers and element strides (x2 bytes).
  const int64_t strides_or = a.q_sb | a.q_st | a.q_sh | a.k_sb | a.k_st | a.k_sh | a.v_sb | a.v_st | a.v_sh;
  if ((strides_or & 7) != 0 || ((a.cache.outer_stride | a.cache.token_stride) & 15) != 0 || (a.o_sb | a.o_st | a.o_sh) & 1 || !aligned16(a.q) || !aligned16(a.k) ||
      !aligned16(a.v) || !aligned16(a.k_cache) || !aligned16(a.v_cache) || ((uintptr_t)a.out & 3u) != 0)
    return kBadArgument;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kBF16: return a.D == 128 ? launch_attention<bf16, 128>(a, s) : a.D == 64 ? launch_attention<bf16, 64>(a, s) : kBadArgument;
    case kF16: return a.D == 128 ? launch_attention<f16, 128>(a, s) : a.D == 64 ? launch_attention<f16, 64>(a, s) : kBadArgument;
    default: return kBadDtype;
  }
}

}  // namespace td
