"""The joint training objective of the family (AR + masked block diffusion) in the
two-stream layout.

A training sequence x of S tokens (S a multiple of the block length L) becomes one
input of 2S tokens, [noisy | clean]: the clean half is x, the noisy half is x with
each token replaced by the mask id with probability t, where t ~ U(eps, 1) is drawn
once per block. Both halves take rotary positions 0..S-1, so a noisy token sits at
the position of the clean token it stands for.

Attention (True = may attend):
  clean row i    -> clean key j <= i                       (token-causal)
  noisy row i    -> noisy key j in the same block           (bidirectional in the block)
                 -> clean key j in a strictly earlier block (the committed context)

loss = AR cross-entropy of the clean rows (row i predicts x[i+1])
     + w * sum over masked noisy rows of CE(row i, x[i]) / t_block, divided by the
       number of tokens (the usual 1/t-weighted masked-diffusion bound).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_EPS = 1e-3


def two_stream_mask(seq_len: int, block: int, device=None) -> torch.Tensor:
    """[2S, 2S] bool: rows/keys 0..S-1 are the noisy copy, S..2S-1 the clean one."""
    if seq_len % block:
        raise ValueError(f"seq_len: expected a multiple of block={block}, got {seq_len}")
    i = torch.arange(seq_len, device=device)
    blk = i // block
    clean_causal = i[None, :] <= i[:, None]
    noisy_self = blk[None, :] == blk[:, None]
    noisy_to_clean = blk[None, :] < blk[:, None]
    never = torch.zeros(seq_len, seq_len, dtype=torch.bool, device=device)
    top = torch.cat((noisy_self, noisy_to_clean), dim=1)
    bottom = torch.cat((never, clean_causal), dim=1)
    return torch.cat((top, bottom), dim=0)


def two_stream_positions(seq_len: int, device=None) -> torch.Tensor:
    i = torch.arange(seq_len, device=device)
    return torch.cat((i, i))


def sample_noise(batch: int, seq_len: int, block: int, *, eps: float = DEFAULT_EPS, power: float = 1.0,
                 generator: torch.Generator | None = None):
    """(masked [B, S] bool, t [B, S] float: each token's block masking rate).
    t = eps + (1 - eps) u^(1/power), u ~ U(0, 1): power 1 is the uniform rate of the
    family's objective; power p > 1 skews the rates toward 1 (density ~ t^(p-1)), the
    regime of self-speculation's drafts (a clean seed and 15 masks, or an all-mask block).
    The 1/t weight of joint_loss keeps each masked token's term the bound's at its t."""
    if power <= 0:
        raise ValueError(f"power: expected > 0, got {power}")
    blocks = seq_len // block
    u = torch.rand(batch, blocks, generator=generator)
    t = eps + (1 - eps) * (u if power == 1.0 else u.pow(1.0 / power))
    t = t.repeat_interleave(block, dim=1)
    masked = torch.rand(batch, seq_len, generator=generator) < t
    return masked, t


@dataclass
class Batch:
    inputs: torch.Tensor    # [B, 2S] noisy | clean token ids
    clean: torch.Tensor     # [B, S]
    next_tokens: torch.Tensor  # [B, S] AR targets (clean shifted by one)
    masked: torch.Tensor    # [B, S] bool
    t: torch.Tensor         # [B, S]


def make_batch(windows: torch.Tensor, block: int, mask_id: int, *, eps: float = DEFAULT_EPS,
               power: float = 1.0, generator: torch.Generator | None = None) -> Batch:
    """windows [B, S + 1] int64 token ids (the extra token is the last AR target)."""
    clean, nxt = windows[:, :-1], windows[:, 1:]
    B, S = clean.shape
    masked, t = sample_noise(B, S, block, eps=eps, power=power, generator=generator)
    noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
    return Batch(torch.cat((noisy, clean), dim=1), clean, nxt, masked, t)


def joint_loss(logits: torch.Tensor, batch: Batch, diffusion_weight: float):
    """(loss, ar_loss, diffusion_loss) from logits [B, 2S, V] of the two-stream input.
    With diffusion_weight 0 the noisy half is ignored (pure AR training)."""
    B, S = batch.clean.shape
    V = logits.shape[-1]
    ar = F.cross_entropy(logits[:, S:].reshape(-1, V).float(), batch.next_tokens.reshape(-1))
    if diffusion_weight == 0:
        return ar, ar.detach(), torch.zeros(())
    ce = F.cross_entropy(logits[:, :S].reshape(-1, V).float(), batch.clean.reshape(-1), reduction="none")
    weights = batch.masked.reshape(-1).float() / batch.t.reshape(-1)
    diff = (ce * weights).sum() / (B * S)
    return ar + diffusion_weight * diff, ar.detach(), diff.detach()
