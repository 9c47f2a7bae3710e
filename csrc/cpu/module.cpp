// tridiff._cpp: the "cpp" backend's compiled module (CPU, OpenMP).
#include <pybind11/stl.h>

#include <vector>

#include "../bind.h"
#include "decoder.h"

namespace td {

// One projection's weight from its data pointer and 4 integers of `meta` (format, scales
// pointer, zeros pointer, group size; decoder.h ProjWeight).
ProjWeight proj_weight(uintptr_t w, const int64_t* meta) {
  ProjWeight p;
  p.w = ptr<const void>(w);
  p.format = (int)meta[0];
  p.scales = ptr<const uint16_t>((uintptr_t)meta[1]);
  p.zeros = ptr<const int32_t>((uintptr_t)meta[2]);
  p.group_size = meta[3];
  return p;
}

// decoder_layers (decoder.h): CPU only. `weights` holds 8 pointers per layer in
// DecoderLayerPtrs order (0 for an absent LoRA), `lora_ranks` one rank per layer (0: no
// LoRA), `proj_meta` 16 integers per layer: (format, scales, zeros, group size) of qkv, o,
// gate_up and down in turn (empty: every projection full); the attention arguments follow
// bind.h's `attention` with q/k/v/out taken from the scratch buffers; `threads` is the
// OpenMP team size of the GEMMs.
void bind_decoder(py::module_& m) {
  m.def("proj_linear", [](uintptr_t w, const std::vector<int64_t>& meta, uintptr_t x, int64_t rows, int64_t K,
                          int64_t N, uintptr_t out, int threads) {
    if (meta.size() != 4) throw std::invalid_argument("proj_linear: meta needs 4 integers");
    check(proj_linear_cpu(proj_weight(w, meta.data()), ptr<const float>(x), rows, K, N, ptr<float>(out), threads),
          "proj_linear");
  });
  m.def("decoder_gemm_build", []() { return std::string(decoder_gemm_build()); });
  m.def("decoder_qgemm_build", []() { return std::string(decoder_qgemm_build()); });
  m.def("decoder_a8_build", []() { return std::string(decoder_a8_build()); });
  m.def("decoder_last_team_size", []() { return decoder_last_team_size(); });
  m.def("decoder_layers", [](int dtype, uintptr_t x, uintptr_t qkv, uintptr_t attn, uintptr_t cos, uintptr_t sin,
                             uintptr_t q_scale, const std::vector<uintptr_t>& weights,
                             const std::vector<int64_t>& lora_ranks, const std::vector<int64_t>& proj_meta,
                             int64_t H, int64_t I, double eps,
                             double lora_scale, int threads, uintptr_t k_cache, uintptr_t v_cache,
                             int64_t layer_bytes, uintptr_t cache_lens, uintptr_t modes, uintptr_t mode_args,
                             uintptr_t q_lens, uintptr_t block_table, int64_t outer, int64_t token, int64_t tokens,
                             int64_t max_pages, int64_t B, int64_t Tq, int64_t Hq, int64_t Hkv, int64_t D,
                             double scale_log2, bool write_kv, int num_splits, uintptr_t ws_o, uintptr_t ws_lse,
                             uintptr_t final_norm) {
    if (weights.size() % 8 != 0) throw std::invalid_argument("decoder_layers: weights needs 8 pointers per layer");
    if (lora_ranks.size() != weights.size() / 8)
      throw std::invalid_argument("decoder_layers: lora_ranks needs one rank per layer");
    if (!proj_meta.empty() && proj_meta.size() != weights.size() * 2)
      throw std::invalid_argument("decoder_layers: proj_meta needs 16 integers per layer (or none)");
    std::vector<DecoderLayerPtrs> layers(weights.size() / 8);
    const int64_t full[4] = {kProjFull, 0, 0, 0};
    for (size_t l = 0; l < layers.size(); ++l) {
      const uintptr_t* wl = weights.data() + l * 8;
      auto meta = [&](int p) { return proj_meta.empty() ? full : proj_meta.data() + l * 16 + 4 * p; };
      DecoderLayerPtrs& d = layers[l];
      d.norm1 = ptr<const void>(wl[0]);
      d.qkv = proj_weight(wl[1], meta(0));
      d.o = proj_weight(wl[2], meta(1));
      d.norm2 = ptr<const void>(wl[3]);
      d.gate_up = proj_weight(wl[4], meta(2));
      d.down = proj_weight(wl[5], meta(3));
      d.lora_a = ptr<const void>(wl[6]);
      d.lora_b = ptr<const void>(wl[7]);
      d.lora_rank = lora_ranks[l];
    }
    DecoderArgs a;
    a.x = ptr<void>(x); a.qkv = ptr<void>(qkv); a.attn = ptr<void>(attn);
    a.cos = ptr<const void>(cos); a.sin = ptr<const void>(sin); a.q_scale = ptr<const void>(q_scale);
    a.final_norm = ptr<const void>(final_norm);
    a.layers = layers.data(); a.num_layers = (int64_t)layers.size();
    a.H = H; a.I = I; a.eps = eps; a.lora_scale = lora_scale; a.threads = threads;
    a.layer_bytes = layer_bytes;
    AttnArgs& at = a.attn_args;
    at = AttnArgs();
    at.k_cache = ptr<char>(k_cache); at.v_cache = ptr<char>(v_cache);
    at.cache_lens = ptr<const int32_t>(cache_lens); at.modes = ptr<const int8_t>(modes);
    at.mode_args = ptr<const int32_t>(mode_args); at.q_lens = ptr<const int32_t>(q_lens);
    at.cache = layout(block_table, outer, token, tokens, max_pages);
    at.B = B; at.Tq = Tq; at.Hq = Hq; at.Hkv = Hkv; at.D = D;
    at.scale_log2 = scale_log2; at.write_kv = write_kv ? 1 : 0; at.num_splits = num_splits;
    at.ws_o = ptr<void>(ws_o); at.ws_lse = ptr<void>(ws_lse);
    check(decoder_layers_cpu(a, dtype), "decoder_layers");
  });
}

}  // namespace td

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "tridiff CPU kernels (KV cache, acceptance, sampling, attention, decoder layers)";
  td::bind_ops<td::CpuImpl>(m);
  td::bind_decoder(m);
  TD_MODULE_INFO(m)
}
