// The C++ entry points shared by the CPU build (csrc/cpu) and the CUDA build
// (csrc/*/*_launch.cu). No torch and no CUDA headers: the argument structs come
// from the kernel headers (their TD_HD helpers compile as plain C++ here), the
// stream is an opaque pointer (ignored on the CPU). Every function returns a
// td::Status code; the Python bindings turn non-zero codes into exceptions.
#pragma once
#include "accept/accept.cuh"
#include "accept/rejection.cuh"
#include "accept/sample.cuh"
#include "attention/attn_tiling.cuh"
#include "kv/kv_compact.cuh"
#include "kv/kv_write.cuh"
#include "kv/paged.cuh"

namespace td {

// Elements per row_scan chunk for a dtype: 256 threads x four 16-byte loads.
inline int64_t scan_chunk(int dtype) {
  const int64_t elem = dtype == kF64 ? 8 : dtype == kF32 ? 4 : 2;
  return 256 * 4 * (16 / elem);
}

#define TD_DECLARE_IMPL(NAME)                                                            \
  struct NAME {                                                                          \
    static int kv_write(const KvWriteArgs& a, bool commit, void* stream);                \
    static int kv_compact(const KvCompactArgs& a, void* stream);                         \
    static int paged_reserve(const PagedArgs& a, void* stream);                          \
    static int paged_release(const PagedArgs& a, void* stream);                          \
    static int row_scan(const RowScanArgs& a, int kind, int dtype, void* stream);        \
    static int accept_finish(const AcceptArgs& a, bool quadratic, void* stream);         \
    static int sample_finish(const double* part_val, const int64_t* part_idx,            \
                             int64_t nchunks, int64_t rows, int64_t* out, void* stream); \
    static int confidence_finish(const ConfArgs& a, int dtype, void* stream);            \
    static int unmask(const UnmaskArgs& a, int dtype, void* stream);                     \
    static int rejection(const RejectionArgs& a, int dtype, int64_t chunk, void* stream); \
    static int attention(const AttnArgs& a, int dtype, void* stream);                    \
  };

TD_DECLARE_IMPL(CpuImpl)
TD_DECLARE_IMPL(CudaImpl)

}  // namespace td
