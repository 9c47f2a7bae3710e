// CPU build of the attention tiling (csrc/attention/attn_tiling.cuh): the same tiles,
// key blocks, split partition, visibility, online softmax and LSE merge as the CUDA
// kernel, with scalar loops standing in for the tensor-core MMAs. Accumulation is fp32
// (fp64 for fp64 inputs); for fp16/bf16 the probabilities are rounded to the input type
// before P V, exactly where the GPU converts them into MMA operands.
#include <cstring>
#include <vector>

#include "../api.h"

namespace td {
namespace {

template <typename T> struct IsHalf { static const bool value = false; };
template <> struct IsHalf<f16> { static const bool value = true; };
template <> struct IsHalf<bf16> { static const bool value = true; };

// The value an MMA operand of type T holds for x (identity for fp32/fp64 inputs).
template <typename T, typename A>
A round_operand(A x) {
  if (!IsHalf<T>::value) return x;
  T t;
  store_as((double)x, &t);
  return (A)to_float(t);
}

template <typename T, typename A>
struct TileScratch {
  std::vector<A> q, k, v, s, acc, m, l;
  std::vector<unsigned char> vis;
  explicit TileScratch(int64_t D)
      : q(kAttnBlockM * D), k(kAttnBlockN * D), v(kAttnBlockN * D), s(kAttnBlockM * kAttnBlockN),
        acc(kAttnBlockM * D), m(kAttnBlockM), l(kAttnBlockM), vis(kAttnBlockM * kAttnBlockN) {}
};

template <typename T, typename A>
void load_row(A* dst, const T* src, int64_t D, int64_t stride = 1) {
  for (int64_t d = 0; d < D; ++d) dst[d * stride] = to_acc(src[d]);
}

// S = Q K^T (scaled to base 2), masked; online-softmax step; acc += round(P) V.
// K is staged transposed ([D][kAttnBlockN]) so the stand-in MMA vectorises across keys
// while each score still sums over d in order; masked scores are never computed.
template <typename T, typename A>
void key_block(const AttnArgs& a, TileScratch<T, A>& w, const TileRow* rows, int nr) {
  const int64_t D = a.D;
  const A scale = (A)a.scale_log2;
  for (int r = 0; r < nr; ++r) {
    if (!rows[r].live) continue;  // no visible key: s = -inf, the step leaves m, l, acc at their initial values
    A* s = &w.s[r * kAttnBlockN];
    const unsigned char* vis = &w.vis[r * kAttnBlockN];
    for (int j = 0; j < kAttnBlockN; ++j) s[j] = 0;
    for (int64_t d = 0; d < D; ++d) {
      const A qd = w.q[r * D + d];
      const A* kd = &w.k[d * kAttnBlockN];
      for (int j = 0; j < kAttnBlockN; ++j) s[j] += qd * kd[j];
    }
    A bmax = neg_inf_acc<A>();
    for (int j = 0; j < kAttnBlockN; ++j) {
      s[j] = vis[j] ? s[j] * scale : neg_inf_acc<A>();
      bmax = s[j] > bmax ? s[j] : bmax;
    }
    const OnlineStep<A> st = online_step(w.m[r], bmax);
    A sum = 0;
    A* acc = &w.acc[r * D];
    for (int64_t d = 0; d < D; ++d) acc[d] *= st.alpha;
    for (int j = 0; j < kAttnBlockN; ++j) {
      if (s[j] == neg_inf_acc<A>()) continue;
      const A p = exp2_acc(s[j] - st.m_use);
      sum += p;
      const A pr = round_operand<T>(p);
      const A* vj = &w.v[j * D];
      for (int64_t d = 0; d < D; ++d) acc[d] += pr * vj[d];
    }
    w.l[r] = w.l[r] * st.alpha + sum;
    w.m[r] = st.m_new;
  }
}

template <typename T, typename A>
void run_tile(const AttnArgs& a, int64_t qt, int64_t b, int64_t kvh, int64_t split, TileScratch<T, A>& w) {
  const int64_t D = a.D, q0 = qt * attn_block_q(a);
  const TileMeta tm = tile_meta(a, b, q0, split);
  const int64_t es = (int64_t)sizeof(T), slab = kvh * D * es;
  // Rows r >= nr of the tile are past Tq (no output, no keys): a decoding step's tile has
  // one query position, `group` rows of 64, so every loop below stops at nr.
  const int nr = (int)(min64(attn_block_q(a), a.Tq - q0) * attn_group(a));
  TileRow rows[kAttnBlockM];
  for (int r = 0; r < nr; ++r) {
    rows[r] = tile_row(a, q0, kvh, tm.n, r);
    w.m[r] = neg_inf_acc<A>();
    w.l[r] = 0;
    for (int64_t d = 0; d < D; ++d) {
      w.acc[r * D + d] = 0;
      w.q[r * D + d] = 0;
    }
    if (rows[r].live)
      load_row(&w.q[r * D], static_cast<const T*>(a.q) + b * a.q_sb + rows[r].qpos * a.q_st + rows[r].head * a.q_sh, D);
  }
  const T* K = static_cast<const T*>(a.k);
  const T* V = static_cast<const T*>(a.v);
  if (a.write_kv && split == 0) {  // this tile's positions -> slots P + qpos (no reader of those slots)
    for (int64_t i = q0; i < min64(q0 + attn_block_q(a), tm.n); ++i) {
      const int64_t dst = slot_offset(a.cache, b, tm.P + i) + slab;
      std::memcpy(a.k_cache + dst, K + b * a.k_sb + i * a.k_st + kvh * a.k_sh, (size_t)(D * es));
      std::memcpy(a.v_cache + dst, V + b * a.v_sb + i * a.v_st + kvh * a.v_sh, (size_t)(D * es));
    }
  }
  // The key blocks: committed slots of this split (every live row sees every one), then
  // the new tokens the tile can see, under the mode's predicate.
  const int64_t nb = tile_key_blocks(tm);
  for (int64_t i = 0; i < nb; ++i) {
    const KeyBlock kb = tile_key_block(tm, i);
    for (int64_t j = 0; j < kb.nk; ++j) {
      const T* kr;
      const T* vr;
      key_rows(a, kb, b, kvh, slab, block_key(kb, j), kr, vr);
      load_row(&w.k[j], kr, D, kAttnBlockN);  // transposed
      load_row(&w.v[j * D], vr, D);
    }
    for (int r = 0; r < nr; ++r)
      for (int j = 0; j < kAttnBlockN; ++j)
        w.vis[r * kAttnBlockN + j] =
            rows[r].live && j < kb.nk &&
            (!kb.is_new || block_key_visible(tm, kb, rows[r].qpos, block_key(kb, j)));
    key_block(a, w, rows, nr);
  }
  // Epilogue: the output itself (one split) or the split's partial + log2-sum-exp.
  const int64_t ws_rows = attn_ws_rows(a);
  for (int r = 0; r < nr; ++r) {
    if (!rows[r].store) continue;
    const A inv = row_inv_l(rows[r].live, w.l[r]);
    const int64_t row = (b * a.Tq + rows[r].qpos) * a.Hq + rows[r].head;
    if (a.num_splits == 1) {
      T* o = static_cast<T*>(a.out) + b * a.o_sb + rows[r].qpos * a.o_st + rows[r].head * a.o_sh;
      for (int64_t d = 0; d < D; ++d) store_as((double)(w.acc[r * D + d] * inv), o + d);
    } else {
      A* o = static_cast<A*>(a.ws_o) + (split * ws_rows + row) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = w.acc[r * D + d] * inv;
      static_cast<A*>(a.ws_lse)[split * ws_rows + row] = row_lse(rows[r].live, w.m[r], w.l[r]);
    }
  }
}

template <typename T>
int attention_cpu(const AttnArgs& a) {
  typedef typename Acc<T>::type A;
  const int64_t tiles = attn_qtiles(a) * a.B * a.Hkv * a.num_splits;
#pragma omp parallel if (tiles > 1)
  {
    TileScratch<T, A> w(a.D);
#pragma omp for schedule(dynamic)
    for (int64_t job = 0; job < tiles; ++job) {
      int64_t x = job;
      const int64_t split = x % a.num_splits; x /= a.num_splits;
      const int64_t kvh = x % a.Hkv; x /= a.Hkv;
      const int64_t b = x % a.B;
      const int64_t qt = x / a.B;
      run_tile<T, A>(a, qt, b, kvh, split, w);
    }
  }
  if (a.num_splits > 1) {
    const int64_t rows = attn_ws_rows(a);
#pragma omp parallel for schedule(static) if (rows * a.D > (1 << 14))
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t h = row % a.Hq, t = (row / a.Hq) % a.Tq, b = row / (a.Hq * a.Tq);
      T* o = static_cast<T*>(a.out) + b * a.o_sb + t * a.o_st + h * a.o_sh;
      for (int64_t d = 0; d < a.D; ++d)
        store_as((double)merge_element(static_cast<const A*>(a.ws_o), static_cast<const A*>(a.ws_lse),
                                       (int64_t)a.num_splits, rows, row, a.D, d),
                 o + d);
    }
  }
  return kOk;
}

}  // namespace

int CpuImpl::attention(const AttnArgs& a, int dtype, void*) {
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0 || attn_group(a) > kAttnBlockM || a.num_splits < 1) return kBadArgument;
  if (a.B * a.Tq == 0) return kOk;
  TD_DISPATCH_FLOAT(dtype, T, { return attention_cpu<T>(a); });
  return kOk;
}

}  // namespace td
