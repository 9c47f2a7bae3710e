"""Weight projections (y = x @ W^T, no bias) for tridiff.model. On CPU the few-row
products of decoding take whichever of three formulations measures fastest on the machine.

The BLAS behind F.linear handles a skinny x @ W^T very differently from one CPU to the
next (bench/NOTES.md, "CPU projections: which formulation"): on one 2-core EPYC its GEMV
used one thread and a batched GEMM over row blocks of W streamed 2-3x faster; on a 2-core
Xeon with MKL F.linear is the fastest GEMV, while W @ x^T is 1.4-1.7x faster than it for
8-32 rows of a large weight and 1.5x slower at 80-128 rows of a small one. So the path is
measured, not assumed: once per process, weight shape and row bucket.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from tridiff.quant.packed import linear as quant_linear

# Rows (tokens) up to which a CPU projection may leave F.linear: every decoding forward
# (1 row per AR step, 16-36 for drafts, verifies and QUADRATIC(4), L(k+1) for pruned
# quadratic, short prefills); longer products take F.linear.
BMM_ROWS = 128
BMM_DTYPES = (torch.float32, torch.float64)
PATH_ENV = "TRIDIFF_CPU_PROJECTION"   # auto (default) | linear | wxt | bmm
PATHS = ("auto", "linear", "wxt", "bmm")
# A formulation other than F.linear is taken only when it measures this much faster.
MARGIN = 1.15


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) (no bias). On CPU, for at most BMM_ROWS rows of fp32/fp64 with
    x and weight contiguous, cpu_path(rows) may instead choose
      wxt: (W @ x^T)^T, one GEMM with the weight as the left operand;
      bmm: the weight [N, K] read as b blocks of N/b rows, multiplied in one torch.bmm
           with x^T broadcast over the blocks (every thread streams the weight).
    Same products, summed in another order: results differ from F.linear by rounding only.
    A packed weight, or one of another dtype than x, is multiplied by tridiff.quant."""
    if not isinstance(weight, torch.Tensor) or weight.dtype != x.dtype:
        return quant_linear(x, weight)
    K = x.shape[-1]
    rows = x.numel() // K if K else 0
    if 0 < rows <= BMM_ROWS and x.device.type == "cpu" and x.dtype in BMM_DTYPES and x.is_contiguous() \
            and weight.is_contiguous() and not torch.compiler.is_compiling():   # traced: inductor plans its GEMMs
        path = cpu_path(rows, weight.shape[0], K)
        if path == "wxt":
            y = torch.mm(weight, x.view(rows, K).t()).t().contiguous()
            return y.view(*x.shape[:-1], weight.shape[0])
        if path == "bmm":
            y = _blocked(x.view(rows, K), weight)
            if y is not None:
                return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def _blocked(x: torch.Tensor, weight: torch.Tensor):
    """The bmm formulation for x [rows, K], or None when N does not split into blocks."""
    rows, K = x.shape
    N = weight.shape[0]
    key = (N, rows > 4)
    blocks = _BMM_BLOCKS.get(key)
    if blocks is None:
        blocks = _BMM_BLOCKS[key] = _bmm_blocks(N, (256, 512, 128) if rows <= 4 else (128, 256, 512))
    if not blocks:
        return None
    w = weight.view(blocks, N // blocks, K)
    if rows <= 4:
        # block @ x^T, x^T [K, rows] with strides (1, K) -- the layout that takes bmm's
        # fast GEMV path -- shared by every block (stride 0)
        y = torch.bmm(w, x.as_strided((blocks, K, rows), (0, 1, K)))
        return y.permute(2, 0, 1).contiguous() if rows > 1 else y   # -> [rows, N]
    y = torch.bmm(x.view(1, rows, K).expand(blocks, rows, K), w.transpose(1, 2))   # x @ block^T
    return y.permute(1, 0, 2).contiguous()


_BMM_BLOCKS: dict = {}   # (N, rows > 4) -> block count (0: no split)
_MEASURED: dict = {}     # (N, K, row bucket) -> path, measured once per process


def _bmm_blocks(N: int, sizes) -> int:
    """N / r for the first block size r in `sizes` dividing N into at least 2 blocks, or
    0. 256-row blocks stream one row fastest, 128-row blocks several rows."""
    for r in sizes:
        if N % r == 0 and N // r >= 2:
            return N // r
    return 0


def row_bucket(rows: int) -> int:
    """The bucket a row count is measured in: 1, or the next power of two (2 .. BMM_ROWS)."""
    return 1 << max(rows - 1, 0).bit_length()


def cpu_path(rows: int, N: int, K: int) -> str:
    """"linear", "wxt" or "bmm": the formulation a CPU projection of `rows` rows by an
    [N, K] weight takes. TRIDIFF_CPU_PROJECTION = linear / wxt / bmm forces it; auto (the
    default) times the three once per process, weight shape and row bucket (at the
    bucket's largest row count, on a weight of that shape) and keeps F.linear unless
    another is MARGIN times faster. A model has five weight shapes, so a decoding process
    pays a few such measurements (milliseconds each; ~0.1 s for a 128 MB weight)."""
    mode = os.environ.get(PATH_ENV, "auto")
    if mode not in PATHS:
        raise ValueError(f"{PATH_ENV}: expected one of {', '.join(PATHS)}, got {mode!r}")
    if mode != "auto":
        return mode
    key = (N, K, row_bucket(rows))
    got = _MEASURED.get(key)
    if got is None:
        got = _MEASURED[key] = _measure(key[2], N, K)
    return got


def measured_paths() -> dict:
    """What auto chose so far, {"4096x1024, rows <= 16": "wxt", ...} (benchmarks record it)."""
    return {f"{n}x{k}, rows <= {b}": p for (n, k, b), p in sorted(_MEASURED.items())}


def _measure(rows: int, N: int, K: int, rounds: int = 2) -> str:
    w = torch.full((N, K), 0.5)
    x = torch.full((rows, K), 0.25)
    candidates = {
        "linear": lambda: F.linear(x, w),
        "wxt": lambda: torch.mm(w, x.t()).t().contiguous(),
    }
    if _bmm_blocks(N, (256, 512, 128)):
        candidates["bmm"] = lambda: _blocked(x, w)
    calls = max(1, min(64, 2 ** 22 // (N * K)))   # a small weight: several calls per sample
    best = {name: float("inf") for name in candidates}
    for fn in candidates.values():   # warm-up: thread pools, first touch of the outputs
        fn()
    for _ in range(rounds):   # interleaved, best of rounds: a burst of other load hits all alike
        for name, fn in candidates.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], time.perf_counter() - t)
    fastest = min(best, key=best.get)
    return fastest if best[fastest] * MARGIN < best["linear"] else "linear"
