"""Anchor arithmetic of pruned quadratic self-speculation (docs/spec.md section 3.5).

Pure index math on small [B, L] / [B, k, L] tensors, device-side and without host
reads, so an iteration that uses it stays graph-capturable. Anchors are int64 [B, k],
sorted ascending per row, anchor 0 always present.
"""
from __future__ import annotations

import torch


def acceptance_scores(conf: torch.Tensor) -> torch.Tensor:
    """float32 [B, L]: estimated P(accepted = a + 1) for a = 0..L-1 from the draft's
    confidences conf [B, L] (conf[:, j] = the drafter's probability of d_j; conf[:, 0]
    is not used: d_0 is always accepted). P(a+1) ~ c_1...c_a (1 - c_{a+1}), c_L = 0."""
    c = conf.float()[:, 1:].clamp(0.0, 1.0)                              # c_1 .. c_{L-1}
    ones = torch.ones_like(c[:, :1])
    reach = torch.cat([ones, torch.cumprod(c, dim=1)], dim=1)            # P(accepted >= a+1)
    stop = torch.cat([1.0 - c, ones], dim=1)                             # P(d_{a+1} rejected)
    return reach * stop


def choose_anchors(conf: torch.Tensor, k: int) -> torch.Tensor:
    """The k most likely acceptance lengths minus one, anchor 0 forced: int64 [B, k],
    ascending. Ties go to the smaller anchor (a stable sort), so the choice is a pure
    function of the row's own confidences."""
    score = acceptance_scores(conf)
    score[:, 0] = 2.0                                                    # above any probability
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def fixed_anchors(anchors: tuple, batch: int, device) -> torch.Tensor:
    """A fixed anchor set for every row: int64 [B, k]."""
    return torch.tensor(sorted(anchors), dtype=torch.int64, device=device)[None, :].repeat(batch, 1)


def anchor_bitmask(anchors: torch.Tensor) -> torch.Tensor:
    """ANCHORED_QUADRATIC mode_args: int32 [B], bit a set for every anchor a (bit 31 is
    the int32 sign bit, as tridiff.modes reads the mask as uint32)."""
    bits = (torch.ones_like(anchors) << anchors).sum(dim=1)            # distinct bits: sum == or
    return torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits).to(torch.int32)


def slot_offsets(anchors: torch.Tensor, L: int) -> torch.Tensor:
    """Position offsets from P of the L + kL new tokens, int64 [B, L(k+1)]: clean slot i
    at i, slot i of anchor a's group at a + 1 + i."""
    B, k = anchors.shape
    i = torch.arange(L, device=anchors.device)
    groups = (anchors[:, :, None] + 1 + i[None, None, :]).reshape(B, k * L)
    return torch.cat([i[None, :].expand(B, L), groups], dim=1)


def next_draft(first: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, anchors: torch.Tensor,
               n_accepted: torch.Tensor, mask_id: int):
    """The next draft and its confidences after n tokens were accepted.

    first [B]: the AR prediction after clean slot n-1 (the next draft's token 0);
    x0, conf [B, k, L]: the diffusion reading of each anchor group's L slots.
    Draft token j >= 1 sits at position P+n+j. The largest anchor a' <= n-1 covers
    positions P+a'+1 .. P+a'+L with its slots 0..L-1, so token j is its slot
    (n-1-a') + j when that is < L; past it the token is the mask id with confidence 0.
    Returns (draft int64 [B, L], conf [B, L] in conf's dtype; conf[:, 0] = 1).
    """
    B, k, L = x0.shape
    last = (n_accepted.long() - 1)[:, None]
    g = ((anchors <= last).sum(dim=1, keepdim=True) - 1).clamp(min=0)  # anchor 0 is always there
    a = anchors.gather(1, g)
    src = last - a + torch.arange(1, L, device=x0.device)[None, :]       # [B, L-1]
    inside = src < L
    src = src.clamp(max=L - 1)
    group_tok = x0.gather(1, g[:, :, None].expand(B, 1, L)).squeeze(1)
    group_conf = conf.gather(1, g[:, :, None].expand(B, 1, L)).squeeze(1)
    tail = torch.where(inside, group_tok.gather(1, src), torch.full_like(src, mask_id))
    tail_conf = torch.where(inside, group_conf.gather(1, src), torch.zeros_like(group_conf[:, 1:]))
    draft = torch.cat([first.long()[:, None], tail], dim=1)
    return draft, torch.cat([torch.ones_like(tail_conf[:, :1]), tail_conf], dim=1)
