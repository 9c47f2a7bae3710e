// pybind11 bindings shared by the CPU module (tridiff._cpp) and the CUDA module
// (tridiff._cuda). Python passes raw data pointers (tensor.data_ptr()), byte strides
// and the current stream as integers, so no torch header is needed here and the
// kernels can be captured in CUDA graphs (they launch on the caller's stream).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.h"

namespace td {
namespace py = pybind11;

template <typename T>
inline T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

inline void check(int code, const char* what) {
  if (code != kOk) throw std::runtime_error(std::string("tridiff ") + what + ": " + status_text(code));
}

inline CacheLayout layout(uintptr_t block_table, int64_t outer, int64_t token, int64_t tokens, int64_t max_pages) {
  CacheLayout c;
  c.outer_stride = outer;
  c.token_stride = token;
  c.tokens = tokens;
  c.block_table = ptr<const int32_t>(block_table);
  c.max_pages = max_pages;
  return c;
}

template <class Impl>
void bind_ops(py::module_& m) {
  m.def("error_text", [](int code) { return std::string(error_text(code)); });
  m.def("scan_chunk", [](int dtype) { return scan_chunk(dtype); });
  // Host Philox (the same TD_HD code the kernels run), for bit-exact tests.
  m.def("philox_x0", [](int64_t seed, int64_t c0, int64_t c1, int64_t c2, int64_t c3) {
    return philox_x0(seed, (uint32_t)c0, (uint32_t)c1, (uint32_t)c2, (uint32_t)c3);
  });
  m.def("philox_uniform", [](int64_t seed, int64_t v, int64_t t, int64_t stream, int64_t offset) {
    return philox_uniform(seed, v, t, (uint32_t)stream, offset);
  });
  m.def("kv_write", [](bool commit, uintptr_t k_cache, uintptr_t v_cache, uintptr_t k, uintptr_t v,
                       int64_t k_sb, int64_t k_st, int64_t v_sb, int64_t v_st, uintptr_t cache_lens,
                       uintptr_t q_lens, uintptr_t block_table, int64_t outer, int64_t token, int64_t tokens,
                       int64_t max_pages, int64_t B, int64_t T, int64_t heads, int64_t head_bytes,
                       int64_t k_hs, int64_t v_hs, int64_t cache_hs, uintptr_t stream) {
    KvWriteArgs a;
    a.k_cache = ptr<char>(k_cache); a.v_cache = ptr<char>(v_cache);
    a.k = ptr<const char>(k); a.v = ptr<const char>(v);
    a.src_batch_stride[0] = k_sb; a.src_token_stride[0] = k_st;
    a.src_batch_stride[1] = v_sb; a.src_token_stride[1] = v_st;
    a.cache_lens = ptr<const int32_t>(cache_lens); a.q_lens = ptr<const int32_t>(q_lens);
    a.cache = layout(block_table, outer, token, tokens, max_pages);
    a.B = B; a.T = T; a.heads = heads; a.head_bytes = head_bytes;
    a.src_head_stride[0] = k_hs; a.src_head_stride[1] = v_hs; a.cache_head_stride = cache_hs;
    check(Impl::kv_write(a, commit, ptr<void>(stream)), "kv_write");
  });
  m.def("kv_compact", [](uintptr_t k_cache, uintptr_t v_cache, int64_t layers, int64_t layer_stride,
                         uintptr_t cache_lens, uintptr_t src_index, int64_t B, int64_t n, uintptr_t block_table,
                         int64_t outer, int64_t token, int64_t tokens, int64_t max_pages, int64_t heads,
                         int64_t head_bytes, int64_t head_stride, uintptr_t stream) {
    KvCompactArgs a;
    a.k_cache = ptr<char>(k_cache); a.v_cache = ptr<char>(v_cache);
    a.layers = layers; a.layer_stride = layer_stride;
    a.cache_lens = ptr<const int32_t>(cache_lens); a.src_index = ptr<const int32_t>(src_index);
    a.B = B; a.n = n;
    a.cache = layout(block_table, outer, token, tokens, max_pages);
    a.heads = heads; a.head_bytes = head_bytes; a.head_stride = head_stride;
    check(Impl::kv_compact(a, ptr<void>(stream)), "kv_compact");
  });
  m.def("paged", [](bool reserve, uintptr_t block_table, uintptr_t free_pages, uintptr_t free_count,
                    uintptr_t lens, int64_t B, int64_t max_pages, int64_t num_free_slots, int64_t page_size,
                    uintptr_t stream) {
    PagedArgs a;
    a.block_table = ptr<int32_t>(block_table); a.free_pages = ptr<int32_t>(free_pages);
    a.free_count = ptr<int32_t>(free_count); a.lens = ptr<const int32_t>(lens);
    a.B = B; a.max_pages = max_pages; a.num_free_slots = num_free_slots; a.page_size = page_size;
    check(reserve ? Impl::paged_reserve(a, ptr<void>(stream)) : Impl::paged_release(a, ptr<void>(stream)),
          "paged");
  });
  m.def("row_scan", [](int kind, int dtype, uintptr_t logits, int64_t rows, int64_t R, int64_t t_base, int64_t V,
                       int64_t b_stride, int64_t t_stride, double temperature, bool stats_scaled, uintptr_t seed,
                       uintptr_t offset, int64_t chunk, int64_t nchunks, uintptr_t part_val, uintptr_t part_idx,
                       uintptr_t part_max, uintptr_t part_sum, uintptr_t stream) {
    RowScanArgs a;
    a.logits = ptr<const void>(logits); a.rows = rows; a.R = R; a.t_base = t_base; a.V = V;
    a.b_stride = b_stride; a.t_stride = t_stride;
    a.temperature = temperature; a.stats_scaled = stats_scaled ? 1 : 0;
    a.seed = ptr<const int64_t>(seed); a.offset = ptr<const int64_t>(offset);
    a.chunk = chunk; a.nchunks = nchunks;
    a.part_val = ptr<double>(part_val); a.part_idx = ptr<int64_t>(part_idx);
    a.part_max = ptr<double>(part_max); a.part_sum = ptr<double>(part_sum);
    check(Impl::row_scan(a, kind, dtype, ptr<void>(stream)), "row_scan");
  });
  m.def("accept_finish", [](bool quadratic, uintptr_t part_val, uintptr_t part_idx, int64_t nchunks, int64_t B,
                            int64_t R, int64_t n, uintptr_t draft, uintptr_t cache_lens, int64_t eos,
                            uintptr_t n_accepted, uintptr_t tokens, uintptr_t n_emitted, uintptr_t next,
                            uintptr_t new_cache_lens, uintptr_t hit_eos, uintptr_t stream) {
    AcceptArgs a;
    a.part_val = ptr<const double>(part_val); a.part_idx = ptr<const int64_t>(part_idx);
    a.nchunks = nchunks; a.B = B; a.R = R; a.n = n;
    a.draft = ptr<const int64_t>(draft); a.cache_lens = ptr<const int32_t>(cache_lens); a.eos = eos;
    a.out.n_accepted = ptr<int32_t>(n_accepted); a.out.tokens = ptr<int64_t>(tokens);
    a.out.n_emitted = ptr<int32_t>(n_emitted); a.out.next = ptr<int64_t>(next);
    a.out.new_cache_lens = ptr<int32_t>(new_cache_lens); a.out.hit_eos = ptr<uint8_t>(hit_eos);
    check(Impl::accept_finish(a, quadratic, ptr<void>(stream)), "accept_finish");
  });
  m.def("sample_finish", [](uintptr_t part_val, uintptr_t part_idx, int64_t nchunks, int64_t rows, uintptr_t out,
                            uintptr_t stream) {
    check(Impl::sample_finish(ptr<const double>(part_val), ptr<const int64_t>(part_idx), nchunks, rows,
                              ptr<int64_t>(out), ptr<void>(stream)), "sample_finish");
  });
  m.def("confidence_finish", [](int dtype, uintptr_t logits, int64_t rows, int64_t R, int64_t V, int64_t b_stride,
                                int64_t t_stride, uintptr_t part_val, uintptr_t part_idx, uintptr_t part_max, uintptr_t part_sum,
                                int64_t nchunks, uintptr_t x0, uintptr_t conf, uintptr_t stream) {
    ConfArgs a;
    a.logits = ptr<const void>(logits); a.rows = rows; a.R = R; a.V = V; a.b_stride = b_stride; a.t_stride = t_stride;
    a.part_val = ptr<const double>(part_val); a.part_idx = ptr<const int64_t>(part_idx);
    a.part_max = ptr<const double>(part_max); a.part_sum = ptr<const double>(part_sum);
    a.nchunks = nchunks; a.x0 = ptr<int64_t>(x0); a.conf = ptr<void>(conf);
    check(Impl::confidence_finish(a, dtype, ptr<void>(stream)), "confidence_finish");
  });
  m.def("unmask", [](int dtype, uintptr_t block, uintptr_t x0, uintptr_t conf, int64_t B, int64_t L,
                     int64_t mask_id, bool use_threshold, double threshold, uintptr_t num_transfer,
                     uintptr_t new_block, uintptr_t transferred, uintptr_t stream) {
    UnmaskArgs a;
    a.block = ptr<const int64_t>(block); a.x0 = ptr<const int64_t>(x0); a.conf = ptr<const void>(conf);
    a.B = B; a.L = L; a.mask_id = mask_id; a.use_threshold = use_threshold ? 1 : 0;
    a.threshold = threshold; a.num_transfer = ptr<const int32_t>(num_transfer);
    a.new_block = ptr<int64_t>(new_block); a.transferred = ptr<uint8_t>(transferred);
    check(Impl::unmask(a, dtype, ptr<void>(stream)), "unmask");
  });
  m.def("rejection", [](int dtype, int64_t chunk, uintptr_t target, uintptr_t draft, int64_t tb, int64_t tt,
                        int64_t db, int64_t dt, int64_t B, int64_t n, int64_t V, double temperature,
                        uintptr_t tokens, uintptr_t seed, uintptr_t offset, uintptr_t t_max, uintptr_t t_sum,
                        uintptr_t d_max, uintptr_t d_sum, int64_t nchunks, uintptr_t c, uintptr_t ci_stats,
                        uintptr_t r_val, uintptr_t r_idx, uintptr_t p_val, uintptr_t p_idx, uintptr_t r_any,
                        uintptr_t b_val, uintptr_t b_idx, int64_t nb_chunks, uintptr_t cache_lens, int64_t eos,
                        uintptr_t n_accepted, uintptr_t out_tokens, uintptr_t n_emitted, uintptr_t next,
                        uintptr_t new_cache_lens, uintptr_t hit_eos, uintptr_t stream) {
    RejectionArgs a;
    a.target = ptr<const void>(target); a.draft = ptr<const void>(draft);
    a.tb = tb; a.tt = tt; a.db = db; a.dt = dt; a.B = B; a.n = n; a.V = V;
    a.temperature = (float)temperature;
    a.tokens = ptr<const int64_t>(tokens); a.seed = ptr<const int64_t>(seed); a.offset = ptr<const int64_t>(offset);
    a.t_max = ptr<const double>(t_max); a.t_sum = ptr<const double>(t_sum);
    a.d_max = ptr<const double>(d_max); a.d_sum = ptr<const double>(d_sum); a.nchunks = nchunks;
    a.c = ptr<int32_t>(c); a.ci_stats = ptr<float>(ci_stats);
    a.r_val = ptr<double>(r_val); a.r_idx = ptr<int64_t>(r_idx); a.p_val = ptr<double>(p_val);
    a.p_idx = ptr<int64_t>(p_idx); a.r_any = ptr<uint8_t>(r_any);
    a.b_val = ptr<const double>(b_val); a.b_idx = ptr<const int64_t>(b_idx); a.nb_chunks = nb_chunks;
    a.cache_lens = ptr<const int32_t>(cache_lens); a.eos = eos;
    a.out.n_accepted = ptr<int32_t>(n_accepted); a.out.tokens = ptr<int64_t>(out_tokens);
    a.out.n_emitted = ptr<int32_t>(n_emitted); a.out.next = ptr<int64_t>(next);
    a.out.new_cache_lens = ptr<int32_t>(new_cache_lens); a.out.hit_eos = ptr<uint8_t>(hit_eos);
    check(Impl::rejection(a, dtype, chunk, ptr<void>(stream)), "rejection");
  });
  // Attention (csrc/attention): the split count the launcher should use, then the call.
  m.def("attention_num_splits", [](int64_t programs, int64_t capacity, int64_t sms) {
    return attn_num_splits(programs, capacity, sms);
  });
  m.def("attention_block_m", []() { return (int64_t)kAttnBlockM; });
  m.def("attention", [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t k_cache, uintptr_t v_cache,
                        uintptr_t out, uintptr_t cache_lens, uintptr_t modes, uintptr_t mode_args, uintptr_t q_lens,
                        uintptr_t block_table, int64_t outer, int64_t token, int64_t tokens, int64_t max_pages,
                        py::tuple strides, int64_t B, int64_t Tq, int64_t Hq, int64_t Hkv, int64_t D,
                        double scale_log2, bool write_kv, int num_splits, uintptr_t ws_o, uintptr_t ws_lse,
                        uintptr_t stream) {
    if (strides.size() != 12) throw std::invalid_argument("attention: strides needs 12 entries");
    AttnArgs a;
    a.q = ptr<const void>(q); a.k = ptr<const void>(k); a.v = ptr<const void>(v);
    a.k_cache = ptr<char>(k_cache); a.v_cache = ptr<char>(v_cache); a.out = ptr<void>(out);
    a.cache_lens = ptr<const int32_t>(cache_lens); a.modes = ptr<const int8_t>(modes);
    a.mode_args = ptr<const int32_t>(mode_args); a.q_lens = ptr<const int32_t>(q_lens);
    a.cache = layout(block_table, outer, token, tokens, max_pages);
    int64_t* dst[12] = {&a.q_sb, &a.q_st, &a.q_sh, &a.k_sb, &a.k_st, &a.k_sh,
                        &a.v_sb, &a.v_st, &a.v_sh, &a.o_sb, &a.o_st, &a.o_sh};
    for (int i = 0; i < 12; ++i) *dst[i] = strides[i].cast<int64_t>();
    a.B = B; a.Tq = Tq; a.Hq = Hq; a.Hkv = Hkv; a.D = D;
    a.scale_log2 = scale_log2; a.write_kv = write_kv ? 1 : 0; a.num_splits = num_splits;
    a.ws_o = ptr<void>(ws_o); a.ws_lse = ptr<void>(ws_lse);
    check(Impl::attention(a, dtype, ptr<void>(stream)), "attention");
  });
}

}  // namespace td

// Build provenance, generated by csrc_build.py (tridiff/_ext.py refuses a mismatched torch).
#if __has_include("td_build_info.h")
#include "td_build_info.h"
#endif
#ifndef TD_TORCH_VERSION
#define TD_TORCH_VERSION "unknown"
#endif
#ifndef TD_CUDA_VERSION
#define TD_CUDA_VERSION ""
#endif
#ifndef TD_CUDA_ARCHS
#define TD_CUDA_ARCHS ""
#endif

#define TD_MODULE_INFO(m)                                 \
  m.attr("built_torch_version") = TD_TORCH_VERSION;       \
  m.attr("built_cuda_version") = TD_CUDA_VERSION;         \
  m.attr("built_archs") = TD_CUDA_ARCHS;
