"""When tridiff.model runs its layer stack as one ops.decoder_layers_ call (the C++ stack,
csrc/cpu/decoder_cpu.cpp) instead of op by op.

    TRIDIFF_CPU_LAYER_STACK=auto   (default) CPU fp32/fp64 forwards of at most MAX_ROWS token
                                   rows whose rows x weights per layer is at most
                                   MAX_ROW_WEIGHTS (full-precision weights; bf16 and
                                   packed weights: MAX_ROWS alone)
                           =1      every CPU fp32/fp64 forward the kernel can take
                           =0      never (the op-by-op layers)

Why limits: the one-call stack saves the per-op host cost (~20 torch calls per layer),
which is most of a forward of few rows; its GEMMs (register-tiled dot products) run at
about 2/3 of torch's BLAS and its attention (the CPU build of the GPU tiling) grows with
the rows, so once a forward multiplies many rows the op-by-op layers win. Measured
(bench/NOTES.md, "CPU layer stack"; python -m bench.bench_cpu_layer_stack): the stack was
faster up to ~32 rows on the small shape (0.75 M weights per layer) and up to ~8 rows on
the mid one (12 M). MAX_ROWS = 33 takes the 32-row diffusion forwards of block 32 and the
33-row verifies at the small shape (33 x 0.75 M = 25 M row-weights, inside
MAX_ROW_WEIGHTS; 33 rows sits at the measured ~32-row crossover, not yet timed there);
MAX_ROW_WEIGHTS keeps the mid shape at <= 5 rows.

Weight formats: bf16 and int4 models (tridiff.quant) take MAX_ROWS only. MAX_ROW_WEIGHTS
comes from the fp32 panels running slower than torch's BLAS, which the op-by-op layers use;
a bf16/int4 model's op-by-op layers multiply through the same C++ panels as the stack
(ops.mixed_linear / quant_linear on the cpp backend), so there the stack only saves the
per-op host cost (and the per-call activation copies), at any size: the 3B preset's 1- and
17-row forwards take it (3B: 100 M weights per layer, over MAX_ROW_WEIGHTS even at 1 row).
Formats the stack cannot take (int8, fp16 weights) still run op by op (its plan refuses
them).

int8 activations (w4a8) take the stack at every row count: rounding to int8 turns the
op-by-op layers' last-bit differences from the stack (torch's norms and attention against
the C++ ones) into whole rounding steps, so a request batched by the engine (many rows)
would no longer compute what it computes alone (few rows). One path keeps every row's
numbers independent of what shares its forward.
"""
from __future__ import annotations

import os

import torch

from tridiff import _dispatch

ENV = "TRIDIFF_CPU_LAYER_STACK"
MAX_ROWS = 33
MAX_ROW_WEIGHTS = 64_000_000
_DTYPES = (torch.float32, torch.float64)


def wanted(device: torch.device, dtype: torch.dtype, rows: int, layer_weights: int, narrow: bool = False,
           int8_activations: bool = False) -> bool:
    """Whether a forward of `rows` token rows through layers of `layer_weights` projection
    weights each should try the one-call stack; narrow: the projections are bf16 or packed
    (tridiff.quant; the model's weight_format is not "full"); int8_activations: they round
    their input to int8 (tridiff.quant.load.set_activations), so every forward takes the
    stack whatever its rows (module docstring)."""
    if device.type != "cpu" or dtype not in _DTYPES or torch.compiler.is_compiling():
        return False
    choice = os.environ.get(ENV, "auto")
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"{ENV}: expected auto, 0 or 1, got {choice!r}")
    if choice != "auto":
        return choice == "1"
    if int8_activations:
        return True
    return rows <= MAX_ROWS and (narrow or rows * layer_weights <= MAX_ROW_WEIGHTS)


def stack_backend(backend: str):
    """The backend a forward run on `backend` asks for the stack with, or None for the
    op-by-op layers. The stack is the cpp backend's kernel: "auto" and "cpp" ask for it
    (TRIDIFF_BACKEND stands in for "auto"); a forward on any other backend, named or
    forced, runs op by op, so that backend's own ops (its attention) run."""
    if backend == "auto":
        backend = _dispatch.forced() or "auto"
    return backend if backend in ("auto", "cpp") else None
