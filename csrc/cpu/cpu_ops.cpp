// CPU implementations of the C++ entry points: the same TD_HD per-element logic as
// the CUDA kernels, with OpenMP over rows/tokens instead of a grid.
#include <cstring>
#include <vector>

#include "../api.h"

namespace td {

// One token's features: `heads` runs of head_bytes (csrc/kv/slots.cuh).
static inline void copy_runs(char* dst, int64_t dst_stride, const char* src, int64_t src_stride, int64_t heads,
                             int64_t head_bytes) {
  for (int64_t h = 0; h < heads; ++h) std::memcpy(dst + h * dst_stride, src + h * src_stride, (size_t)head_bytes);
}

int CpuImpl::kv_write(const KvWriteArgs& a, bool commit, void*) {
  const int64_t tokens = a.B * a.T;
  const int64_t row_bytes = a.heads * a.head_bytes;
#pragma omp parallel for schedule(static) if (tokens * row_bytes > (1 << 16))
  for (int64_t tok = 0; tok < tokens; ++tok) {
    const int64_t b = tok / a.T, t = tok % a.T;
    for (int which = 0; which < 2; ++which) {
      int64_t src, dst;
      if (!kv_write_token(a, which, b, t, src, dst)) continue;
      copy_runs((which ? a.v_cache : a.k_cache) + dst, a.cache_head_stride, (which ? a.v : a.k) + src,
                a.src_head_stride[which], a.heads, a.head_bytes);
    }
  }
  if (commit)
    for (int64_t b = 0; b < a.B; ++b) kv_commit_row(const_cast<int32_t*>(a.cache_lens), a.q_lens, b);
  return kOk;
}

int CpuImpl::kv_compact(const KvCompactArgs& a, void*) {
  const int64_t jobs = a.layers * 2 * a.B;
  const int64_t row_bytes = a.heads * a.head_bytes;
#pragma omp parallel for schedule(static) if (jobs * a.n * row_bytes > (1 << 16))
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t b = job % a.B, lk = job / a.B;
    char* base = ((lk & 1) ? a.v_cache : a.k_cache) + (lk >> 1) * a.layer_stride;
    std::vector<char> stage((size_t)(a.n * row_bytes));  // all reads before writes, runs packed
    for (int64_t i = 0; i < a.n; ++i) {
      int64_t from, to;
      if (compact_source(a, b, i, from, to))
        copy_runs(stage.data() + i * row_bytes, a.head_bytes, base + slot_offset(a.cache, b, from), a.head_stride,
                  a.heads, a.head_bytes);
    }
    for (int64_t i = 0; i < a.n; ++i) {
      int64_t from, to;
      if (compact_source(a, b, i, from, to))
        copy_runs(base + slot_offset(a.cache, b, to), a.head_stride, stage.data() + i * row_bytes, a.head_bytes,
                  a.heads, a.head_bytes);
    }
  }
  return kOk;
}

int CpuImpl::paged_reserve(const PagedArgs& a, void*) { paged_reserve_all(a); return kOk; }
int CpuImpl::paged_release(const PagedArgs& a, void*) { paged_release_all(a); return kOk; }

// Greedy chunk without statistics: the same (value, index) as scan_range's element loop
// (NaN first, else the maximum, lowest index on ties) in two vectorisable passes: the
// maximum with a NaN flag (a SIMD reduction), then the first index holding it.
template <typename T>
static void greedy_range(const T* x, int64_t lo, int64_t hi, Best& best) {
  typedef typename Acc<T>::type A;
  A m = (A)neg_inf();
  bool nan = false;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t v = lo; v < hi; ++v) {
    const A f = to_acc(x[v]);
    nan |= f != f;
    m = f > m ? f : m;
  }
  for (int64_t v = lo; v < hi; ++v) {
    const A f = to_acc(x[v]);
    if (nan ? f != f : f == m) {
      best.push((double)f, v);
      return;
    }
  }
}

template <int KIND, typename T>
static void scan_cpu(const RowScanArgs& a) {
  const int64_t jobs = a.rows * a.nchunks;
  const bool with_stats = a.part_max != nullptr;
#pragma omp parallel for schedule(static) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t row = job / a.nchunks, c = job % a.nchunks;
    const int64_t lo = c * a.chunk, hi = min64(lo + a.chunk, a.V);
    Best best; best.init();
    SoftStats st; st.init();
    if (KIND == kGreedy && !with_stats)
      greedy_range(reinterpret_cast<const T*>(row_ptr(a, row, sizeof(T))), lo, hi, best);
    else
      scan_range<KIND, T>(a, row, lo, hi, best, with_stats ? &st : nullptr);
    a.part_val[job] = best.val;
    a.part_idx[job] = best.idx;
    if (with_stats) { a.part_max[job] = st.m; a.part_sum[job] = st.s; }
  }
}

int CpuImpl::row_scan(const RowScanArgs& a, int kind, int dtype, void*) {
  TD_DISPATCH_FLOAT(dtype, T, {
    switch (kind) {
      case kGreedy: scan_cpu<kGreedy, T>(a); break;
      case kSampleScore: scan_cpu<kSampleScore, T>(a); break;
      case kDiffusionScore: scan_cpu<kDiffusionScore, T>(a); break;
      default: return kBadArgument;
    }
  });
  return kOk;
}

int CpuImpl::accept_finish(const AcceptArgs& a, bool quadratic, void*) {
#pragma omp parallel for schedule(static) if (a.B > 1)
  for (int64_t b = 0; b < a.B; ++b) {
    std::vector<int64_t> best((size_t)a.R);
    for (int64_t r = 0; r < a.R; ++r) {
      const int64_t p = (b * a.R + r) * a.nchunks;
      best[(size_t)r] = combine_argmax(a.part_val + p, a.part_idx + p, a.nchunks);
    }
    if (quadratic) accept_quadratic_row(best.data(), a.draft + b * a.n, a.n, a.cache_lens[b], a.eos, a.out, b);
    else accept_linear_row(best.data(), a.draft + b * a.n, a.n, a.cache_lens[b], a.eos, a.out, b);
  }
  return kOk;
}

int CpuImpl::sample_finish(const double* part_val, const int64_t* part_idx, int64_t nchunks, int64_t rows,
                           int64_t* out, void*) {
  for (int64_t r = 0; r < rows; ++r) out[r] = combine_argmax(part_val + r * nchunks, part_idx + r * nchunks, nchunks);
  return kOk;
}

int CpuImpl::confidence_finish(const ConfArgs& a, int dtype, void*) {
  TD_DISPATCH_FLOAT(dtype, T, {
    for (int64_t r = 0; r < a.rows; ++r) confidence_row<T>(a, r);
  });
  return kOk;
}

int CpuImpl::unmask(const UnmaskArgs& a, int dtype, void*) {
  TD_DISPATCH_FLOAT(dtype, T, {
    for (int64_t b = 0; b < a.B; ++b) unmask_row<T>(a, b);
  });
  return kOk;
}

template <typename T>
static void rejection_cpu(const RejectionArgs& a, int64_t chunk) {
#pragma omp parallel for schedule(static) if (a.B > 1)
  for (int64_t b = 0; b < a.B; ++b) {
    float st4[4];
    int64_t c = 0;
    while (c < a.n && rejection_coin<T>(a, b, c, st4)) ++c;
    a.c[b] = (int32_t)c;
    if (a.n > 0) {
      rejection_coin<T>(a, b, min64(c, a.n - 1), st4);
      for (int k = 0; k < 4; ++k) a.ci_stats[b * 4 + k] = st4[k];
    }
    for (int64_t k = 0; k < a.nchunks; ++k) {
      Best r; r.init();
      Best p; p.init();
      bool any = false;
      if (c < a.n) residual_range<T>(a, b, k * chunk, min64((k + 1) * chunk, a.V), r, p, any);
      const int64_t q = b * a.nchunks + k;
      a.r_val[q] = r.val; a.r_idx[q] = r.idx; a.p_val[q] = p.val; a.p_idx[q] = p.idx; a.r_any[q] = any ? 1 : 0;
    }
    std::vector<int64_t> scratch((size_t)(a.n + 1));
    rejection_finish_row(a, b, scratch.data());
  }
}

int CpuImpl::rejection(const RejectionArgs& a, int dtype, int64_t chunk, void*) {
  TD_DISPATCH_FLOAT(dtype, T, { rejection_cpu<T>(a, chunk); });
  return kOk;
}

}  // namespace td
