"""Triton launcher of quant_linear (kernel: tridiff/kernels/quant_gemm.py).

Tiles: BLOCK_M = the row count rounded up to 16..64 (tl.dot's minimum is 16), BLOCK_N 64,
BLOCK_K 64 (a divisor of every supported group size: 64, 128, per channel with K a
multiple of 64; so one K step never straddles two groups). Split-K: when the output
tiles are fewer than the target number of programs (tridiff.triton._common.
target_programs: two waves over the SMs on a GPU, a few in the interpreter), K is cut
into SPLIT ranges of whole BLOCK_K steps so that tiles x SPLIT reaches the target: a
1-row AR step of a 3072 x 3072 projection has 48 output tiles and runs 5 splits of 640
on an H100 (132 SMs). Partials are fp32 [SPLIT, M, N], summed here.
"""
from __future__ import annotations

import torch

from tridiff.triton import _common
from tridiff.triton._common import cdiv, device_reason, interpreting, p2

BLOCK_N = 64
BLOCK_K = 64
MAX_ROWS = 256
NUM_WARPS = 4


def supports_quant_linear(x, qweight, scales, qzeros, bits, group_size):
    reason = device_reason(x, qweight, scales, qzeros)
    if reason is None and x.dtype == torch.float64:
        reason = "fp64 x (the kernel accumulates in fp32)"
    if reason is None and bits != 4:
        reason = f"bits={bits} (the kernel is int4)"
    if reason is None and (group_size % BLOCK_K or x.shape[1] % BLOCK_K):
        reason = f"group_size {group_size} and K {x.shape[1]} must be multiples of {BLOCK_K}"
    if reason is None and x.shape[0] > MAX_ROWS:
        reason = f"{x.shape[0]} rows > {MAX_ROWS}"
    return reason


def launch_shape(M: int, N: int, K: int, device) -> tuple:
    """(BLOCK_M, SPLIT, K_SPLIT) for an [M, K] x [K, N] product."""
    block_m = min(max(p2(M), 16), 64)
    tiles = cdiv(M, block_m) * cdiv(N, BLOCK_N)
    steps = K // BLOCK_K
    split = max(1, min(steps, _common.target_programs(device) // tiles))
    k_split = cdiv(steps, split) * BLOCK_K
    return block_m, cdiv(K, k_split), k_split


def new_output(shape, dtype, device) -> torch.Tensor:
    """The kernel's output (uninitialised: every element is stored; tests fill it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def quant_linear(x, qweight, scales, qzeros, bits, group_size):
    from tridiff.kernels.quant_gemm import quant_gemm_kernel

    M, K = x.shape
    N = qweight.shape[1]
    if M == 0:
        return x.new_empty((0, N))
    x = x if x.stride(1) == 1 else x.contiguous()
    qweight, scales, qzeros = qweight.contiguous(), scales.contiguous(), qzeros.contiguous()
    block_m, split, k_split = launch_shape(M, N, K, x.device)
    dot_f32 = interpreting() or x.dtype == torch.float32
    if split > 1:
        out = new_output((split, M, N), torch.float32, x.device)
        s_os = out.stride(0)
    else:
        out = new_output((M, N), x.dtype, x.device)
        s_os = 0
    grid = (cdiv(M, block_m), cdiv(N, BLOCK_N), split)
    quant_gemm_kernel[grid](x, qweight, scales, qzeros, out, M, N, K, k_split, x.stride(0), out.stride(-2), s_os,
                            GROUP=group_size, BITS=bits, DOT_F32=dot_f32, SPLIT_OUT=split > 1, BLOCK_M=block_m,
                            BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
    return out.sum(0).to(x.dtype) if split > 1 else out
