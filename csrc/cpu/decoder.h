// A whole stack of decoder layers in one CPU call (csrc/cpu/decoder_cpu.cpp): RMS norm,
// the fused q/k/v GEMM, rotary and the llama-4 query scale, attention over the KV cache
// (the csrc/attention tiling, CpuImpl::attention, every mode and cache layout), o_proj
// with the optional LoRA delta, the residual, RMS norm, the fused gate/up GEMM, SiLU
// gating, down_proj and the residual; then optionally the final RMS norm. The per-op host cost of the same forward written
// op by op (tridiff.layers) is most of a decoding step at small model sizes on CPU.
// Reference: tridiff/reference/decoder.py. No torch header.
#pragma once
#include <cstdint>

#include "../api.h"

namespace td {

// One layer's weights, row-major [out, in] like torch.nn.functional.linear's weight.
struct DecoderLayerPtrs {
  const void* norm1;    // [H]        input_layernorm
  const void* qkv;      // [(Hq + 2 Hkv) D, H]  q, k, v row blocks
  const void* o;        // [H, Hq D]
  const void* norm2;    // [H]        post_attention_layernorm
  const void* gate_up;  // [2 I, H]   gate, up row blocks
  const void* down;     // [H, I]
  const void* lora_a;   // [rank, Hq D] or nullptr
  const void* lora_b;   // [H, rank]    or nullptr
  int64_t lora_rank;    // this layer's rank (PEFT adapters may differ per layer); 0 without LoRA
};

struct DecoderArgs {
  void* x;              // [rows, H] residual stream, updated in place (rows = B * Tq)
  void* qkv;            // scratch [rows, (Hq + 2 Hkv) D]: q, k, v of a layer
  void* attn;           // scratch [rows, Hq D]: attention output of a layer
  const void* cos;      // [rows, D] rotary cos
  const void* sin;      // [rows, D] rotary sin, first half negated (rotate_half's sign)
  const void* q_scale;  // [rows] llama-4 query scale
  const void* final_norm;  // [H] or nullptr: x <- rms_norm(x, final_norm) after the last layer
  const DecoderLayerPtrs* layers;
  int64_t num_layers, H, I;
  double eps, lora_scale;
  int threads;          // OpenMP team size of the parallel GEMMs (the caller's torch.get_num_threads())
  AttnArgs attn_args;   // caches of layer 0, metadata, B/Tq/Hq/Hkv/D; q/k/v/out are set per layer
  int64_t layer_bytes;  // bytes between consecutive layers' k (and v) caches
};

// kOk, kBadArgument (inconsistent sizes, a LoRA pointer without its pair or rank, threads
// < 1) or kBadDtype (fp32 and fp64 only).
int decoder_layers_cpu(const DecoderArgs& a, int dtype);

// Which build of the GEMM panels runs: "avx2+fma" or "baseline" (x86-64 without AVX2, other
// CPUs, or TRIDIFF_CPU_GEMM=base).
const char* decoder_gemm_build();

// The largest OpenMP team a GEMM of the last stack call ran on (0: no GEMM ran; 1 where
// OpenMP is off). Tests read it to check that torch.set_num_threads reaches the stack.
int decoder_last_team_size();

}  // namespace td
