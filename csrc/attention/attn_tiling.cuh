// Mode-switchable attention over a KV cache (docs/spec.md section 2): the tiling, written
// once as TD_HD logic shared by the CUDA kernel (attn_kernel.cuh) and the CPU build
// (csrc/cpu/attention_cpu.cpp), so the CPU tests check the very key ranges, split
// partition, visibility, online-softmax steps and LSE merge the GPU runs.
//
// Work unit ("tile"): kBlockM query rows of one sequence b and one KV head, packed as
// block_q = kBlockM / group consecutive query positions x the group query heads that
// share the KV head (GQA), so each K/V key block is read once for all of them; times
// one split of the committed cache. Keys are walked in kBlockN blocks in two phases:
//   1. committed slots [0, P): the split's chunk of them (every live row sees all);
//   2. new tokens from k/v, last split only, over the keys the tile's rows can see:
//      [0, q_last] (CAUSAL), all (BIDIR_BLOCK, CAUSAL_THEN_BIDIR's last K rows), and
//      for QUADRATIC(L) only the d slots up to the tile's last sub-block (stride L+1)
//      plus the tile's own sub-blocks without their d slots, so a QUADRATIC tile never
//      walks the hidden sub-blocks between; for ANCHORED_QUADRATIC (tridiff/modes.py)
//      the clean keys [0, max(last clean row, a_{g_hi})] plus the tile's own mask groups
//      g_lo..g_hi, never the groups between; the per-element predicate masks the rest.
// Softmax is online in base 2 (scores pre-scaled by softmax_scale * log2 e). One split
// writes the output; several write normalised partials + log2-sum-exp to a workspace
// that merge_element combines.
#pragma once
#include "../kv/slots.cuh"

namespace td {

constexpr int kAttnBlockM = 64;        // query rows per tile (4 warps x 16 on the GPU)
constexpr int kAttnBlockN = 64;        // keys per block
constexpr int kAttnMinKeysPerSplit = 256;
constexpr int kAttnMaxSplits = 128;

enum AttnMode : int { kCausal = 0, kBidirBlock = 1, kQuadratic = 2, kCausalThenBidir = 3, kAnchoredQuadratic = 4 };

TD_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// ANCHORED_QUADRATIC's a_g: the (g+1)-th set bit of the anchor mask (a plain loop, run
// once per tile; the per-key test counts the anchors below a key instead).
TD_HD int64_t anchor_bit(uint32_t bits, int64_t g) {
  for (int b = 0; b < 32; ++b)
    if ((bits >> b) & 1u) {
      if (g == 0) return b;
      --g;
    }
  return 31;  // g >= popcount: not a row of a valid call
}

struct AttnArgs {
  const void* q;      // [B, Tq, Hq, D]   element strides q_s*
  const void* k;      // [B, Tq, Hkv, D]
  const void* v;
  char* k_cache;      // contiguous or paged, [Hkv, D] slab per token; layout `cache` (bytes)
  char* v_cache;
  void* out;          // [B, Tq, Hq, D]
  const int32_t* cache_lens;
  const int8_t* modes;
  const int32_t* mode_args;
  const int32_t* q_lens;
  CacheLayout cache;
  int64_t q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh;
  int64_t B, Tq, Hq, Hkv, D;
  double scale_log2;  // softmax_scale * log2(e)
  int write_kv;
  int num_splits;
  void* ws_o;         // [num_splits, B*Tq*Hq, D] accumulator type (num_splits > 1)
  void* ws_lse;       // [num_splits, B*Tq*Hq]
};

TD_HD int64_t attn_group(const AttnArgs& a) { return a.Hq / a.Hkv; }
TD_HD int64_t attn_block_q(const AttnArgs& a) { return kAttnBlockM / attn_group(a); }
TD_HD int64_t attn_qtiles(const AttnArgs& a) { return ceil_div(a.Tq, attn_block_q(a)); }
TD_HD int64_t attn_ws_rows(const AttnArgs& a) { return a.B * a.Tq * a.Hq; }

// Splits of the committed cache: only when the tiles alone cannot fill the machine
// (`sms` stand-ins: SM count on the GPU, thread count on the CPU), each split keeping
// >= kAttnMinKeysPerSplit keys so its fixed cost (Q load, partial write, merge) stays
// small. Sized from the capacity, never from cache_lens: no host sync.
TD_HD int64_t attn_num_splits(int64_t programs, int64_t capacity, int64_t sms) {
  if (programs <= 0 || programs >= sms) return 1;
  const int64_t want = ceil_div(sms, programs);
  return max64(1, min64(min64(want, capacity / kAttnMinKeysPerSplit), kAttnMaxSplits));
}

// Row r of a tile: query position q0 + r / group, head kvh * group + r % group.
struct TileRow {
  int64_t qpos, head;
  bool live;   // a real query row (qpos < n): it attends
  bool store;  // an output row (qpos < Tq): it is written (zeros when not live)
};

TD_HD TileRow tile_row(const AttnArgs& a, int64_t q0, int64_t kvh, int64_t n, int r) {
  const int64_t group = attn_group(a), bq = attn_block_q(a);
  TileRow t;
  const int64_t pi = r / group;
  t.qpos = q0 + pi;
  t.head = kvh * group + r % group;
  t.store = pi < bq && t.qpos < a.Tq;
  t.live = t.store && t.qpos < n;
  return t;
}

// Per-sequence scalars of a tile.
struct TileMeta {
  int64_t P, n, arg;
  int64_t lq;  // ANCHORED_QUADRATIC's L = n / (popcount(mask) + 1); 1 in other modes
  int mode;
  int64_t c_lo, c_hi;  // committed slots of this split
  // New keys this tile walks (none unless last split): n1 keys 0, step1, 2 step1, ...,
  // then n2 keys lo2, lo2 + 1, ... (QUADRATIC's own sub-blocks minus their d slots,
  // ANCHORED_QUADRATIC's own mask groups).
  int64_t n1, step1, lo2, n2;
};

// The split partition of [0, P): chunks of whole key blocks, ceil(P / S) rounded up.
TD_HD int64_t split_chunk(int64_t P, int64_t splits) {
  return ceil_div(ceil_div(P, splits), kAttnBlockN) * kAttnBlockN;
}

TD_HD TileMeta tile_meta(const AttnArgs& a, int64_t b, int64_t q0, int64_t split) {
  TileMeta m;
  m.P = a.cache_lens[b];
  m.n = a.q_lens[b];
  m.mode = (int)a.modes[b];
  m.arg = a.mode_args[b];
  m.lq = 1;
  if (m.mode == kAnchoredQuadratic) m.lq = max64(1, m.n / (popcount32((uint32_t)m.arg) + 1));
  const bool live = q0 < m.n;
  const int64_t chunk = split_chunk(m.P, a.num_splits);
  m.c_lo = split * chunk;
  m.c_hi = live ? max64(m.c_lo, min64(m.P, m.c_lo + chunk)) : m.c_lo;
  m.n1 = m.n2 = m.lo2 = 0;
  m.step1 = 1;
  if (live && split == a.num_splits - 1) {
    const int64_t q_last = min64(q0 + attn_block_q(a), m.n) - 1;
    if (m.mode == kBidirBlock || (m.mode == kCausalThenBidir && q_last >= m.n - m.arg)) {
      m.n1 = m.n;
    } else if (m.mode == kQuadratic) {
      // sub-block a = [d_a, MASK x L]: a row sees the d slots of sub-blocks <= its own and,
      // unless it is a d slot itself, its own sub-block (a d-slot last row needs no own keys).
      const int64_t sub = m.arg + 1, a_lo = q0 / sub, a_hi = q_last / sub;
      const int64_t a_own = a_hi - (q_last % sub == 0 ? 1 : 0);
      m.n1 = a_hi + 1;
      m.step1 = sub;
      m.lo2 = a_lo * sub;
      m.n2 = a_own >= a_lo ? min64(m.n, (a_own + 1) * sub) - m.lo2 : 0;
    } else if (m.mode == kAnchoredQuadratic) {
      // rows 0..L-1 clean (group -1), then mask groups of L rows: anchors grow with the
      // group, so the tile's clean keys end at its last clean row or at a_{g_hi}.
      const int64_t L = m.lq, g_lo = max64(q0 / L - 1, 0), g_hi = q_last / L - 1;
      int64_t c_last = q0 < L ? min64(q_last, L - 1) : -1;
      if (g_hi >= 0) {
        c_last = max64(c_last, anchor_bit((uint32_t)m.arg, g_hi));
        m.lo2 = (g_lo + 1) * L;
        m.n2 = (g_hi - g_lo + 1) * L;
      }
      m.n1 = c_last + 1;
    } else {
      m.n1 = q_last + 1;  // causal rows: keys up to the tile's last row
    }
  }
  return m;
}

// The tile's key walk as one sequence of blocks (the GPU pipelines its loads along it):
// blocks [0, nb_cache) cover the split's committed slots, the rest the new keys.
struct KeyBlock {
  bool is_new;    // new tokens (from k/v, masked by the mode) or committed slots
  bool skip_d;    // second new-key range: QUADRATIC drops its d slots there (walked strided)
  int64_t start;  // first key: a cache position, or a new-token index
  int64_t step;   // key j of the block is start + j * step
  int64_t nk;     // keys in this block (<= kAttnBlockN)
};

TD_HD int64_t tile_cache_blocks(const TileMeta& m) { return ceil_div(m.c_hi - m.c_lo, kAttnBlockN); }
TD_HD int64_t tile_key_blocks(const TileMeta& m) {
  return tile_cache_blocks(m) + ceil_div(m.n1, kAttnBlockN) + ceil_div(m.n2, kAttnBlockN);
}

TD_HD KeyBlock tile_key_block(const TileMeta& m, int64_t i) {
  KeyBlock k;
  const int64_t nc = tile_cache_blocks(m), nb1 = ceil_div(m.n1, kAttnBlockN);
  k.is_new = i >= nc;
  k.skip_d = i >= nc + nb1;
  if (!k.is_new) {
    k.start = m.c_lo + i * kAttnBlockN;
    k.step = 1;
    k.nk = min64(kAttnBlockN, m.c_hi - k.start);
  } else if (!k.skip_d) {
    const int64_t t0 = (i - nc) * kAttnBlockN;
    k.start = t0 * m.step1;
    k.step = m.step1;
    k.nk = min64(kAttnBlockN, m.n1 - t0);
  } else {
    const int64_t t0 = (i - nc - nb1) * kAttnBlockN;
    k.start = m.lo2 + t0;
    k.step = 1;
    k.nk = min64(kAttnBlockN, m.n2 - t0);
  }
  return k;
}

// Key j of a block (a cache slot or a new-token index).
TD_HD int64_t block_key(const KeyBlock& k, int64_t j) { return k.start + j * k.step; }

// The K and V rows (element type E, head kvh of sequence b) of key `key` of block kb:
// new tokens from k/v, committed slots from the cache (slab = the head's byte offset).
template <typename E>
TD_HD void key_rows(const AttnArgs& a, const KeyBlock& kb, int64_t b, int64_t kvh, int64_t slab, int64_t key,
                    const E*& kr, const E*& vr) {
  if (kb.is_new) {
    kr = static_cast<const E*>(a.k) + b * a.k_sb + key * a.k_st + kvh * a.k_sh;
    vr = static_cast<const E*>(a.v) + b * a.v_sb + key * a.v_st + kvh * a.v_sh;
  } else {
    const int64_t off = slot_offset(a.cache, b, key) + slab;
    kr = reinterpret_cast<const E*>(a.k_cache + off);
    vr = reinterpret_cast<const E*>(a.v_cache + off);
  }
}

// docs/spec.md section 2 among new tokens: may live new row i see new key jn (both < n)?
// lq: ANCHORED_QUADRATIC's L (TileMeta::lq).
TD_HD bool new_key_visible(int mode, int64_t arg, int64_t n, int64_t lq, int64_t i, int64_t jn) {
  if (jn >= n) return false;
  switch (mode) {
    case kAnchoredQuadratic: {
      // n <= 32 * 33: 32-bit division. Clean row i < L: clean keys j <= i. Mask row of
      // group g: clean key j iff j <= a_g, i.e. at most g anchors lie below j; and the
      // keys of its own group.
      const int L = (int)lq, r = (int)i, j = (int)jn, g = r / L - 1;
      if (g < 0) return j <= r;
      if (j < L) return popcount32((uint32_t)arg & ((1u << j) - 1u)) <= g;
      return j / L == r / L;
    }
    case kBidirBlock: return true;
    case kQuadratic: {
      const int64_t sub = arg + 1;
      const int64_t ra = i / sub, rb = i % sub, ka = jn / sub, kb = jn % sub;
      return (kb == 0 && ka <= ra) || (rb != 0 && ka == ra);
    }
    case kCausalThenBidir: return i >= n - arg || jn <= i;
    default: return jn <= i;
  }
}

// Does live row i count new key j = block_key(k, .) of block k (the predicate, minus the
// d slots a strided block already counted)?
TD_HD bool block_key_visible(const TileMeta& m, const KeyBlock& k, int64_t i, int64_t jn) {
  if (k.skip_d && m.mode == kQuadratic && jn % (m.arg + 1) == 0) return false;
  return new_key_visible(m.mode, m.arg, m.n, m.lq, i, jn);
}

// One key block of online softmax for one row, given the block's max scaled score
// (-inf when the row sees nothing in it). m stays -inf until the row sees a key; then
// m_use = 0 so that no inf - inf appears. p_j = exp2(s_j - m_use), l = l * alpha + sum p,
// acc = acc * alpha + p V.
template <typename A>
struct OnlineStep {
  A m_new, m_use, alpha;
};

template <typename A>
TD_HD A neg_inf_acc() { return (A)neg_inf(); }

template <typename A>
TD_HD OnlineStep<A> online_step(A m_old, A block_max) {
  OnlineStep<A> s;
  s.m_new = m_old > block_max ? m_old : block_max;
  s.m_use = s.m_new == neg_inf_acc<A>() ? (A)0 : s.m_new;
  s.alpha = exp2_acc(m_old - s.m_use);  // m_old = -inf -> 0
  return s;
}

// Epilogue of one row: normalised output (0 for rows with no visible key) and its
// log2-sum-exp (-inf then).
template <typename A>
TD_HD A row_inv_l(bool live, A l) { return (live && l > (A)0) ? (A)1 / l : (A)0; }
template <typename A>
TD_HD A row_lse(bool live, A m, A l) { return (live && l > (A)0) ? m + log2_acc(l) : neg_inf_acc<A>(); }

// LSE merge of the split partials of workspace row `row`, element d. Splits that saw
// no key wrote lse = -inf and are skipped (their o is never read).
template <typename A>
TD_HD A merge_element(const A* ws_o, const A* ws_lse, int64_t splits, int64_t ws_rows, int64_t row,
                      int64_t D, int64_t d) {
  A m = neg_inf_acc<A>();
  for (int64_t s = 0; s < splits; ++s) {
    const A x = ws_lse[s * ws_rows + row];
    m = x > m ? x : m;
  }
  if (m == neg_inf_acc<A>()) return (A)0;
  A total = 0, acc = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const A x = ws_lse[s * ws_rows + row];
    if (x == neg_inf_acc<A>()) continue;
    const A w = exp2_acc(x - m);
    total += w;
    acc += w * ws_o[(s * ws_rows + row) * D + d];
  }
  return acc / total;
}

}  // namespace td
