// Philox4x32-10 (Salmon et al., SC'11) exactly as tridiff/reference/philox.py:
// key = (seed lo, seed hi), counter = (v, t, stream, offset); first output word x;
// u = ((x >> 9) + 0.5) * 2^-23 (exact in float32); gumbel = -log(-log(u)) in float32.
#pragma once
#include "types.cuh"

namespace td {

enum Stream : uint32_t { kSample = 0, kAccept = 1, kResidual = 2, kDiffusion = 3 };

TD_HD void mulhilo32(uint32_t m, uint32_t x, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = (uint64_t)m * (uint64_t)x;
  hi = (uint32_t)(p >> 32);
  lo = (uint32_t)p;
}

TD_HD uint32_t philox_x0(int64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = (uint32_t)((uint64_t)seed & 0xffffffffu);
  uint32_t k1 = (uint32_t)(((uint64_t)seed >> 32) & 0xffffffffu);
  uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = c3;
#if TD_CUDA
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, x0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, x2, hi1, lo1);
    const uint32_t n0 = hi1 ^ x1 ^ k0;
    const uint32_t n2 = hi0 ^ x3 ^ k1;
    x0 = n0; x1 = lo1; x2 = n2; x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return x0;
}

// Counters are taken modulo 2^32 like the reference (int64 & 0xffffffff).
TD_HD float philox_uniform(int64_t seed, int64_t v, int64_t t, uint32_t stream, int64_t offset) {
  const uint32_t x = philox_x0(seed, (uint32_t)v, (uint32_t)t, stream, (uint32_t)offset);
  return ((float)(x >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

TD_HD float philox_gumbel(int64_t seed, int64_t v, int64_t t, uint32_t stream, int64_t offset) {
  const float u = philox_uniform(seed, v, t, stream, offset);
  return -log_f(-log_f(u));
}

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
// Compile-check hook (scripts/check_cuda.sh): force device code generation.
__global__ void td_check_philox(float* out, int64_t seed) {
  out[threadIdx.x] = td::philox_gumbel(seed, threadIdx.x, 1, td::kSample, 2) + td::to_float(td::bf16{1}) +
                     td::to_float(td::f16{1});
}
#endif
