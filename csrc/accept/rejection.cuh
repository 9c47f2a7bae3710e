// Lossless speculative sampling (accept_rejection, temperature > 0), after the scans:
//   p = softmax(float32(logits) / T) in float32 as exp(x - max) / sum (the statistics
//   come from row_scan with stats_scaled, summed in double and rounded to float32).
//   coins      accept draft i iff u * p_d(i)[x] < p_t(i)[x], u = uniform(seed, 0, i, ACCEPT,
//              offset); c = leading accepts (one CTA per row, one thread per position).
//   residual   at ci = min(c, n-1): argmax_v log(max(0, p_t - p_d)) + gumbel(seed, v, ci,
//              RESIDUAL, offset); if no v has r > 0, log(p_t) in its place.
//   finish     final = bonus (SAMPLE stream at t = n) if c == n else the residual draw;
//              tokens = drafts[:c] + final, n_accepted = c + 1, eos cut as usual.
#pragma once
#include "accept.cuh"

namespace td {

struct RejectionArgs {
  const void* target;    // [B, n+1, V] rows at b * tb + i * tt (elements)
  const void* draft;     // [B, n, V]   rows at b * db + i * dt
  int64_t tb, tt, db, dt;
  int64_t B, n, V;
  float temperature;
  const int64_t* tokens;  // draft tokens [B, n]
  const int64_t* seed;
  const int64_t* offset;
  // softmax statistics partials [B * n, nchunks] of the scaled target / draft rows
  const double *t_max, *t_sum, *d_max, *d_sum;
  int64_t nchunks;
  // coins -> residual -> finish
  int32_t* c;            // [B] leading accepts
  float* ci_stats;       // [B, 4]: target max, target sum, draft max, draft sum at row ci
  // residual partials [B, nchunks]: best of log(r)+g, best of log(p_t)+g, any r > 0
  double* r_val; int64_t* r_idx; double* p_val; int64_t* p_idx; uint8_t* r_any;
  // bonus partials [B, nb_chunks] from a SAMPLE-stream scan of row n
  const double* b_val; const int64_t* b_idx; int64_t nb_chunks;
  const int32_t* cache_lens;
  int64_t eos;
  AcceptOut out;         // out.tokens [B, n+1], out.next [B]
};

TD_HD void softmax_stats_f(const double* pm, const double* ps, int64_t nchunks, float& m, float& s) {
  SoftStats st; st.init();
  for (int64_t c = 0; c < nchunks; ++c) st.merge(pm[c], ps[c]);
  m = (float)st.m;
  s = (float)st.s;
}

template <typename T>
TD_HD float scaled_logit(const void* base, int64_t off, float T_) {
  return to_float(reinterpret_cast<const T*>(base)[off]) / T_;
}

// Does draft position i of row b pass its coin? Also returns the row statistics.
template <typename T>
TD_HD bool rejection_coin(const RejectionArgs& a, int64_t b, int64_t i, float st4[4]) {
  const int64_t p = (b * a.n + i) * a.nchunks;
  softmax_stats_f(a.t_max + p, a.t_sum + p, a.nchunks, st4[0], st4[1]);
  softmax_stats_f(a.d_max + p, a.d_sum + p, a.nchunks, st4[2], st4[3]);
  const int64_t x = a.tokens[b * a.n + i];
  const float pt = exp_f(scaled_logit<T>(a.target, b * a.tb + i * a.tt + x, a.temperature) - st4[0]) / st4[1];
  const float pd = exp_f(scaled_logit<T>(a.draft, b * a.db + i * a.dt + x, a.temperature) - st4[2]) / st4[3];
  const float u = philox_uniform(a.seed[b], 0, i, kAccept, a.offset[b]);
  return u * pd < pt;
}

// Residual scores of vocabulary entries [lo, hi) of row b at position ci.
template <typename T>
TD_HD void residual_range(const RejectionArgs& a, int64_t b, int64_t lo, int64_t hi, Best& r, Best& p, bool& any) {
  const int64_t ci = min64(a.c[b], a.n - 1);
  const float* st4 = a.ci_stats + b * 4;
  for (int64_t v = lo; v < hi; ++v) {
    const float pt = exp_f(scaled_logit<T>(a.target, b * a.tb + ci * a.tt + v, a.temperature) - st4[0]) / st4[1];
    const float pd = exp_f(scaled_logit<T>(a.draft, b * a.db + ci * a.dt + v, a.temperature) - st4[2]) / st4[3];
    const float diff = pt - pd;
    const float rv = diff > 0.0f ? diff : 0.0f;
    const float g = philox_gumbel(a.seed[b], v, ci, kResidual, a.offset[b]);
    any = any || rv > 0.0f;
    r.push((double)(log_f(rv) + g), v);
    p.push((double)(log_f(pt) + g), v);
  }
}

TD_HD void rejection_finish_row(const RejectionArgs& a, int64_t b, int64_t* scratch /* n+1 */) {
  const int64_t c = a.c[b];
  int64_t final_tok;
  if (c == a.n) {
    final_tok = combine_argmax(a.b_val + b * a.nb_chunks, a.b_idx + b * a.nb_chunks, a.nb_chunks);
  } else {
    bool any = false;
    for (int64_t k = 0; k < a.nchunks; ++k) any = any || a.r_any[b * a.nchunks + k];
    const int64_t p = b * a.nchunks;
    final_tok = any ? combine_argmax(a.r_val + p, a.r_idx + p, a.nchunks)
                    : combine_argmax(a.p_val + p, a.p_idx + p, a.nchunks);
  }
  for (int64_t j = 0; j < c; ++j) scratch[j] = a.tokens[b * a.n + j];
  scratch[c] = final_tok;
  emit_tokens(scratch, c + 1, a.n + 1, a.eos, a.out.tokens + b * (a.n + 1), a.out.n_emitted[b], a.out.hit_eos[b]);
  a.out.n_accepted[b] = (int32_t)(c + 1);
  a.out.next[b] = final_tok;
  a.out.new_cache_lens[b] = a.cache_lens[b] + (int32_t)(c + 1);
}

#if TD_CUDA
// One CTA per row b, blockDim >= n threads (n <= 1024); dynamic smem: n flags.
template <typename T>
__global__ void rejection_coins_kernel(RejectionArgs a) {
  extern __shared__ unsigned char td_coin_smem[];
  const int64_t b = blockIdx.x;
  for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
    float st4[4];
    td_coin_smem[i] = rejection_coin<T>(a, b, i, st4) ? 1 : 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t c = 0;
    while (c < a.n && td_coin_smem[c]) ++c;
    a.c[b] = (int32_t)c;
    if (a.n > 0) {
      float st4[4];
      rejection_coin<T>(a, b, min64(c, a.n - 1), st4);
      for (int k = 0; k < 4; ++k) a.ci_stats[b * 4 + k] = st4[k];
    }
  }
}

// grid = B * nchunks CTAs; chunk = a.V / nchunks rounded as the launcher decides.
template <typename T>
__global__ void rejection_residual_kernel(RejectionArgs a, int64_t chunk) {
  const int64_t b = blockIdx.x / a.nchunks, k = blockIdx.x % a.nchunks;
  const int64_t lo = k * chunk, hi = min64(lo + chunk, a.V);
  Best r; r.init();
  Best p; p.init();
  bool any = false;
  if (a.c[b] < a.n) {
    for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x) residual_range<T>(a, b, v, v + 1, r, p, any);
  }
  SoftStats unused; unused.init();
  const bool any_block = __syncthreads_or(any ? 1 : 0) != 0;
  block_reduce(r, unused, false);
  __syncthreads();
  block_reduce(p, unused, false);
  if (threadIdx.x == 0) {
    a.r_val[blockIdx.x] = r.val; a.r_idx[blockIdx.x] = r.idx;
    a.p_val[blockIdx.x] = p.val; a.p_idx[blockIdx.x] = p.idx;
    a.r_any[blockIdx.x] = any_block ? 1 : 0;
  }
}

// One thread per row; dynamic smem: blockDim * (n+1) int64 scratch.
static __global__ void rejection_finish_kernel(RejectionArgs a) {
  extern __shared__ __align__(16) unsigned char td_rej_smem[];
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b < a.B) rejection_finish_row(a, b, reinterpret_cast<int64_t*>(td_rej_smem) + threadIdx.x * (a.n + 1));
}
#endif

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::rejection_coins_kernel<td::bf16>(td::RejectionArgs);
template __global__ void td::rejection_residual_kernel<float>(td::RejectionArgs, int64_t);
#endif
