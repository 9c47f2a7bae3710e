"""References of the narrow-weight projections: quant_linear (tridiff.ops.quant_linear):
dequantize the GPTQ-layout weight (tridiff.quant.gptq), then one matmul, accumulated in
fp32 (fp64 for fp64 input) and rounded once to x's dtype; mixed_linear
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
