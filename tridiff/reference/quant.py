"""Reference of the weight-only quantized projection (tridiff.ops.quant_linear): dequantize
the GPTQ-layout weight (tridiff.quant.gptq), then one matmul, accumulated in fp32 (fp64
for fp64 input) and rounded once to x's dtype."""
from __future__ import annotations

import torch

from tridiff.quant.gptq import dequantize


def quant_linear(x, qweight, scales, qzeros, bits, group_size):
    """x [M, K] @ W^T -> [M, N] in x.dtype; W^T = scales[g] * (q - z[g]) with qzeros the
    true (v2) zero points, g = k // group_size."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w_t = dequantize(qweight, scales, qzeros, bits, group_size, dtype=acc)
    return (x.to(acc) @ w_t).to(x.dtype)
