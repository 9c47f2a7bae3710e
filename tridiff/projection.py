"""Weight projections (y = x @ W^T, no bias) for tridiff.model, with a batched-GEMM path
for the few-row products of CPU decoding."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows (tokens) up to which a CPU projection runs as one batched GEMM over row blocks of
# the weight (see linear): every decoding forward (1 row per AR step, 16-36 for drafts,
# verifies, QUADRATIC(4) and short prefills); longer prefills take F.linear.
BMM_ROWS = 128
BMM_DTYPES = (torch.float32, torch.float64)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) (no bias). On CPU, for at most BMM_ROWS rows of fp32/fp64, the
    weight [N, K] is read as b blocks of N/b rows and multiplied in one torch.bmm with
    x^T broadcast over the blocks. Measured on the 2-core EPYC (bench/NOTES.md, "Batched
    GEMV"): one row streams weights at 30 GB/s (1 thread) / 50-59 GB/s (2 threads)
    against 12-21 GB/s for F.linear's GEMV, which uses one thread; 16-128 rows run at
    1.1-1.7x F.linear's GFLOP/s with 2 threads (0.9-1.1x with one). Same products,
    summed in another order: results differ from F.linear by float rounding only."""
    K = x.shape[-1]
    rows = x.numel() // K if K else 0
    if 0 < rows <= BMM_ROWS and x.device.type == "cpu" and x.dtype in BMM_DTYPES and x.is_contiguous():
        N = weight.shape[0]
        key = (N, rows > 4)
        blocks = _BMM_BLOCKS.get(key)
        if blocks is None:
            blocks = _BMM_BLOCKS[key] = _bmm_blocks(N, (256, 512, 128) if rows <= 4 else (128, 256, 512))
        if blocks and weight.is_contiguous():
            w = weight.view(blocks, N // blocks, K)
            if rows <= 4:
                # block @ x^T, x^T [K, rows] with strides (1, K) -- the layout that takes
                # bmm's fast GEMV path -- shared by every block (stride 0)
                y = torch.bmm(w, x.as_strided((blocks, K, rows), (0, 1, K)))
                if rows > 1:   # [blocks, N/blocks, rows] -> [rows, N], contiguous like F.linear's
                    y = y.permute(2, 0, 1).contiguous()
            else:   # x @ block^T: [blocks, rows, N/blocks] -> [rows, N]
                y = torch.bmm(x.view(1, rows, K).expand(blocks, rows, K), w.transpose(1, 2))
                y = y.permute(1, 0, 2).contiguous()
            return y.view(*x.shape[:-1], N)
    return F.linear(x, weight)


_BMM_BLOCKS: dict = {}   # (N, rows > 4) -> block count (0: F.linear)


def _bmm_blocks(N: int, sizes) -> int:
    """N / r for the first block size r in `sizes` dividing N into at least 2 blocks, or
    0 (F.linear). 256-row blocks stream one row fastest, 128-row blocks several rows."""
    for r in sizes:
        if N % r == 0 and N // r >= 2:
            return N // r
    return 0
