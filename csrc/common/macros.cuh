// Portability macros shared by the CUDA kernels, the NVRTC (cupy) build and the
// plain C++ CPU build. Per-element logic is written once as TD_HD functions; in a
// host compiler the CUDA qualifiers vanish so the same code runs under OpenMP.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define TD_CUDA 1
#define TD_HD __host__ __device__ __forceinline__
#define TD_DEVICE __device__ __forceinline__
#define TD_GLOBAL __global__
#define TD_RESTRICT __restrict__
#else
#define TD_CUDA 0
#define TD_HD inline
#define TD_DEVICE inline
#define TD_GLOBAL
#define TD_RESTRICT __restrict__
#endif

#if defined(__CUDACC_RTC__)
// NVRTC has no libc headers: the few fixed-width types we use.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#include <stddef.h>

#include <string>
#endif

namespace td {

// Error codes returned by the host launchers (0 = ok); the bindings turn them into
// Python exceptions with td::error_text.
enum Status : int {
  kOk = 0,
  kBadDtype = 1,
  kBadMode = 2,
  kTooLarge = 3,
  kLaunchFailed = 4,
  kBadArgument = 5,
};

inline const char* error_text(int code) {
  switch (code) {
    case kOk: return "ok";
    case kBadDtype: return "unsupported dtype code";
    case kBadMode: return "unsupported mode";
    case kTooLarge: return "problem too large for this kernel's shared-memory staging";
    case kLaunchFailed: return "kernel launch failed";
    case kBadArgument: return "bad argument";
    default: return "unknown error";
  }
}

#if !defined(__CUDACC_RTC__)
// What the last failed CUDA call of this thread was (kernel or API call, CUDA error name
// and text), recorded by TD_CUDA_TRY for the message of kLaunchFailed: on a first GPU run
// an invalid argument, too many resources, a missing sm_90 image and a sticky illegal
// address left by an earlier kernel must read differently.
inline std::string& failure_detail() {
  static thread_local std::string detail;
  return detail;
}

inline int record_cuda_failure(const char* what, const char* err_name, const char* err_text) {
  failure_detail() = std::string(what) + ": " + err_name + " (" + err_text + ")";
  return kLaunchFailed;
}

// error_text(code), with the recorded detail for kLaunchFailed; clears the detail.
inline std::string status_text(int code) {
  std::string text = error_text(code);
  std::string& detail = failure_detail();
  if (code == kLaunchFailed && !detail.empty()) text += ": " + detail;
  detail.clear();
  return text;
}
#endif

// Dtype codes used across the C ABI (tridiff/_ext.py keeps the same table).
enum Dtype : int { kF16 = 0, kBF16 = 1, kF32 = 2, kF64 = 3 };

TD_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
TD_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
TD_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace td

// Host-side CUDA call check for launchers: on failure, records `what` (the kernel just
// launched, or the API call) with the CUDA error and returns kLaunchFailed from the caller.
// A sticky error (illegal address) is reported by the first check after the faulting kernel.
#define TD_CUDA_TRY(expr, what)                                                                  \
  do {                                                                                           \
    const cudaError_t td_err_ = (expr);                                                          \
    if (td_err_ != cudaSuccess)                                                                  \
      return td::record_cuda_failure(what, cudaGetErrorName(td_err_), cudaGetErrorString(td_err_)); \
  } while (0)

// TD_DISPATCH_FLOAT(code, T, ...): run the body with T the storage type of dtype code.
#define TD_DISPATCH_FLOAT(code, T, ...)                      \
  switch (code) {                                            \
    case td::kF16: { typedef td::f16 T; __VA_ARGS__; break; } \
    case td::kBF16: { typedef td::bf16 T; __VA_ARGS__; break; } \
    case td::kF32: { typedef float T; __VA_ARGS__; break; }  \
    case td::kF64: { typedef double T; __VA_ARGS__; break; } \
    default: return td::kBadDtype;                           \
  }

// TD_DISPATCH_BOOL(flag, NAME, ...): turn a runtime bool into a compile-time constant.
#define TD_DISPATCH_BOOL(flag, NAME, ...)                         \
  if (flag) { constexpr bool NAME = true; __VA_ARGS__; }          \
  else { constexpr bool NAME = false; __VA_ARGS__; }

// TD_DISPATCH_MODE(mode, M, ...): attention mode (tridiff.Mode) as a template constant.
#define TD_DISPATCH_MODE(mode, M, ...)                               \
  switch (mode) {                                                    \
    case 0: { constexpr int M = 0; __VA_ARGS__; break; }             \
    case 1: { constexpr int M = 1; __VA_ARGS__; break; }             \
    case 2: { constexpr int M = 2; __VA_ARGS__; break; }             \
    case 3: { constexpr int M = 3; __VA_ARGS__; break; }             \
    case 4: { constexpr int M = 4; __VA_ARGS__; break; }             \
    default: return td::kBadMode;                                    \
  }
