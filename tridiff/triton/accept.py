"""Triton launchers for accept_linear, accept_quadratic and accept_rejection.

Every rule is pass 1 (stream the needed logits rows once, vocabulary split in ranges
as in tridiff.triton._common) + one program per batch row that finishes on the device:
  linear     B*(n+1) rows argmax/Gumbel -> finish (prefix count, tokens, eos, next)
  quadratic  only the 2L-1 rows that matter are read: the L slot-0 rows, then the L-1
             rows of the last accepted sub-block (found on the device) -> finish
  rejection  online (max, sum) of B*n target and B*n draft rows at temperature T plus
             the bonus row's Gumbel-max -> at the first rejected position only, the
             residual Gumbel-max over the vocabulary (rows that accepted everything
             skip it) -> finish
Outputs in AcceptResult order; no host synchronisation.
"""
from __future__ import annotations

import torch

from tridiff.triton._common import (NUM_WARPS, acc_dtype, block_v, device_reason, float_reason, p2, partials,
                                    precise, row_argmax, splits, temp_bits)


def _kernels():
    # imported on first launch: importing tridiff (and this module) needs no triton
    from tridiff.kernels import accept
    return accept

MAX_POSITIONS = 1024  # n+1 (or L) positions live in one program's registers


def _outputs(B, m, dev, next_shape=()):
    """Fresh (n_acc, tokens [B, m], n_emitted, next [B, *next_shape], new_cache_lens, hit_eos)."""
    return (torch.empty(B, dtype=torch.int32, device=dev), torch.empty((B, m), dtype=torch.int64, device=dev),
            torch.empty(B, dtype=torch.int32, device=dev), torch.empty((B, *next_shape), dtype=torch.int64, device=dev),
            torch.empty(B, dtype=torch.int32, device=dev), torch.empty(B, dtype=torch.bool, device=dev))


def _accept_outputs(target_logits):
    """(B, n drafts, V, fresh AcceptResult-ordered outputs) of target_logits [B, n+1, V]."""
    B, n1, V = target_logits.shape
    return B, n1 - 1, V, _outputs(B, n1, target_logits.device)


def supports_accept_linear(target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
    reason = device_reason(target_logits, draft_tokens, cache_lens, seed, offset) or float_reason(target_logits)
    if reason is None and target_logits.shape[1] > MAX_POSITIONS:
        reason = f"more than {MAX_POSITIONS} positions"
    return reason


def accept_linear(target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
    B, n, V, outs = _accept_outputs(target_logits)
    if B == 0:
        return outs
    cache_lens = cache_lens.contiguous()
    _, pv, pi, S = row_argmax(target_logits, temperature, seed, offset, part=True)
    n_acc, tokens, n_emit, nxt, new_lens, hit = outs
    draft = draft_tokens.long().contiguous()
    _kernels().linear_finish_kernel[(B,)](pv, pi, draft, cache_lens, n_acc, tokens, n_emit, nxt, new_lens, hit, n, S,
                                 int(eos_id), draft.stride(0), tokens.stride(0), BLOCK_N1=p2(n + 1), BLOCK_S=p2(S))
    return outs


def supports_accept_quadratic(logits, draft, cache_lens, eos_id):
    reason = device_reason(logits, draft, cache_lens) or float_reason(logits)
    if reason is None and draft.shape[1] > MAX_POSITIONS:
        reason = f"block length > {MAX_POSITIONS}"
    return reason


def accept_quadratic(logits, draft, cache_lens, eos_id):
    B, _, V = logits.shape
    L = draft.shape[1]
    dev = logits.device
    outs = _outputs(B, L, dev, next_shape=(L,))
    if B == 0:
        return outs
    cache_lens = cache_lens.contiguous()
    n_acc, tokens, n_emit, next_draft, new_lens, hit = outs
    view = logits.view(B, L, L + 1, V) if logits.is_contiguous() else logits.reshape(B, L, L + 1, V)
    _, pv, pi, S1 = row_argmax(view[:, :, 0], 0.0, None, None, part=True)
    draft = draft.long().contiguous()
    s_b, s_t, s_v = view.stride(0), view.stride(2), view.stride(3)  # s_t: one slot
    K = _kernels()
    acc = acc_dtype(logits)
    rows2 = B * (L - 1)
    S2, split_len = splits(max(rows2, 1), V, dev)
    pv2, pi2 = partials(max(rows2, 1), S2, dev, torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if rows2 > 0:
        K.quadratic_rows_kernel[(rows2, S2)](view, pv, pi, draft, pv2, pi2, L, V, split_len, s_b, s_t, s_v,
                                             draft.stride(0), S1, ACC=acc, BLOCK_V=block_v(), BLOCK_L=p2(L),
                                             BLOCK_S=p2(max(S1, S2)), num_warps=NUM_WARPS)
    K.quadratic_finish_kernel[(B,)](pv, pi, pv2, pi2, draft, cache_lens, n_acc, tokens, n_emit, next_draft,
                                    new_lens, hit, L, S1, S2, int(eos_id), draft.stride(0), tokens.stride(0),
                                    next_draft.stride(0), BLOCK_L=p2(L), BLOCK_S=p2(max(S1, S2)))
    return outs


def supports_accept_rejection(target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature,
                              seed, offset):
    reason = (device_reason(target_logits, draft_logits, draft_tokens, cache_lens, seed, offset)
              or float_reason(target_logits))
    if reason is None and draft_logits is not None and draft_logits.dtype != target_logits.dtype:
        reason = "draft_logits and target_logits must share a dtype"
    if reason is None and target_logits.shape[1] > MAX_POSITIONS:
        reason = f"more than {MAX_POSITIONS} positions"
    return reason


def accept_rejection(target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
    if temperature == 0.0:
        return accept_linear(target_logits, draft_tokens, cache_lens, eos_id, 0.0, None, None)
    B, n, V, outs = _accept_outputs(target_logits)
    if B == 0:
        return outs
    cache_lens = cache_lens.contiguous()
    dev = target_logits.device
    n_acc, tokens, n_emit, nxt, new_lens, hit = outs
    seed, offset = seed.long().contiguous(), offset.long().contiguous()
    draft = draft_tokens.long().contiguous()
    K = _kernels()
    dl = draft_logits if n > 0 else target_logits  # never read when n == 0
    acc = acc_dtype(target_logits)
    tb = temp_bits(temperature)
    strides = (*target_logits.stride(), *dl.stride())
    rows1 = B * (2 * n + 1)
    S1, len1 = splits(rows1, V, dev)
    pm = torch.empty(rows1 * S1, dtype=torch.float32, device=dev)  # per-range softmax max / sum
    ps = torch.empty_like(pm)
    bv, bi = partials(B, S1, dev)
    K.rejection_stats_kernel[(rows1, S1)](target_logits, dl, seed, offset, pm, ps, bv, bi, n, V, len1,
                                          *strides, tb, ACC=acc, PRECISE=precise(), BLOCK_V=block_v(),
                                          num_warps=NUM_WARPS)
    S2, len2 = splits(B, V, dev)
    rv, ri = partials(B, S2, dev)
    qv, qi = partials(B, S2, dev)
    ra = torch.empty(B * S2, dtype=torch.int32, device=dev)
    block_s = p2(max(S1, S2))
    if n > 0:
        K.rejection_residual_kernel[(B, S2)](target_logits, dl, draft, seed, offset, pm, ps, rv, ri, qv, qi, ra,
                                             n, V, len2, tb, *strides, draft.stride(0), S1, ACC=acc,
                                             PRECISE=precise(), BLOCK_V=block_v(), BLOCK_N=p2(n),
                                             BLOCK_S=block_s, num_warps=NUM_WARPS)
    K.rejection_finish_kernel[(B,)](target_logits, dl, draft, seed, offset, pm, ps, bv, bi, rv, ri, qv, qi, ra,
                                    cache_lens, n_acc, tokens, n_emit, nxt, new_lens, hit, n, S1, S2, int(eos_id),
                                    tb, *strides, draft.stride(0), tokens.stride(0), ACC=acc, PRECISE=precise(),
                                    BLOCK_N=p2(n), BLOCK_N1=p2(n + 1), BLOCK_S=block_s,
                                    num_warps=8)  # 4 warps spill at n=63 (255 regs); 8: 106 regs
    return outs
