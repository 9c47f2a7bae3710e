// CPU decoder layers in one call (decoder.h). Projections are register-tiled dot products
// over the weight rows (decoder_gemm.inc), parallel over output features; the rest is
// scalar loops over a few rows. The whole build is -ffp-contract=off (csrc_build.py): the
// GEMM panels' FMA copy uses explicit fused multiply-adds (their sums are not compared bit
// for bit with torch; F.linear's BLAS uses FMAs too) and nothing else is ever contracted
// (csrc/README.md, "Rounding").
#include "decoder.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// GCC 12 at -O1 -Wall flags the self-initialised placeholder inside its own
// _mm512_undefined_* intrinsics (avx512fintrin.h) as maybe-uninitialized; the warning is
// located in the header, so it is silenced before the header is read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

// The baseline build passes 32-byte vectors between its always-inline helpers, which GCC
// notes as an ABI change without AVX: no such value crosses a function boundary that
// other code calls, so the note (an error under -Werror) is silenced for this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace td {
namespace {

// The GEMM panels (decoder_gemm.inc) twice: for AVX2+FMA (x86 with GCC or Clang, through
// the target attribute) and baseline; the first is taken when the CPU has both.
namespace avx2 {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define TD_PANEL_TARGET __attribute__((target("avx2,fma")))
#define TD_PANEL_FMA 1
#include "decoder_gemm.inc"
#include "decoder_qgemm.inc"
#undef TD_PANEL_TARGET
#undef TD_PANEL_FMA
#define TD_HAVE_AVX2_PANELS 1
#endif
}  // namespace avx2
namespace base {
#define TD_PANEL_TARGET
#define TD_PANEL_FMA 0
#include "decoder_gemm.inc"
#include "decoder_qgemm.inc"
#undef TD_PANEL_TARGET
#undef TD_PANEL_FMA
}  // namespace base
// The bf16 / int4 panels once more for AVX-512 (decoder_qgemm512.inc); fp32/fp64 stay AVX2.
namespace avx512 {
#ifdef TD_HAVE_AVX2_PANELS
#define TD_PANEL_TARGET __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
#include "decoder_qgemm512.inc"
#undef TD_PANEL_TARGET
#define TD_HAVE_AVX512_PANELS 1
#endif
}  // namespace avx512
// int4 weights x int8 activations (decoder_a8.inc): scalar, and AVX-512 VNNI.
#ifdef TD_HAVE_AVX512_PANELS
#define TD_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif
#include "decoder_a8.inc"

// Asked once, on first use (not at load: __builtin_cpu_init must have run first).
// TRIDIFF_CPU_GEMM=base forces the baseline build (how its tests reach it on AVX2 CPUs).
bool choose_avx2() {
#ifdef TD_HAVE_AVX2_PANELS
  const char* forced = std::getenv("TRIDIFF_CPU_GEMM");
  if (forced != nullptr && std::strcmp(forced, "base") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
inline bool have_avx2() {
  static const bool yes = choose_avx2();
  return yes;
}
// The bf16 / int4 panels' build: AVX-512 where the CPU has avx512f and avx512bw (and the
// AVX2 build is taken) unless TRIDIFF_CPU_GEMM=avx2 or =base forces a narrower one.
bool choose_avx512() {
#ifdef TD_HAVE_AVX512_PANELS
  const char* forced = std::getenv("TRIDIFF_CPU_GEMM");
  if (!have_avx2() || (forced != nullptr && std::strcmp(forced, "avx2") == 0)) return false;
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}
inline bool have_avx512() {
  static const bool yes = choose_avx512();
  return yes;
}
// The int4a8 panels' build: VNNI where the AVX-512 panels are taken and the CPU has
// avx512vl and avx512_vnni; else the scalar panel (same bits).
bool choose_vnni() {
#ifdef TD_VNNI_TARGET
  return have_avx512() && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}
inline bool have_vnni() {
  static const bool yes = choose_vnni();
  return yes;
}

inline void run_panel(const float* in, int64_t rows, int64_t K, const float* W, int64_t n, float* out, int64_t ldo) {
#ifdef TD_HAVE_AVX2_PANELS
  if (have_avx2()) return avx2::panel_f32(in, rows, K, W, n, out, ldo);
#endif
  base::panel_f32(in, rows, K, W, n, out, ldo);
}
inline void run_panel(const double* in, int64_t rows, int64_t K, const double* W, int64_t n, double* out,
                      int64_t ldo) {
#ifdef TD_HAVE_AVX2_PANELS
  if (have_avx2()) return avx2::panel_f64(in, rows, K, W, n, out, ldo);
#endif
  base::panel_f64(in, rows, K, W, n, out, ldo);
}

inline void run_panel_bf16(const float* xp, const float* x, int64_t rows, int64_t K, const uint16_t* W, int64_t n,
                           float* out, int64_t ldo) {
#ifdef TD_HAVE_AVX2_PANELS
  if (have_avx2()) return avx2::panel_bf16(xp, x, rows, K, W, n, out, ldo);
#endif
  base::panel_bf16(xp, x, rows, K, W, n, out, ldo);
}
inline void run_panel_int4(const float* xp, int64_t rows, int64_t K, int64_t gs, const int32_t* codes,
                           const uint16_t* scales, const int32_t* zeros, int64_t N, int64_t col, int64_t n, float* out,
                           int64_t ldo) {
#ifdef TD_HAVE_AVX2_PANELS
  if (have_avx2()) return avx2::panel_int4(xp, rows, K, gs, codes, scales, zeros, N, col, n, out, ldo);
#endif
  base::panel_int4(xp, rows, K, gs, codes, scales, zeros, N, col, n, out, ldo);
}

// A GEMM runs on the OpenMP team only from this many multiply-adds (rows x N x K) on:
// below it, waking the second thread costs more than it saves. 1 << 16 (65536 MACs, ~2.6-3.5
// us on one core at the panels' measured speed) is an estimate, not yet a measured sweep
// (bench/NOTES.md, "CPU layer stack: the parallel threshold, threads and rounding").
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;

// The largest OpenMP team a GEMM of the last stack call ran on (decoder_last_team_size).
std::atomic<int> last_team_size{0};
inline void note_team(int size) {
  if (size > last_team_size.load(std::memory_order_relaxed)) last_team_size.store(size, std::memory_order_relaxed);
}

// out[rows, N] = in[rows, K] W[N, K]^T, output features split across `threads` threads in
// chunks of 16 (a multiple of every tile width), in parallel only from kParallelMinMacs on.
// Each chunk's result is the same whichever thread computes it.
template <class Panel>
void for_chunks(int64_t rows, int64_t K, int64_t N, int threads, const Panel& panel) {
  const int64_t chunk = 16, chunks = (N + chunk - 1) / chunk;
  const bool parallel = threads > 1 && rows * N * K >= kParallelMinMacs;
#pragma omp parallel num_threads(threads) if (parallel)
  {
#ifdef _OPENMP
    if (omp_get_thread_num() == 0) note_team(omp_get_num_threads());
#else
    note_team(1);
#endif
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk, n = N - n0 < chunk ? N - n0 : chunk;
      panel(n0, n);
    }
  }
}

// out[rows, N] for the int4a8 panels: output features split into one contiguous span per
// thread (multiples of 64 features), each span walked group by group (decoder_a8.inc), in
// parallel from kParallelMinMacs on. A span's result does not depend on the split.
template <class Panel>
void for_spans(int64_t rows, int64_t K, int64_t N, int threads, const Panel& panel) {
  const bool parallel = threads > 1 && rows * N * K >= kParallelMinMacs;
#pragma omp parallel num_threads(threads) if (parallel)
  {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), team = omp_get_num_threads();
    if (t == 0) note_team((int)team);
#else
    const int64_t t = 0, team = 1;
    note_team(1);
#endif
    const int64_t blocks = (N + 63) / 64;   // whole blocks of 64 features per thread
    const int64_t b0 = blocks * t / team, b1 = blocks * (t + 1) / team;
    const int64_t n0 = 64 * b0, n1 = 64 * b1 < N ? 64 * b1 : N;
    if (n1 > n0) panel(n0, n1 - n0);
  }
}

template <typename T>
void linear(const T* in, int64_t rows, int64_t K, const T* W, int64_t N, T* out, int threads) {
  for_chunks(rows, K, N, threads, [&](int64_t n0, int64_t n) { run_panel(in, rows, K, W + n0 * K, n, out + n0, N); });
}

// The activations in the order the bf16 / int4 panels unpack weights (decoder_qgemm.inc,
// decoder_qgemm512.inc): xp [rows, K]. bf16: per `width` (16, or 32 for AVX-512) elements,
// the even ones then the odd ones.
void prep_bf16(const float* x, int64_t rows, int64_t K, float* xp, int width) {
  const int half = width / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k + width <= K; k += width)
      for (int l = 0; l < half; ++l) {
        xp[r * K + k + l] = x[r * K + k + 2 * l];
        xp[r * K + k + half + l] = x[r * K + k + 2 * l + 1];
      }
}
// AVX-512 int4: xp[128 b + 16 j + l] = x[128 b + 8 l + j] (K % 128 == 0; no power-of-two factor).
void prep_int4_512(const float* x, int64_t rows, int64_t K, float* xp) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * K;
    for (int64_t b = 0; b < K / 128; ++b)
      for (int j = 0; j < 8; ++j)
        for (int l = 0; l < 16; ++l) xp[r * K + 128 * b + 16 * j + l] = xr[128 * b + 8 * l + j];
  }
}
void prep_int4(const float* x, int64_t rows, int64_t K, float* xp) {
  static const float unscale[4] = {1.f, 1.f / 16, 1.f / 256, 1.f / 4096};   // powers of two: exact
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * K;
    for (int64_t b = 0; b < K / 64; ++b)
      for (int j = 0; j < 8; ++j)
        for (int l = 0; l < 8; ++l) xp[r * K + 64 * b + 8 * j + l] = xr[64 * b + 8 * l + j] * unscale[j % 4];
  }
}

// Scratch of the rearranged activations of one projection call (grown on demand); the
// int4a8 format's int8 activations, their per-group scales and sums.
struct ProjScratch {
  std::vector<float> xp;
  std::vector<int8_t> xq;
  std::vector<float> d;
  std::vector<int32_t> qsum;
};

// out[rows, N] = x W^T for an int4a8 weight (decoder_a8.inc).
void project_a8(const float* in, int64_t rows, int64_t K, const ProjWeight& w, int64_t N, float* out, int threads,
                ProjScratch& sc) {
  const int64_t gs = w.group_size, G = K / gs;
  if (sc.xq.size() < (size_t)(rows * K)) sc.xq.resize(rows * K);
  if (sc.d.size() < (size_t)(rows * G)) sc.d.resize(rows * G), sc.qsum.resize(rows * G);
  prep_a8(in, rows, K, gs, sc.xq.data(), sc.d.data(), sc.qsum.data());
  const int32_t* codes = static_cast<const int32_t*>(w.w);
#ifdef TD_VNNI_TARGET
  if (have_vnni())
    return for_spans(rows, K, N, threads, [&](int64_t n0, int64_t n) {
      vnni::panel_a8_vnni(sc.xq.data(), sc.d.data(), sc.qsum.data(), rows, K, gs, codes, w.scales, w.zeros, N, n0,
                          n, out, N);
    });
#endif
  for_spans(rows, K, N, threads, [&](int64_t n0, int64_t n) {
    panel_a8_scalar(sc.xq.data(), sc.d.data(), sc.qsum.data(), rows, K, gs, codes, w.scales, w.zeros, N, n0, n,
                    out, N);
  });
}

// out[rows, N] = in[rows, K] W^T for any format (bf16 and int4 with T = float only: checked
// up front by the callers).
template <typename T>
void project(const T* in, int64_t rows, int64_t K, const ProjWeight& w, int64_t N, T* out, int threads,
             ProjScratch& sc) {
  if (w.format == kProjFull) return linear(in, rows, K, static_cast<const T*>(w.w), N, out, threads);
  if constexpr (std::is_same<T, float>::value) {
    if (w.format == kProjInt4A8) return project_a8(in, rows, K, w, N, out, threads, sc);
    if (sc.xp.size() < (size_t)(rows * K)) sc.xp.resize(rows * K);
    float* xp = sc.xp.data();
    if (w.format == kProjBf16) {
      const uint16_t* W = static_cast<const uint16_t*>(w.w);
#ifdef TD_HAVE_AVX512_PANELS
      if (have_avx512()) {
        prep_bf16(in, rows, K, xp, 32);
        return for_chunks(rows, K, N, threads, [&](int64_t n0, int64_t n) {
          avx512::panel_bf16_512(xp, in, rows, K, W + n0 * K, n, out + n0, N);
        });
      }
#endif
      prep_bf16(in, rows, K, xp, 16);
      for_chunks(rows, K, N, threads,
                 [&](int64_t n0, int64_t n) { run_panel_bf16(xp, in, rows, K, W + n0 * K, n, out + n0, N); });
    } else {
      const int32_t* codes = static_cast<const int32_t*>(w.w);
#ifdef TD_HAVE_AVX512_PANELS
      if (have_avx512() && K % 128 == 0) {   // else the AVX2 copy (its blocks are 64)
        prep_int4_512(in, rows, K, xp);
        return for_chunks(rows, K, N, threads, [&](int64_t n0, int64_t n) {
          avx512::panel_int4_512(xp, rows, K, w.group_size, codes + n0 * (K / 8), w.scales, w.zeros, N, n0, n,
                                 out + n0, N);
        });
      }
#endif
      prep_int4(in, rows, K, xp);
      for_chunks(rows, K, N, threads, [&](int64_t n0, int64_t n) {
        run_panel_int4(xp, rows, K, w.group_size, codes + n0 * (K / 8), w.scales, w.zeros, N, n0, n, out + n0, N);
      });
    }
  }
}

// F.rms_norm for fp32/fp64: x * rsqrt(mean(x^2) + eps), then * weight, in T.
template <typename T>
void rms_norm(const T* x, const T* w, int64_t rows, int64_t H, double eps, T* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * H;
    T ss = 0;
    for (int64_t d = 0; d < H; ++d) ss += xr[d] * xr[d];
    const T inv = (T)1 / std::sqrt(ss / (T)H + (T)eps);
    for (int64_t d = 0; d < H; ++d) out[r * H + d] = (xr[d] * inv) * w[d];
  }
}

// tridiff.layers.rotate on the q and k heads of each row (x * cos + roll(x, D/2) * sin),
// then q *= the row's query scale.
template <typename T>
void rotary(T* qkv, int64_t rows, int64_t Hq, int64_t Hkv, int64_t D, const T* cos, const T* sin,
            const T* q_scale) {
  const int64_t width = (Hq + 2 * Hkv) * D, half = D / 2;
  std::vector<T> tmp(D);
  for (int64_t r = 0; r < rows; ++r) {
    const T* c = cos + r * D;
    const T* s = sin + r * D;
    for (int64_t h = 0; h < Hq + Hkv; ++h) {
      T* x = qkv + r * width + h * D;
      for (int64_t d = 0; d < D; ++d) tmp[d] = x[d] * c[d] + x[(d + half) % D] * s[d];
      if (h < Hq)
        for (int64_t d = 0; d < D; ++d) x[d] = tmp[d] * q_scale[r];
      else
        std::memcpy(x, tmp.data(), (size_t)D * sizeof(T));
    }
  }
}

template <typename T>
int decoder_layers(const DecoderArgs& a, int dtype) {
  const AttnArgs& at = a.attn_args;
  const int64_t rows = at.B * at.Tq, H = a.H, I = a.I, Hq = at.Hq, Hkv = at.Hkv, D = at.D;
  const int64_t width = (Hq + 2 * Hkv) * D, qd = Hq * D;
  T* x = static_cast<T*>(a.x);
  T* qkv = static_cast<T*>(a.qkv);
  T* attn = static_cast<T*>(a.attn);
  const T* cos = static_cast<const T*>(a.cos);
  const T* sin = static_cast<const T*>(a.sin);
  const T* q_scale = static_cast<const T*>(a.q_scale);
  // h: normed input; y: a sublayer's output; gu: gate|up; lo: LoRA's rank-wide middle
  int64_t max_rank = 1;
  for (int64_t l = 0; l < a.num_layers; ++l) max_rank = a.layers[l].lora_rank > max_rank ? a.layers[l].lora_rank : max_rank;
  std::vector<T> h(rows * H), y(rows * H), gu(rows * 2 * I), act(rows * I), lo(rows * max_rank);
  ProjScratch sc;
  const int nt = a.threads;
  for (int64_t l = 0; l < a.num_layers; ++l) {
    const DecoderLayerPtrs& w = a.layers[l];
    rms_norm(x, static_cast<const T*>(w.norm1), rows, H, a.eps, h.data());
    project(h.data(), rows, H, w.qkv, width, qkv, nt, sc);
    rotary(qkv, rows, Hq, Hkv, D, cos, sin, q_scale);

    AttnArgs aa = at;
    aa.q = qkv; aa.k = qkv + qd; aa.v = qkv + qd + Hkv * D;
    aa.q_sb = aa.k_sb = aa.v_sb = at.Tq * width;
    aa.q_st = aa.k_st = aa.v_st = width;
    aa.q_sh = aa.k_sh = aa.v_sh = D;
    aa.out = attn;
    aa.o_sb = at.Tq * qd; aa.o_st = qd; aa.o_sh = D;
    aa.k_cache = at.k_cache + l * a.layer_bytes;
    aa.v_cache = at.v_cache + l * a.layer_bytes;
    const int code = CpuImpl::attention(aa, dtype, nullptr);   // its argument rules: checked up front
    if (code != kOk) return code;

    project(attn, rows, qd, w.o, H, y.data(), nt, sc);
    if (w.lora_a != nullptr) {   // this layer's own rank
      linear(attn, rows, qd, static_cast<const T*>(w.lora_a), w.lora_rank, lo.data(), nt);
      linear(lo.data(), rows, w.lora_rank, static_cast<const T*>(w.lora_b), H, h.data(), nt);
      const T scale = (T)a.lora_scale;
      for (int64_t i = 0; i < rows * H; ++i) y[i] = y[i] + h[i] * scale;
    }
    for (int64_t i = 0; i < rows * H; ++i) x[i] = x[i] + y[i];

    rms_norm(x, static_cast<const T*>(w.norm2), rows, H, a.eps, h.data());
    project(h.data(), rows, H, w.gate_up, 2 * I, gu.data(), nt, sc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < I; ++i) {
        const T g = gu[r * 2 * I + i];
        act[r * I + i] = (g / ((T)1 + std::exp(-g))) * gu[r * 2 * I + I + i];
      }
    project(act.data(), rows, I, w.down, H, y.data(), nt, sc);
    for (int64_t i = 0; i < rows * H; ++i) x[i] = x[i] + y[i];
  }
  if (a.final_norm != nullptr) {
    rms_norm(x, static_cast<const T*>(a.final_norm), rows, H, a.eps, h.data());
    std::memcpy(x, h.data(), (size_t)(rows * H) * sizeof(T));
  }
  return kOk;
}

}  // namespace

const char* decoder_gemm_build() { return have_avx2() ? "avx2+fma" : "baseline"; }

const char* decoder_qgemm_build() { return have_avx512() ? "avx512" : decoder_gemm_build(); }

const char* decoder_a8_build() { return have_vnni() ? "avx512-vnni" : "scalar"; }

int decoder_last_team_size() { return last_team_size.load(std::memory_order_relaxed); }

bool proj_weight_ok(const ProjWeight& w, int64_t N, int64_t K) {
  if (w.w == nullptr || N < 1 || K < 1) return false;
  if (w.format == kProjFull || w.format == kProjBf16) return true;
  if (w.format != kProjInt4 && w.format != kProjInt4A8) return false;
  // int4a8: |sum of a group's int products| < 15 * 127 * group_size must stay below 2^24
  const int64_t multiple = w.format == kProjInt4 ? 64 : 8, largest = w.format == kProjInt4 ? K : 1024;
  return w.scales != nullptr && w.zeros != nullptr && N % 8 == 0 && w.group_size >= multiple &&
         w.group_size % multiple == 0 && w.group_size <= largest && K % w.group_size == 0;
}

int proj_linear_cpu(const ProjWeight& w, const float* x, int64_t rows, int64_t K, int64_t N, float* out,
                    int threads) {
  if (!proj_weight_ok(w, N, K) || rows < 0 || threads < 1 || x == nullptr || out == nullptr) return kBadArgument;
  if (w.format == kProjFull) return kBadDtype;
  last_team_size.store(0, std::memory_order_relaxed);
  ProjScratch sc;
  project<float>(x, rows, K, w, N, out, threads, sc);
  return kOk;
}

int decoder_layers_cpu(const DecoderArgs& a, int dtype) {
  // Every argument rule before the first write to x or the caches (the attention's own
  // included), so a refused call leaves both as they were.
  const AttnArgs& at = a.attn_args;
  if (a.num_layers < 0 || a.H <= 0 || a.I <= 0 || at.D % 2 != 0 || at.Hkv <= 0 || at.Hq <= 0 ||
      at.Hq % at.Hkv != 0 || attn_group(at) > kAttnBlockM || at.num_splits < 1 || a.threads < 1)
    return kBadArgument;
  for (int64_t l = 0; l < a.num_layers; ++l) {   // a LoRA is both pointers and a rank > 0, or none of them
    const DecoderLayerPtrs& w = a.layers[l];
    const bool has = w.lora_a != nullptr;
    if (has != (w.lora_b != nullptr) || has != (w.lora_rank > 0) || w.lora_rank < 0) return kBadArgument;
    const int64_t width = (at.Hq + 2 * at.Hkv) * at.D, qd = at.Hq * at.D;
    const ProjWeight* proj[4] = {&w.qkv, &w.o, &w.gate_up, &w.down};
    const int64_t NK[4][2] = {{width, a.H}, {a.H, qd}, {2 * a.I, a.H}, {a.H, a.I}};
    for (int p = 0; p < 4; ++p) {
      if (!proj_weight_ok(*proj[p], NK[p][0], NK[p][1])) return kBadArgument;
      if (proj[p]->format != kProjFull && dtype != kF32) return kBadDtype;
    }
  }
  last_team_size.store(0, std::memory_order_relaxed);
  if (at.B * at.Tq == 0) return kOk;
  if (dtype == kF32) return decoder_layers<float>(a, dtype);
  if (dtype == kF64) return decoder_layers<double>(a, dtype);
  return kBadDtype;
}

}  // namespace td
