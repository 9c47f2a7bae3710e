"""Public projections on narrow weights: weight-only quantized, and a weight of another
float dtype than the activations.

  quant_linear(x [..., K], qweight, scales, qzeros, *, bits, group_size, backend="auto")
      -> y [..., N] in x.dtype, y = x @ W^T with W^T [K, N] = scales[g] * (q - z[g]),
         g = k // group_size, the products accumulated in fp32 (fp64 for fp64 x).
  quant_linear_a8(x [..., K], qweight, scales, qzeros, *, bits, group_size, backend="auto")
      -> y [..., N] in x.dtype: quant_linear with the activations first rounded to int8,
         per row and group of group_size (d = max|x| / 127, q = round(x / d), in fp32;
         tridiff.reference.quant.round_activations_int8), y = (d q) @ W^T: "w4a8", what
         llama.cpp's Q4_0 x Q8_0 dot products compute. Integer products on CPU (AVX-512
         VNNI); an opt-in approximation of quant_linear, never chosen silently.
  mixed_linear(x [..., K], weight [N, K], *, backend="auto")
      -> y [..., N] in x.dtype: F.linear in the wider of the two dtypes (a bf16 weight with
         fp32 x: fp32 accumulation), without a wider copy of the weight.

Layout (GPTQ, tridiff.quant.gptq): qweight int32 [K*bits/32, N] (codes packed along K),
scales [G, N] (fp16, bf16 or fp32), qzeros int32 [G, N*bits/32] holding the TRUE zero
points (GPTQModel's internal "v2" words: a v1 checkpoint's words are converted once at
load, tridiff.quant.gptq.v2_words), G = K / group_size. bits 4 or 8. Input features in
order: a desc_act checkpoint's g_idx is refused at load (tridiff.quant.config).
Pure functions: nothing is mutated. The cpp backend serves both on CPU with float32 x
(4-bit codes, fp16 scales, group sizes that are multiples of 64; bf16 weights), through
the panels of the C++ layer stack (csrc/cpu/decoder_qgemm.inc); quant_linear_a8 takes
group sizes that are multiples of 8 up to 1024 there (csrc/cpu/decoder_a8.inc), and has no
GPU kernel (the reference serves it on other devices).
"""
from __future__ import annotations

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.ops._common import run
from tridiff.quant.gptq import BITS

SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@torch.library.custom_op("tridiff::quant_linear", mutates_args=())
def _quant_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                     bits: int, group_size: int, backend: str) -> torch.Tensor:
    return _dispatch.implementation("quant_linear", backend)(x, qweight, scales, qzeros, bits, group_size)


@_quant_linear_op.register_fake
def _quant_linear_fake(x, qweight, scales, qzeros, bits, group_size, backend):
    return x.new_empty((x.shape[0], scales.shape[1]))


def check_quant_linear(x, qweight, scales, qzeros, bits, group_size) -> tuple:
    """Argument checks (nothing is read or written before they pass); returns (K, N, G)."""
    if isinstance(bits, bool) or bits not in BITS:
        chk.fail("bits", f"one of {BITS}", repr(bits))
    chk.tensor("x", x, dtypes=chk.FLOAT_DTYPES)
    if x.dim() < 1:
        chk.fail("x", "a tensor [..., K]", "a 0-d tensor")
    K, dev, P = x.shape[-1], x.device, 32 // bits
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or K % group_size \
            or group_size % P:
        chk.fail("group_size", f"a python int >= 1 dividing K={K} and divisible by {P}", repr(group_size))
    chk.tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,), device=dev)
    N = qweight.shape[1]
    chk.shape("qweight", qweight, (K // P, N))
    if N % P:
        chk.fail("qweight", f"N (its columns) divisible by {P}", f"shape {tuple(qweight.shape)}")
    G = K // group_size
    chk.tensor("scales", scales, ndim=2, dtypes=SCALE_DTYPES, device=dev)
    chk.shape("scales", scales, (G, N))
    chk.tensor("qzeros", qzeros, ndim=2, dtypes=(torch.int32,), device=dev)
    chk.shape("qzeros", qzeros, (G, N // P))
    return K, N, G


def _packed(name, op, x, qweight, scales, qzeros, bits, group_size, backend):
    K, N, _ = check_quant_linear(x, qweight, scales, qzeros, bits, group_size)
    lead = x.shape[:-1]
    y = run(name, backend, x.device, (x.reshape(-1, K), qweight, scales, qzeros, bits, group_size), op)
    return y.view(*lead, N)


def quant_linear(x, qweight, scales, qzeros, *, bits, group_size, backend="auto"):
    return _packed("quant_linear", _quant_linear_op, x, qweight, scales, qzeros, bits, group_size, backend)


@torch.library.custom_op("tridiff::quant_linear_a8", mutates_args=())
def _quant_linear_a8_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                        bits: int, group_size: int, backend: str) -> torch.Tensor:
    return _dispatch.implementation("quant_linear_a8", backend)(x, qweight, scales, qzeros, bits, group_size)


@_quant_linear_a8_op.register_fake
def _quant_linear_a8_fake(x, qweight, scales, qzeros, bits, group_size, backend):
    return x.new_empty((x.shape[0], scales.shape[1]))


def quant_linear_a8(x, qweight, scales, qzeros, *, bits, group_size, backend="auto"):
    return _packed("quant_linear_a8", _quant_linear_a8_op, x, qweight, scales, qzeros, bits, group_size, backend)


@torch.library.custom_op("tridiff::mixed_linear", mutates_args=())
def _mixed_linear_op(x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
    return _dispatch.implementation("mixed_linear", backend)(x, weight)


@_mixed_linear_op.register_fake
def _mixed_linear_fake(x, weight, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


def check_mixed_linear(x, weight) -> tuple:
    """Argument checks (nothing is read or written before they pass); returns (K, N)."""
    chk.tensor("x", x, dtypes=chk.FLOAT_DTYPES)
    if x.dim() < 1:
        chk.fail("x", "a tensor [..., K]", "a 0-d tensor")
    chk.tensor("weight", weight, ndim=2, dtypes=chk.FLOAT_DTYPES, device=x.device)
    K = x.shape[-1]
    if weight.shape[1] != K:
        chk.fail("weight", f"shape [N, {K}] (K as x)", f"shape {tuple(weight.shape)}")
    return K, weight.shape[0]


def mixed_linear(x, weight, *, backend="auto"):
    K, N = check_mixed_linear(x, weight)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    y = run("mixed_linear", backend, x.device, (x2, weight), _mixed_linear_op)
    return y.view(*lead, N)
