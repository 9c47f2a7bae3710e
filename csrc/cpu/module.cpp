// tridiff._cpp: the "cpp" backend's compiled module (CPU, OpenMP).
#include <pybind11/stl.h>

#include <vector>

#include "../bind.h"
#include "decoder.h"

namespace td {

// decoder_layers (decoder.h): CPU only. `weights` holds 8 pointers per layer in
// DecoderLayerPtrs order (0 for an absent LoRA), `lora_ranks` one rank per layer (0: no
// LoRA); the attention arguments follow bind.h's `attention` with q/k/v/out taken from
// the scratch buffers; `threads` is the OpenMP team size of the GEMMs.
void bind_decoder(py::module_& m) {
  m.def("decoder_gemm_build", []() { return std::string(decoder_gemm_build()); });
  m.def("decoder_last_team_size", []() { return decoder_last_team_size(); });
  m.def("decoder_layers", [](int dtype, uintptr_t x, uintptr_t qkv, uintptr_t attn, uintptr_t cos, uintptr_t sin,
                             uintptr_t q_scale, const std::vector<uintptr_t>& weights,
                             const std::vector<int64_t>& lora_ranks, int64_t H, int64_t I, double eps,
                             double lora_scale, int threads, uintptr_t k_cache, uintptr_t v_cache,
                             int64_t layer_bytes, uintptr_t cache_lens, uintptr_t modes, uintptr_t mode_args,
                             uintptr_t q_lens, uintptr_t block_table, int64_t outer, int64_t token, int64_t tokens,
                             int64_t max_pages, int64_t B, int64_t Tq, int64_t Hq, int64_t Hkv, int64_t D,
                             double scale_log2, bool write_kv, int num_splits, uintptr_t ws_o, uintptr_t ws_lse,
                             uintptr_t final_norm) {
    if (weights.size() % 8 != 0) throw std::invalid_argument("decoder_layers: weights needs 8 pointers per layer");
    if (lora_ranks.size() != weights.size() / 8)
      throw std::invalid_argument("decoder_layers: lora_ranks needs one rank per layer");
    std::vector<DecoderLayerPtrs> layers(weights.size() / 8);
    for (size_t l = 0; l < layers.size(); ++l) {
      const void** dst[8] = {&layers[l].norm1, &layers[l].qkv, &layers[l].o, &layers[l].norm2,
                             &layers[l].gate_up, &layers[l].down, &layers[l].lora_a, &layers[l].lora_b};
      for (int j = 0; j < 8; ++j) *dst[j] = ptr<const void>(weights[l * 8 + j]);
      layers[l].lora_rank = lora_ranks[l];
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
