"""References of the narrow-weight projections: quant_linear (tridiff.ops.quant_linear):
dequantize the GPTQ-layout weight (tridiff.quant.gptq), then one matmul, accumulated in
fp32 (fp64 for fp64 input) and rounded once to x's dtype; quant_linear_a8 (the same after
rounding the activations to int8, round_activations_int8); mixed_linear
(tridiff.ops.mixed_linear): F.linear in the wider of x's and the weight's dtypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tridiff.quant.gptq import dequantize


def quant_linear(x, qweight, scales, qzeros, bits, group_size):
    """x [M, K] @ W^T -> [M, N] in x.dtype; W^T = scales[g] * (q - z[g]) with qzeros the
    true (v2) zero points, g = k // group_size."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w_t = dequantize(qweight, scales, qzeros, bits, group_size, dtype=acc)
    return (x.to(acc) @ w_t).to(x.dtype)


UPCAST_ELEMS = 1 << 21   # 8 MiB of fp32 per upcast block


def mixed_linear(x, weight):
    """x [M, K] @ weight [N, K]^T in the wider of the two dtypes (promote_types: fp32 for a
    bf16 or fp16 weight and fp32 x), the weight upcast UPCAST_ELEMS at a time (so no
    wider copy of it is ever held); the result in x's dtype."""
    acc = torch.promote_types(x.dtype, weight.dtype)
    N, K = weight.shape
    xa = x.to(acc)
    rows = max(1, UPCAST_ELEMS // max(K, 1))
    if N <= rows:
        return F.linear(xa, weight.to(acc)).to(x.dtype)
    out = torch.empty(x.shape[0], N, dtype=x.dtype, device=x.device)
    for n0 in range(0, N, rows):
        out[:, n0:n0 + rows] = F.linear(xa, weight[n0:n0 + rows].to(acc))
    return out


INT8_MAX = 127


def round_activations_int8(x, group_size):
    """x [M, K] -> (q int8 [M, K], d float32 [M, K / group_size]): each row's groups of
    group_size elements rounded symmetrically, in fp32: d = max|x| / 127,
    q = round-half-even(x * (1 / d)) clamped to [-127, 127] (q = 0 where d = 0). What the
    int4a8 panels do to their input (csrc/cpu/decoder_a8.inc), bit for bit."""
    M, K = x.shape
    xg = x.to(torch.float32).reshape(M, K // group_size, group_size)
    d = xg.abs().amax(dim=-1) / INT8_MAX
    inv = torch.where(d != 0, 1 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.round(xg * inv[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(M, K), d


def quant_linear_a8(x, qweight, scales, qzeros, bits, group_size):
    """quant_linear with the activations first rounded to int8 per row and group
    (round_activations_int8): y = sum over k of (d q_x)[k] * W^T[k], exact products summed
    in fp64, rounded once to x's dtype."""
    M, K = x.shape
    q, d = round_activations_int8(x, group_size)
    xd = q.to(torch.float64) * d.to(torch.float64).repeat_interleave(group_size, dim=1)
    w_t = dequantize(qweight, scales, qzeros, bits, group_size, dtype=torch.float64)
    return (xd @ w_t).to(x.dtype)
