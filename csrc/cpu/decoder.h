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

// How a projection's weight W [N out, K in] is stored (ProjWeight.format).
enum ProjFormat : int {
  kProjFull = 0,   // the activations' dtype, row-major [N, K] like F.linear's weight
  kProjBf16 = 1,   // bf16 [N, K] (fp32 activations only), fp32 accumulation
  kProjInt4 = 2,   // GPTQ int4 (fp32 activations only): codes int32 [N, K/8] (qweight
                   // transposed: word [n, w] holds k = 8 w + j in bits 4j..4j+3), scales fp16
                   // [G, N], zeros int32 [G, N/8] holding the TRUE zero points (GPTQ "v2"
                   // words), G = K / group_size; W[n, k] = scale (q - z) of group k / group_size
  kProjInt4A8 = 3, // the same int4 weight with int8 activations (fp32 in and out): codes in
                   // the GPTQ layout itself, int32 [K/8, N] row-major (qweight as stored);
                   // each row's activations rounded to int8 per group (decoder_a8.inc)
};

struct ProjWeight {
  const void* w = nullptr;        // [N, K] (full, bf16), the int4 codes [N, K/8] or (int4a8) [K/8, N]
  int format = kProjFull;
  const uint16_t* scales = nullptr;   // int4, int4a8
  const int32_t* zeros = nullptr;     // int4, int4a8
  int64_t group_size = 0;             // int4: a multiple of 64 dividing K; int4a8: of 8
};

// One layer's weights; projections as ProjWeight (full ones row-major [out, in]).
struct DecoderLayerPtrs {
  const void* norm1;    // [H]        input_layernorm
  ProjWeight qkv;       // [(Hq + 2 Hkv) D, H]  q, k, v row blocks
  ProjWeight o;         // [H, Hq D]
  const void* norm2;    // [H]        post_attention_layernorm
  ProjWeight gate_up;   // [2 I, H]   gate, up row blocks
  ProjWeight down;      // [H, I]
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
// < 1, a projection's format or group size, see proj_weight_ok) or kBadDtype (fp32 and
// fp64 only; bf16 and int4 projections with fp32 only).
int decoder_layers_cpu(const DecoderArgs& a, int dtype);

// Whether w can be the weight of an [N, K] projection (format known; int4: scales, zeros
// given, N % 8 == 0, group_size a multiple of 64 dividing K; int4a8: the same with
// group_size a multiple of 8, at most 1024). K, N >= 1.
bool proj_weight_ok(const ProjWeight& w, int64_t N, int64_t K);

// out[rows, N] = x[rows, K] W^T for one bf16 or int4 projection, fp32 (the standalone
// linear of tridiff.ops.quant_linear / mixed_linear on the cpp backend), on `threads`
// OpenMP threads. kOk, kBadArgument (proj_weight_ok, rows < 0, threads < 1) or kBadDtype
// (a full-format weight: F.linear serves those).
int proj_linear_cpu(const ProjWeight& w, const float* x, int64_t rows, int64_t K, int64_t N, float* out,
                    int threads);

// Which build of the GEMM panels runs: "avx2+fma" or "baseline" (x86-64 without AVX2, other
// CPUs, or TRIDIFF_CPU_GEMM=base).
const char* decoder_gemm_build();

// Which build of the bf16 / int4 panels runs: "avx512" (avx512f + avx512bw, unless
// TRIDIFF_CPU_GEMM=avx2 or =base), else decoder_gemm_build()'s. The AVX-512 int4 panels take
// K % 128 == 0; other K run the AVX2 copy.
const char* decoder_qgemm_build();

// Which build of the int4a8 panels runs: "avx512-vnni" (avx512f/bw/vl + avx512_vnni, unless
// TRIDIFF_CPU_GEMM=avx2 or =base) or "scalar". Both give the same bits.
const char* decoder_a8_build();

// The largest OpenMP team a GEMM of the last stack call ran on (0: no GEMM ran; 1 where
// OpenMP is off). Tests read it to check that torch.set_num_threads reaches the stack.
int decoder_last_team_size();

}  // namespace td
