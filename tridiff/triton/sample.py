"""Triton launchers for sample, diffusion_confidence and diffusion_unmask.

sample and diffusion_confidence scan the vocabulary with the shared row scan
(tridiff.triton._common: launch shape, splits, partials), then combine per row.
"""
from __future__ import annotations

import torch

from tridiff.triton._common import (NUM_WARPS, acc_dtype, block_v, cdiv, device_reason, float_reason, p2, partials,
                                    language, precise, row_argmax, scan_kernels as kernels, splits, temp_bits)

MAX_UNMASK_L = 128  # unmask keeps an L x L comparison in registers


def supports_sample(logits, temperature, seed, offset):
    return device_reason(logits, seed, offset) or float_reason(logits)


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
    return device_reason(logits, seed, offset) or float_reason(logits)


def diffusion_confidence(logits, temperature, seed, offset):
    B, L, V = logits.shape
    dev = logits.device
    x0 = torch.empty((B, L), dtype=torch.int64, device=dev)
    conf = torch.empty((B, L), dtype=logits.dtype, device=dev)
    if B * L == 0:
        return x0, conf
    tl, K = language(), kernels()
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
