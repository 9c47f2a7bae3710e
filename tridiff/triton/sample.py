"""Triton launchers for sample, diffusion_confidence and diffusion_unmask.

Launch shape (kernels/sample.py): grid (rows, S) where a program streams a contiguous
vocabulary range of split_len ids in BLOCK_V chunks (4096 on the GPU: 8 KiB of bf16 per
chunk, 16 elements per thread with 8 warps; small under the interpreter, which pays
per chunk). S is chosen so that rows*S is about two waves of programs over the SMs:
[1, 32, 131072] gives S = 8 ranges of 16384 ids (256 programs). S > 1 adds a tiny
combine launch (or the op's own finish kernel combines). Scratch partials are
rows*S*12 bytes.
"""
from __future__ import annotations

import struct

import torch

from tridiff.triton import device_reason, interpreting

BLOCK_V = 4096
BLOCK_V_INTERPRET = 256
TARGET_PROGRAMS_INTERPRET = 4  # small, so tiny CPU tests still exercise S > 1
NUM_WARPS = 8
MAX_UNMASK_L = 128  # unmask keeps an L x L comparison in registers


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def p2(x: int) -> int:
    """Smallest power of two >= max(x, 1)."""
    return 1 << (max(int(x), 1) - 1).bit_length()


def kernels():
    # imported on first launch: importing tridiff (and this module) needs no triton
    from tridiff.kernels import sample
    return sample


def _tl():
    import triton.language as tl
    return tl


def precise() -> bool:
    """libdevice log/exp (bit-compatible with torch on CUDA) unless interpreting."""
    return not interpreting()


def temp_bits(temperature: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(temperature)))[0]


def acc_dtype(t: torch.Tensor):
    tl = _tl()
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def block_v() -> int:
    return BLOCK_V_INTERPRET if interpreting() else BLOCK_V


def _target_programs(device) -> int:
    if interpreting() or device.type != "cuda":
        return TARGET_PROGRAMS_INTERPRET
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def splits(rows: int, V: int, device):
    """(S, split_len): vocabulary ranges per row, each a multiple of BLOCK_V ids."""
    bv = block_v()
    chunks = cdiv(max(V, 1), bv)
    S = max(1, min(chunks, cdiv(_target_programs(device), max(rows, 1))))
    split_len = cdiv(chunks, S) * bv
    return cdiv(max(V, 1), split_len), split_len


def partials(rows: int, S: int, device, val_dtype=torch.float32):
    return (torch.empty(rows * S, dtype=val_dtype, device=device),
            torch.empty(rows * S, dtype=torch.int32, device=device))


def row_argmax(logits3, temperature, seed, offset, part=None):
    """Pass 1 over logits3 [B, T, V] (any strides). Returns (out int64 [B, T] or None,
    part_val, part_idx, S): with S == 1 and part None the ids go straight to out."""
    tl, K = _tl(), kernels()
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


def _float_reason(logits):
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"unsupported logits dtype {logits.dtype}"
    if logits.shape[-1] >= 2**31 - 2**20:
        return "vocabulary too large for int32 ids"
    return None


def supports_sample(logits, temperature, seed, offset):
    return device_reason(logits, seed, offset) or _float_reason(logits)


def sample(logits, temperature, seed, offset):
    B, T, V = logits.shape
    if B * T == 0:
        return torch.empty((B, T), dtype=torch.int64, device=logits.device)
    out, pv, pi, S = row_argmax(logits, temperature, seed, offset)
    if out is not None:
        return out
    out = torch.empty((B, T), dtype=torch.int64, device=logits.device)
    block_r = 32
    kernels().argmax_finish_kernel[(cdiv(B * T, block_r),)](pv, pi, out, B * T, S, BLOCK_R=block_r,
                                                           BLOCK_S=p2(S))
    return out


def supports_diffusion_confidence(logits, temperature, seed, offset):
    return device_reason(logits, seed, offset) or _float_reason(logits)


def diffusion_confidence(logits, temperature, seed, offset):
    B, L, V = logits.shape
    dev = logits.device
    x0 = torch.empty((B, L), dtype=torch.int64, device=dev)
    conf = torch.empty((B, L), dtype=logits.dtype, device=dev)
    if B * L == 0:
        return x0, conf
    tl, K = _tl(), kernels()
    R = B * L
    S, split_len = splits(R, V, dev)
    mode = 0 if temperature == 0.0 else 2
    acc = acc_dtype(logits)
    sacc = tl.float64 if mode == 2 else acc
    tacc = torch.float64 if acc == tl.float64 else torch.float32
    pv, pi = partials(R, S, dev, torch.float64 if sacc == tl.float64 else torch.float32)
    pm, ps = torch.empty(R * S, dtype=tacc, device=dev), torch.empty(R * S, dtype=tacc, device=dev)
    seed_t = seed.long().contiguous() if mode else pi
    off_t = offset.long().contiguous() if mode else pi
    K.confidence_kernel[(R, S)](logits, seed_t, off_t, pv, pi, pm, ps, L, V, split_len, *logits.stride(),
                                temp_bits(temperature), ACC=acc, SACC=sacc, MODE=mode, PRECISE=precise(),
                                BLOCK_V=block_v(), num_warps=NUM_WARPS,
                                # x - T*log(..) must round like torch's separate mul and sub, no FMA
                                enable_fp_fusion=False)
    block_r = 32
    K.confidence_finish_kernel[(cdiv(R, block_r),)](
        logits, pv, pi, pm, ps, x0, conf, R, L, S, *logits.stride(), ACC=acc, PRECISE=precise(),
        BLOCK_R=block_r, BLOCK_S=p2(S))
    return x0, conf


def supports_diffusion_unmask(block, x0, conf, mask_id, threshold, num_transfer):
    reason = device_reason(block, x0, conf, num_transfer)
    if reason is None and block.shape[1] > MAX_UNMASK_L:
        reason = f"block length {block.shape[1]} > {MAX_UNMASK_L}"
    if reason is None and any(t.stride(-1) != 1 for t in (block, x0, conf)):
        reason = "block/x0/conf need unit stride along L"
    return reason


def diffusion_unmask(block, x0, conf, mask_id, threshold, num_transfer):
    B, L = block.shape
    dev = block.device
    new_block = torch.empty((B, L), dtype=torch.int64, device=dev)
    transferred = torch.empty((B, L), dtype=torch.bool, device=dev)
    if B * L == 0:
        return new_block, transferred
    use_thr = threshold is not None
    # the threshold rounded to conf's dtype (as `conf >= threshold` compares in PyTorch)
    thr = float(torch.tensor(threshold, dtype=conf.dtype)) if use_thr else 0.0
    k = num_transfer.to(torch.int32).contiguous() if not use_thr else new_block
    block, x0 = block.long(), x0.long()  # unit stride along L: see supports_diffusion_unmask
    kernels().unmask_kernel[(B,)](block, x0, conf, k, new_block, transferred, L, int(mask_id),
                          temp_bits(thr), block.stride(0), x0.stride(0), conf.stride(0),
                          new_block.stride(0), transferred.stride(0), THRESHOLD=use_thr, BLOCK_L=p2(L))
    return new_block, transferred
