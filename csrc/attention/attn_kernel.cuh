// CUDA kernels of the attention tiling (attn_tiling.cuh): tensor-core MMAs
// (mma.sync m16n8k16, fp16/bf16 operands, fp32 accumulation) over the tiles, key
// blocks and splits that the CPU build (csrc/cpu/attention_cpu.cpp) runs with scalar
// loops. Only the MMA fragments and the shared-memory staging are GPU-specific.
//
// One CTA = one tile (kAttnBlockM = 64 packed query rows of one sequence and KV head)
// x one split; 4 warps, warp w owns rows 16w..16w+15. Shared memory holds Q and two
// stages of (K block, V block) filled by cp.async (the next block loads while the
// current one is computed), rows padded by 8 elements (16 bytes) so the fragment loads of the 8
// row groups of a warp fall in distinct banks. Q fragments stay in registers for the
// whole key walk; S = Q K^T lands in mma C fragments that are re-packed in place as the
// A operand of P V (no shared-memory round trip), as in FlashAttention-2.
// C fragment of m16n8k16: lane = 4 g + t holds rows g and g + 8, columns 2t, 2t + 1.
#pragma once
#include "attn_tiling.cuh"

#if TD_CUDA
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace td {

constexpr int kAttnThreads = 128;

template <typename T> struct MmaOp;
template <> struct MmaOp<bf16> {
  static __device__ __forceinline__ void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct MmaOp<f16> {
  static __device__ __forceinline__ void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <int D>
struct AttnSmem {
  static constexpr int kLd = D + 8;  // padded row, in 16-bit elements (a multiple of 8: 16-byte rows)
  static constexpr int kBytes = (kAttnBlockM + 4 * kAttnBlockN) * kLd * 2;  // Q + 2 x (K, V)
};

// 16-byte global -> shared copy that bypasses registers (and L1); ok = false zero-fills.
__device__ __forceinline__ void cp_async16(uint16_t* dst, const uint16_t* src, bool ok) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

__device__ __forceinline__ uint32_t ld_u32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pair_u32(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

// Stage the 64-row Q tile: row j < nk from row_ptr(j) (D contiguous
// elements, 16-byte aligned; nullptr = zeros), zeros past nk, so that masked lanes
// never multiply stale data (NaN * 0 would poison the accumulators).
template <int D, class RowPtr>
__device__ __forceinline__ void stage_rows(uint16_t* dst, int64_t nk, RowPtr row_ptr) {
  constexpr int kUnits = D / 8;  // 16-byte units per row
  for (int u = threadIdx.x; u < kAttnBlockM * kUnits; u += kAttnThreads) {
    const int j = u / kUnits, c = u % kUnits;
    u128 val = {0u, 0u, 0u, 0u};
    const uint16_t* src = j < nk ? row_ptr(j) : nullptr;
    if (src != nullptr) val = reinterpret_cast<const u128*>(src)[c];
    *reinterpret_cast<u128*>(dst + j * AttnSmem<D>::kLd + c * 8) = val;
  }
}

// Per-thread state: 2 rows (g, g + 8 of the warp's 16), their online-softmax m and
// partial l (this lane's columns; summed over the 4 lanes of a row at the end), and
// the O accumulator fragments (D / 8 n-tiles).
template <int D>
struct WarpRows {
  TileRow row[2];
  float m[2], l[2];
  float o[D / 8][4];
};

// One key block: S = Q K^T (mma), mask, online-softmax step, O += P V (mma).
template <typename T, int D, bool NEW_KEYS>
__device__ __forceinline__ void attn_key_block(const uint32_t (&qf)[D / 16][4], const uint16_t* sK, const uint16_t* sV,
                                               WarpRows<D>& st, const TileMeta& tm, const KeyBlock& kb,
                                               float scale_log2) {
  constexpr int kLd = AttnSmem<D>::kLd;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float s[kAttnBlockN / 8][4];
#pragma unroll
  for (int nt = 0; nt < kAttnBlockN / 8; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint16_t* kr = sK + (nt * 8 + g) * kLd + kk * 16 + 2 * t;
      MmaOp<T>::run(s[nt], qf[kk], ld_u32(kr), ld_u32(kr + 8));
    }
  }
  float bmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < kAttnBlockN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e >> 1, key = nt * 8 + 2 * t + (e & 1);
      bool vis = st.row[h].live && key < kb.nk;
      if (NEW_KEYS) vis = vis && block_key_visible(tm, kb, st.row[h].qpos, block_key(kb, key));
      s[nt][e] = vis ? s[nt][e] * scale_log2 : -INFINITY;
      bmax[h] = fmaxf(bmax[h], s[nt][e]);
    }
  }
  float alpha[2], m_use[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bmax[h] = fmaxf(bmax[h], __shfl_xor_sync(0xffffffffu, bmax[h], 1));
    bmax[h] = fmaxf(bmax[h], __shfl_xor_sync(0xffffffffu, bmax[h], 2));
    const OnlineStep<float> os = online_step(st.m[h], bmax[h]);
    st.m[h] = os.m_new;
    alpha[h] = os.alpha;
    m_use[h] = os.m_use;
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < kAttnBlockN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e >> 1;
      s[nt][e] = exp2_acc(s[nt][e] - m_use[h]);  // masked: exp2(-inf) = 0
      sum[h] += s[nt][e];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) st.l[h] = st.l[h] * alpha[h] + sum[h];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    st.o[dt][0] *= alpha[0]; st.o[dt][1] *= alpha[0];
    st.o[dt][2] *= alpha[1]; st.o[dt][3] *= alpha[1];
  }
#pragma unroll
  for (int kk = 0; kk < kAttnBlockN / 16; ++kk) {
    uint32_t pa[4];
    pa[0] = MmaOp<T>::pack(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = MmaOp<T>::pack(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = MmaOp<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = MmaOp<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    const uint16_t* v0 = sV + (kk * 16 + 2 * t) * kLd + g;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const uint16_t* vp = v0 + dt * 8;
      MmaOp<T>::run(st.o[dt], pa, pair_u32(vp[0], vp[kLd]), pair_u32(vp[8 * kLd], vp[9 * kLd]));
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(AttnArgs a) {
  constexpr int kLd = AttnSmem<D>::kLd;
  extern __shared__ __align__(16) uint16_t attn_smem[];
  uint16_t* sQ = attn_smem;
  uint16_t* sK = sQ + kAttnBlockM * kLd;  // 2 stages of [K block | V block]
  const int64_t qtiles = attn_qtiles(a);
  const int64_t qt = qtiles - 1 - (int64_t)blockIdx.x;  // longest causal tiles first
  const int64_t b = blockIdx.y / a.Hkv, kvh = blockIdx.y % a.Hkv, split = blockIdx.z;
  const int64_t q0 = qt * attn_block_q(a);
  const TileMeta tm = tile_meta(a, b, q0, split);
  const int64_t slab = kvh * D * 2;
  const uint16_t* Q = static_cast<const uint16_t*>(a.q);
  const uint16_t* K = static_cast<const uint16_t*>(a.k);
  const uint16_t* V = static_cast<const uint16_t*>(a.v);

  // Q tile (zeros for rows that do not attend).
  stage_rows<D>(sQ, kAttnBlockM, [&](int r) -> const uint16_t* {
    const TileRow tr = tile_row(a, q0, kvh, tm.n, r);
    return tr.live ? Q + b * a.q_sb + tr.qpos * a.q_st + tr.head * a.q_sh : nullptr;
  });
  __syncthreads();

  if (a.write_kv && split == 0) {  // this tile's positions -> slots P + qpos; nobody reads those slots here
    const int64_t hi = min64(q0 + attn_block_q(a), tm.n);
    constexpr int kUnits = D / 8;
    for (int64_t u = threadIdx.x; u < (hi - q0) * kUnits * 2; u += kAttnThreads) {
      const int64_t which = u / ((hi - q0) * kUnits), rem = u % ((hi - q0) * kUnits);
      const int64_t i = q0 + rem / kUnits, c = rem % kUnits;
      const int64_t dst = slot_offset(a.cache, b, tm.P + i) + slab;
      const uint16_t* src = which ? V + b * a.v_sb + i * a.v_st + kvh * a.v_sh : K + b * a.k_sb + i * a.k_st + kvh * a.k_sh;
      reinterpret_cast<u128*>((which ? a.v_cache : a.k_cache) + dst)[c] = reinterpret_cast<const u128*>(src)[c];
    }
  }

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint16_t* q_lo = sQ + (warp * 16 + g) * kLd + kk * 16 + 2 * t;
    qf[kk][0] = ld_u32(q_lo);
    qf[kk][1] = ld_u32(q_lo + 8 * kLd);
    qf[kk][2] = ld_u32(q_lo + 8);
    qf[kk][3] = ld_u32(q_lo + 8 * kLd + 8);
  }
  WarpRows<D> st;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st.row[h] = tile_row(a, q0, kvh, tm.n, warp * 16 + g + 8 * h);
    st.m[h] = -INFINITY;
    st.l[h] = 0.f;
  }
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) st.o[dt][0] = st.o[dt][1] = st.o[dt][2] = st.o[dt][3] = 0.f;
  const float scale = (float)a.scale_log2;

  // The key blocks (committed slots of this split, then new tokens), loads pipelined
  // two stages deep: block i + 1 streams in (cp.async) while block i is computed.
  const int64_t nb = tile_key_blocks(tm);
  auto issue = [&](int64_t i) {
    const KeyBlock kb = tile_key_block(tm, i);
    uint16_t* dK = sK + (i & 1) * 2 * kAttnBlockN * kLd;
    uint16_t* dV = dK + kAttnBlockN * kLd;
    constexpr int kUnits = D / 8;
    for (int u = threadIdx.x; u < kAttnBlockN * kUnits; u += kAttnThreads) {
      const int j = u / kUnits, c = u % kUnits;
      const bool ok = j < kb.nk;
      const int64_t key = block_key(kb, ok ? j : 0);  // rows past nk: zero-filled from a valid address
      const uint16_t *kr, *vr;
      key_rows(a, kb, b, kvh, slab, key, kr, vr);
      cp_async16(dK + j * kLd + c * 8, kr + c * 8, ok);
      cp_async16(dV + j * kLd + c * 8, vr + c * 8, ok);
    }
  };
  if (nb > 0) issue(0);
  cp_async_commit();
  for (int64_t i = 0; i < nb; ++i) {
    if (i + 1 < nb) issue(i + 1);  // its stage was last read in iteration i - 1 (barrier below)
    cp_async_commit();
    cp_async_wait_one();           // block i has landed (this thread's copies)
    __syncthreads();               // ... and everyone's
    const KeyBlock kb = tile_key_block(tm, i);
    const uint16_t* cK = sK + (i & 1) * 2 * kAttnBlockN * kLd;
    if (kb.is_new) attn_key_block<T, D, true>(qf, cK, cK + kAttnBlockN * kLd, st, tm, kb, scale);
    else attn_key_block<T, D, false>(qf, cK, cK + kAttnBlockN * kLd, st, tm, kb, scale);
    __syncthreads();               // stage i & 1 is free for block i + 2
  }

  // Epilogue: full row sums, then the output (one split) or partial + log2-sum-exp.
  const int64_t ws_rows = attn_ws_rows(a);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = st.l[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const TileRow& tr = st.row[h];
    if (!tr.store) continue;
    const float inv = row_inv_l(tr.live, l);
    if (a.num_splits == 1) {
      uint16_t* o = static_cast<uint16_t*>(a.out) + b * a.o_sb + tr.qpos * a.o_st + tr.head * a.o_sh;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(o + dt * 8 + 2 * t) =
            MmaOp<T>::pack(st.o[dt][2 * h] * inv, st.o[dt][2 * h + 1] * inv);
    } else {
      const int64_t row = (b * a.Tq + tr.qpos) * a.Hq + tr.head;
      float* o = static_cast<float*>(a.ws_o) + (split * ws_rows + row) * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<float2*>(o + dt * 8 + 2 * t) = make_float2(st.o[dt][2 * h] * inv, st.o[dt][2 * h + 1] * inv);
      if (t == 0) static_cast<float*>(a.ws_lse)[split * ws_rows + row] = row_lse(tr.live, st.m[h], l);
    }
  }
}

// LSE merge: one CTA per output row (b, t, h), one thread per element.
template <typename T>
__global__ void attention_merge_kernel(AttnArgs a) {
  const int64_t rows = attn_ws_rows(a), row = blockIdx.x;
  const int64_t h = row % a.Hq, tq = (row / a.Hq) % a.Tq, b = row / (a.Hq * a.Tq);
  T* o = static_cast<T*>(a.out) + b * a.o_sb + tq * a.o_st + h * a.o_sh;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x)
    store_as((double)merge_element(static_cast<const float*>(a.ws_o), static_cast<const float*>(a.ws_lse),
                                   (int64_t)a.num_splits, rows, row, a.D, d),
             o + d);
}

}  // namespace td

#if defined(TD_CHECK_INSTANTIATE)
template __global__ void td::attention_kernel<td::bf16, 128>(td::AttnArgs);
template __global__ void td::attention_kernel<td::f16, 64>(td::AttnArgs);
template __global__ void td::attention_merge_kernel<td::bf16>(td::AttnArgs);
#endif
#endif  // TD_CUDA
