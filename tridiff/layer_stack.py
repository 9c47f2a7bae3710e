"""When tridiff.model runs its layer stack as one ops.decoder_layers_ call (the C++ stack,
csrc/cpu/decoder_cpu.cpp) instead of op by op.

    TRIDIFF_CPU_LAYER_STACK=auto   (default) CPU fp32/fp64 forwards whose token rows times
                                   weights per layer is at most MAX_ROW_WEIGHTS
                           =1      every CPU fp32/fp64 forward the kernel can take
                           =0      never (the op-by-op layers)

Why a limit: the one-call stack saves the per-op host cost (~20 torch calls per layer, ~10
us each here), which is most of a forward of few rows; its own GEMMs are register-tiled
dot products, slower than torch's BLAS once a forward multiplies many rows. The
crossover measured in bench/NOTES.md ("CPU layer stack") sat at rows x weights per layer
of 69-84 M on both shapes of bench_cpu_e2e (small: ~28 rows, mid: ~6 rows); the limit
is below it.
"""
from __future__ import annotations

import os

import torch

ENV = "TRIDIFF_CPU_LAYER_STACK"
MAX_ROW_WEIGHTS = 64_000_000
_DTYPES = (torch.float32, torch.float64)


def wanted(device: torch.device, dtype: torch.dtype, rows: int, layer_weights: int) -> bool:
    """Whether a forward of `rows` token rows through layers of `layer_weights` weights
    each (projections) should try the one-call stack."""
    if device.type != "cpu" or dtype not in _DTYPES or torch.compiler.is_compiling():
        return False
    choice = os.environ.get(ENV, "auto")
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"{ENV}: expected auto, 0 or 1, got {choice!r}")
    return choice == "1" or (choice == "auto" and rows * layer_weights <= MAX_ROW_WEIGHTS)
