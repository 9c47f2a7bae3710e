// Storage types and scalar math usable on host and device. fp16/bf16 are plain
// 16-bit storage structs converted in software (exact), so the same code compiles
// with nvcc, NVRTC and a host compiler without cuda_fp16.h.
#pragma once
#include "macros.cuh"

#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <cstring>
#endif

namespace td {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

// 16/8-byte vector units for copies (the compiler emits one 128/64-bit access).
struct alignas(16) u128 { uint32_t x, y, z, w; };
struct alignas(8) u64v { uint32_t x, y; };

TD_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f; std::memcpy(&f, &b, 4); return f;
#endif
}

TD_HD float to_float(float x) { return x; }
TD_HD double to_double(double x) { return x; }
TD_HD float to_float(double x) { return (float)x; }
TD_HD float to_float(bf16 x) { return bits_to_float((uint32_t)x.bits << 16); }
TD_HD float to_float(f16 x) {
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: renormalise
    int e = -1;
    do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
    man &= 0x3ffu;
    return bits_to_float(sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// The value in "native" precision for exact comparisons: double only for fp64.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };
TD_HD float to_acc(float x) { return x; }
TD_HD float to_acc(bf16 x) { return to_float(x); }
TD_HD float to_acc(f16 x) { return to_float(x); }
TD_HD double to_acc(double x) { return x; }

TD_HD double neg_inf() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((long long)0xfff0000000000000ULL);
#else
  const uint64_t b = 0xfff0000000000000ULL; double d; std::memcpy(&d, &b, 8); return d;
#endif
}

TD_HD bool is_nan(float x) { return x != x; }
TD_HD bool is_nan(double x) { return x != x; }

// Separately rounded multiply / add / subtract. nvcc (and NVRTC) contract a * b + c into
// one FMA by default, rounding once where torch and the Triton kernels (fp fusion off)
// round twice; the _rn intrinsics are never contracted. The host build is not compiled
// with FMA contraction (see csrc/README.md), so plain operators round the same there.
TD_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
TD_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
TD_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

#if defined(TD_OPAQUE_MATH) && defined(__CUDA_ARCH__)
// Contraction check only (tests/cuda/test_nvcc_cpu.py, a relocatable build that is never
// linked): the math library stays behind external calls, so builds with and without
// -fmad=false differ only where this code's own arithmetic was fused.
extern "C" __device__ float td_opaque_logf(float);
extern "C" __device__ double td_opaque_log(double);
extern "C" __device__ float td_opaque_expf(float);
extern "C" __device__ double td_opaque_exp(double);
#define TD_OPAQUE 1
#else
#define TD_OPAQUE 0
#endif
TD_HD float log_f(float x) {
#if TD_OPAQUE
  return td_opaque_logf(x);
#elif TD_CUDA
  return logf(x);
#else
  return std::log(x);
#endif
}
TD_HD double log_d(double x) {
#if TD_OPAQUE
  return td_opaque_log(x);
#elif TD_CUDA
  return log(x);
#else
  return std::log(x);
#endif
}
TD_HD float exp_f(float x) {
#if TD_OPAQUE
  return td_opaque_expf(x);
#elif TD_CUDA
  return expf(x);
#else
  return std::exp(x);
#endif
}
TD_HD double exp_d(double x) {
#if TD_OPAQUE
  return td_opaque_exp(x);
#elif TD_CUDA
  return exp(x);
#else
  return std::exp(x);
#endif
}
#undef TD_OPAQUE
// Base-2 versions in the accumulator type (attention's online softmax).
TD_HD float exp2_acc(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  return std::exp2(x);
#endif
}
TD_HD double exp2_acc(double x) {
#if defined(__CUDA_ARCH__)
  return exp2(x);
#else
  return std::exp2(x);
#endif
}
TD_HD float log2_acc(float x) {
#if defined(__CUDA_ARCH__)
  return log2f(x);
#else
  return std::log2(x);
#endif
}
TD_HD double log2_acc(double x) {
#if defined(__CUDA_ARCH__)
  return log2(x);
#else
  return std::log2(x);
#endif
}

// float -> storage type, round to nearest even (NaN stays NaN).
TD_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b; std::memcpy(&b, &f, 4); return b;
#endif
}
TD_HD void store_as(double x, double* p) { *p = x; }
TD_HD void store_as(double x, float* p) { *p = (float)x; }
TD_HD void store_as(double x, bf16* p) {
  const uint32_t u = float_bits((float)x);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p->bits = (uint16_t)((u >> 16) | 0x40u); return; }
  p->bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
TD_HD void store_as(double x, f16* p) {
  const uint32_t u = float_bits((float)x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { p->bits = (uint16_t)(sign | 0x7e00u); return; }
  if (a >= 0x477ff000u) { p->bits = (uint16_t)(sign | 0x7c00u); return; }  // rounds to inf
  if (a < 0x38800000u) {  // subnormal half (or zero): value / 2^-24, round to nearest even
    const uint32_t shift = 126u - (a >> 23);  // >= 14 here
    if (shift > 24u) { p->bits = (uint16_t)sign; return; }
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    const uint32_t r = q + (rem > half || (rem == half && (q & 1u)));
    p->bits = (uint16_t)(sign | r);
    return;
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  p->bits = (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

}  // namespace td
