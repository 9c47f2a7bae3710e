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

TD_HD float log_f(float x) {
#if TD_CUDA
  return logf(x);
#else
  return std::log(x);
#endif
}
TD_HD double log_d(double x) {
#if TD_CUDA
  return log(x);
#else
  return std::log(x);
#endif
}
TD_HD float exp_f(float x) {
#if TD_CUDA
  return expf(x);
#else
  return std::exp(x);
#endif
}

}  // namespace td
