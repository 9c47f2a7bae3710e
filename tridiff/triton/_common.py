"""Helpers shared by the Triton launchers: where Triton can run, launch arithmetic, and
the vocabulary row scan (pass 1 of sampling and of every acceptance rule).

Launch shape of the row scan (tridiff/kernels/sample.py): grid (rows, S) where a program
streams a contiguous vocabulary range of split_len ids in BLOCK_V chunks (4096 on the
GPU: 8 KiB of bf16 per chunk, 16 elements per thread with 8 warps; small under the
interpreter, which pays per chunk). S is chosen so that rows*S is about two waves of
programs over the SMs: [1, 32, 131072] gives S = 8 ranges of 16384 ids (256 programs).
S > 1 adds a tiny combine launch (or the op's own finish kernel combines). Scratch
partials are rows*S*12 bytes.
"""
from __future__ import annotations

import os
import struct

import torch

BLOCK_V = 4096
BLOCK_V_INTERPRET = 256
TARGET_PROGRAMS_INTERPRET = 4  # small, so tiny CPU tests still exercise S > 1
NUM_WARPS = 8


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable():
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def device_reason(*tensors):
    """None if Triton can run on these tensors' device, else why not."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        return f"Triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {t.device}"
    return None


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def p2(x: int) -> int:
    """Smallest power of two >= max(x, 1)."""
    return 1 << (max(int(x), 1) - 1).bit_length()


def scan_kernels():
    # imported on first launch: importing tridiff (and this module) needs no triton
    from tridiff.kernels import sample
    return sample


def language():
    """triton.language, imported on first launch."""
    import triton.language as tl
    return tl


def precise() -> bool:
    """libdevice log/exp (bit-compatible with torch on CUDA) unless interpreting."""
    return not interpreting()


def temp_bits(temperature: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(temperature)))[0]


def acc_dtype(t: torch.Tensor):
    tl = language()
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def block_v() -> int:
    return BLOCK_V_INTERPRET if interpreting() else BLOCK_V


def target_programs(device) -> int:
    if interpreting() or device.type != "cuda":
        return TARGET_PROGRAMS_INTERPRET
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def splits(rows: int, V: int, device):
    """(S, split_len): vocabulary ranges per row, each a multiple of BLOCK_V ids."""
    bv = block_v()
    chunks = cdiv(max(V, 1), bv)
    S = max(1, min(chunks, cdiv(target_programs(device), max(rows, 1))))
    split_len = cdiv(chunks, S) * bv
    return cdiv(max(V, 1), split_len), split_len


def partials(rows: int, S: int, device, val_dtype=torch.float32):
    return (torch.empty(rows * S, dtype=val_dtype, device=device),
            torch.empty(rows * S, dtype=torch.int32, device=device))


def row_argmax(logits3, temperature, seed, offset, part=None):
    """Pass 1 over logits3 [B, T, V] (any strides). Returns (out int64 [B, T] or None,
    part_val, part_idx, S): with S == 1 and part None the ids go straight to out."""
    tl, K = language(), scan_kernels()
    B, T, V = logits3.shape
    dev = logits3.device
    S, split_len = splits(B * T, V, dev)
    mode = 0 if temperature == 0.0 else 1
    acc = acc_dtype(logits3)
    sacc = acc if mode == 0 else tl.float32
    direct = S == 1 and part is None
    out = torch.empty((B, T), dtype=torch.int64, device=dev) if direct else None
    pv, pi = partials(B * T, S, dev, torch.float64 if sacc == tl.float64 else torch.float32)
    seed_t = seed.long().contiguous() if mode else pi
    off_t = offset.long().contiguous() if mode else pi
    K.vocab_argmax_kernel[(B * T, S)](
        logits3, seed_t, off_t, out if direct else pi, pv, pi, T, V, split_len, *logits3.stride(),
        temp_bits(temperature), ACC=acc, SACC=sacc, MODE=mode, STREAM=0, PRECISE=precise(),
        DIRECT=direct, BLOCK_V=block_v(), num_warps=NUM_WARPS)
    return out, pv, pi, S


def float_reason(logits):
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"unsupported logits dtype {logits.dtype}"
    if logits.shape[-1] >= 2**31 - 2**20:
        return "vocabulary too large for int32 ids"
    return None
