// Acceptance of a drafted block (docs/spec.md section 3), phase 2 after row_scan:
//   linear     ar[i] = best of verify row i; c = leading i < n with ar[i] == draft[i];
//              n_accepted = c + 1, tokens = ar[:c+1], next_token = ar[c].
//   quadratic  logits viewed [L, L+1, V]; pred[a, 1] := pred[a, 0];
//              n_accepted = 1 + leading a <= L-2 with pred[a, 0] == draft[a+1];
//              tokens = draft[:acc]; next_draft = pred[acc-1, 1:].
// Both cut the emitted tokens after the first eos (inclusive) and pad with -1.
// The prefix logic is TD_HD and shared with the CPU build.
#pragma once
#include "rowscan.cuh"

namespace td {

struct AcceptOut {
  int32_t* n_accepted;      // [B]
  int64_t* tokens;          // [B, tokens_width]
  int32_t* n_emitted;       // [B]
  int64_t* next;            // [B] (linear) or [B, L] (quadratic next_draft)
  int32_t* new_cache_lens;  // [B]
  uint8_t* hit_eos;         // [B] (torch.bool storage)
};

// tokens[j] = src[j] for j < emitted, else -1; emitted = acc cut after the first eos.
TD_HD void emit_tokens(const int64_t* src, int64_t acc, int64_t width, int64_t eos, int64_t* tokens,
                       int32_t& n_emitted, uint8_t& hit) {
  int64_t emitted = acc;
  hit = 0;
  if (eos >= 0) {
    for (int64_t j = 0; j < acc; ++j) {
      if (src[j] == eos) { emitted = j + 1; hit = 1; break; }
    }
  }
  for (int64_t j = 0; j < width; ++j) tokens[j] = j < emitted ? src[j] : -1;
  n_emitted = (int32_t)emitted;
}

// ar: [n+1] best tokens of the verify rows; draft: [n].
TD_HD void accept_linear_row(const int64_t* ar, const int64_t* draft, int64_t n, int32_t cache_len,
                             int64_t eos, const AcceptOut& o, int64_t b) {
  int64_t c = 0;
  while (c < n && ar[c] == draft[c]) ++c;
  const int64_t acc = c + 1;
  emit_tokens(ar, acc, n + 1, eos, o.tokens + b * (n + 1), o.n_emitted[b], o.hit_eos[b]);
  o.n_accepted[b] = (int32_t)acc;
  o.next[b] = ar[c];
  o.new_cache_lens[b] = cache_len + (int32_t)acc;
}

// pred: [L, L+1] row-major best tokens (slot 1 is overridden by slot 0 here); draft: [L].
TD_HD void accept_quadratic_row(const int64_t* pred, const int64_t* draft, int64_t L, int32_t cache_len,
                                int64_t eos, const AcceptOut& o, int64_t b) {
  int64_t acc = 1;
  while (acc - 1 <= L - 2 && pred[(acc - 1) * (L + 1)] == draft[acc]) ++acc;
  emit_tokens(draft, acc, L, eos, o.tokens + b * L, o.n_emitted[b], o.hit_eos[b]);
  const int64_t* src = pred + (acc - 1) * (L + 1);
  for (int64_t j = 0; j < L; ++j) o.next[b * L + j] = j == 0 ? src[0] : src[j + 1];
  o.n_accepted[b] = (int32_t)acc;
  o.new_cache_lens[b] = cache_len + (int32_t)acc;
}

struct AcceptArgs {
  const double* part_val;  // [B * R, nchunks]
  const int64_t* part_idx;
  int64_t nchunks;
  int64_t B, R;            // R verify rows per batch item: n+1 (linear) or L*(L+1) (quadratic)
  int64_t n;               // drafts per row: n (linear) or L (quadratic)
  const int64_t* draft;    // [B, n]
  const int32_t* cache_lens;
  int64_t eos;
  AcceptOut out;
};

#if TD_CUDA
// One CTA per batch row; dynamic shared memory holds the R best tokens.
template <bool QUADRATIC>
__device__ __forceinline__ void accept_finish_body(const AcceptArgs& a) {
  extern __shared__ __align__(16) unsigned char td_accept_smem[];
  int64_t* best = reinterpret_cast<int64_t*>(td_accept_smem);
  const int64_t b = blockIdx.x;
  for (int64_t r = threadIdx.x; r < a.R; r += blockDim.x) {
    const int64_t p = (b * a.R + r) * a.nchunks;
    best[r] = combine_argmax(a.part_val + p, a.part_idx + p, a.nchunks);
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (QUADRATIC) accept_quadratic_row(best, a.draft + b * a.n, a.n, a.cache_lens[b], a.eos, a.out, b);
  else accept_linear_row(best, a.draft + b * a.n, a.n, a.cache_lens[b], a.eos, a.out, b);
}

template <bool QUADRATIC>
__global__ void accept_finish_kernel(AcceptArgs a) { accept_finish_body<QUADRATIC>(a); }
#endif

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE) && TD_CUDA
template __global__ void td::accept_finish_kernel<true>(td::AcceptArgs);
template __global__ void td::accept_finish_kernel<false>(td::AcceptArgs);
#endif
