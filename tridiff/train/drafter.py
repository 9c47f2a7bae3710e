"""The drafter adapter's network, masking schedule and loss (the base network frozen).

The adapter is the released `linear_spec_lora`: a LoRA on every layer's o_proj,
delta = (alpha / r) * B @ A, applied in the draft forwards only (tridiff.model: the
BIDIR_BLOCK passes of linear self-speculation and of block diffusion), never in
prefill, commit, verify or the QUADRATIC forward. Training mirrors that in the
two-stream layout of tridiff.train.objective:

  clean stream  x, token-causal, base weights only (no adapter): the committed
                context a draft attends to, and the AR teacher's logits
  noisy stream  x with masks, block-bidirectional, attending to the clean stream of
                earlier blocks, with the adapter on: the draft forward

Only the noisy stream carries gradients (the clean one runs under no_grad), so a step
costs about one clean forward plus one noisy forward and backward.

Schedule (per block of L tokens; block position 0 is the seed, always clean, as in
every draft forward the decoders make: linear and diffusion blocks start [seed, MASK..]):
  linear     positions 1..L-1 all masked: every one-forward linear draft, and the
             first pass of every threshold draft and diffusion block
  prefix     positions 1..k clean, k+1..L-1 masked (k uniform in 1..L-2): later
             threshold passes, which fill confident positions, mostly near the seed
  scattered  positions 1..L-1 masked with probability t ~ U(0, 1) each (at least one):
             threshold passes that filled out of order
The all-mask block (the quadratic draft, t = 1 without a seed) is left out: the
adapter is off in the QUADRATIC forward, so it never sees that regime.

Targets: "ar" (default) is the frozen AR model's own next-token distribution at the
previous clean row (self-distillation: a draft is accepted when it equals what the AR
verify picks, not when it equals the data); "data" is the masked token itself (the
plain masked-diffusion cross-entropy). Block 0 of a window (no context at all, unlike
any draft at decode time) is left out of the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tridiff.checkpoint import adapter_key
from tridiff.rotary import apply_rotary, cos_sin, llama4_query_scale, yarn_inv_freq
from tridiff.train.network import TrainNetwork
from tridiff.train.objective import two_stream_mask

SCHEDULES = ("linear", "prefix", "scattered")
TARGETS = ("ar", "data")


class DrafterLora(nn.Module):
    """One LoRA pair per layer: A [r, q_size] (PEFT's Kaiming-uniform start), B [hidden, r]
    (zeros, so the adapter starts as the base model's drafts)."""

    def __init__(self, config, rank: int, alpha: float, seed: int = 0):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
        self.rank, self.alpha = rank, float(alpha)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(config.q_size)
        n = config.num_hidden_layers
        self.A = nn.ParameterList(nn.Parameter((torch.rand(rank, config.q_size, generator=gen) * 2 - 1) * bound)
                                  for _ in range(n))
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(config.hidden_size, rank)) for _ in range(n))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, i: int, o: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(o, self.A[i]), self.B[i])

    def adapter_tensors(self) -> dict:
        """{checkpoint adapter key: float32 tensor}, the layout tridiff.checkpoint reads."""
        out = {}
        for i in range(len(self.A)):
            out[adapter_key(i, "A")] = self.A[i].detach().float().clone()
            out[adapter_key(i, "B")] = self.B[i].detach().float().clone()
        return out


def _qkv(attn, h, cos, sin, q_scale):
    c, (B, S, _) = attn.c, h.shape
    q = apply_rotary(attn.q_proj(h).view(B, S, c.num_attention_heads, c.head_dim), cos, sin) * q_scale
    k = apply_rotary(attn.k_proj(h).view(B, S, c.num_key_value_heads, c.head_dim), cos, sin)
    v = attn.v_proj(h).view(B, S, c.num_key_value_heads, c.head_dim)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def draft_hidden(net: TrainNetwork, lora: DrafterLora, noisy: torch.Tensor, clean: torch.Tensor, block: int):
    """(draft hidden [B, S, H] of the noisy stream with the adapter, clean hidden [B, S, H]
    without it, no grad), both after the final norm. noisy/clean [B, S] token ids."""
    c = net.config
    B, S = clean.shape
    pos = torch.arange(S)[None, :]
    dtype = net.diffusion_head.weight.dtype
    cos, sin = cos_sin(pos, yarn_inv_freq(c, dtype), c.attention_factor, dtype)
    q_scale = llama4_query_scale(pos, c.llama_4_scaling_beta, c.original_max_position_embeddings, dtype)
    full = two_stream_mask(S, block)
    noisy_mask, clean_mask = full[:S], full[S:, S:]   # [S, 2S] (noisy | clean keys), [S, S]
    enc = net.encoder
    with torch.no_grad():
        xc = enc.embed_tokens(clean)
    xn = enc.embed_tokens(noisy)
    for i, layer in enumerate(enc.layers):
        attn = layer.self_attn
        with torch.no_grad():
            qc, kc, vc = _qkv(attn, layer.input_layernorm(xc), cos, sin, q_scale)
            oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=clean_mask, enable_gqa=True)
            xc = xc + attn.o_proj(oc.transpose(1, 2).reshape(B, S, c.q_size))
            xc = xc + layer.mlp(layer.post_attention_layernorm(xc))
        qn, kn, vn = _qkv(attn, layer.input_layernorm(xn), cos, sin, q_scale)
        on = F.scaled_dot_product_attention(qn, torch.cat((kn, kc), 2), torch.cat((vn, vc), 2),
                                            attn_mask=noisy_mask, enable_gqa=True)
        on = on.transpose(1, 2).reshape(B, S, c.q_size)
        xn = xn + attn.o_proj(on) + lora.delta(i, on)
        xn = xn + layer.mlp(layer.post_attention_layernorm(xn))
    with torch.no_grad():
        xc = enc.norm(xc)
    return enc.norm(xn), xc


def sample_masks(batch: int, seq_len: int, block: int, mix: dict, generator=None) -> torch.Tensor:
    """masked [B, S] bool: each block of `block` tokens draws one schedule from `mix`
    ({name: weight} over SCHEDULES); block position 0 is never masked."""
    if seq_len % block or block < 3:
        raise ValueError(f"block: expected >= 3 dividing seq_len={seq_len}, got {block}")
    bad = set(mix) - set(SCHEDULES)
    if bad or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix: expected non-negative weights over {SCHEDULES}, got {mix}")
    nb = seq_len // block
    weights = torch.tensor([float(mix.get(s, 0.0)) for s in SCHEDULES])
    kind = torch.multinomial(weights, batch * nb, replacement=True, generator=generator).view(batch, nb, 1)
    j = torch.arange(block).view(1, 1, block)
    k = torch.randint(1, block - 1, (batch, nb, 1), generator=generator)   # prefix: clean 1..k
    t = torch.rand(batch, nb, 1, generator=generator)
    scattered = torch.rand(batch, nb, block, generator=generator) < t
    scattered[..., -1] |= ~scattered[..., 1:].any(-1)   # at least one mask
    masked = torch.where(kind == 0, j >= 1, torch.where(kind == 1, j > k, scattered))
    masked[..., 0] = False
    return masked.reshape(batch, seq_len)


@dataclass
class DraftBatch:
    noisy: torch.Tensor    # [B, S]
    clean: torch.Tensor    # [B, S]
    masked: torch.Tensor   # [B, S] bool, rows the loss reads (block 0 excluded)


def make_draft_batch(windows: torch.Tensor, block: int, mask_id: int, mix: dict, generator=None) -> DraftBatch:
    """windows [B, S] token ids (S a multiple of block)."""
    B, S = windows.shape
    masked = sample_masks(B, S, block, mix, generator)
    noisy = torch.where(masked, torch.full_like(windows, mask_id), windows)
    masked = masked.clone()
    masked[:, :block] = False   # block 0: no committed context
    return DraftBatch(noisy, windows, masked)


def draft_loss(net: TrainNetwork, lora: DrafterLora, batch: DraftBatch, block: int, target: str = "ar",
               position_decay: float = 1.0):
    """(loss, stats) for one batch: the weighted mean over masked rows of the cross-entropy
    of the draft against the target (see the module doc), block position j weighted by
    position_decay ** (j - 1): a verify reaches position j only after accepting 1..j-1, so
    a decay < 1 spends the adapter on the positions that are reached. stats: draft/teacher
    top-1 agreement
    and the teacher-forced accepted length per block (leading masked positions after the
    seed whose draft argmax equals the AR argmax), for linear blocks."""
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")
    if not 0 < position_decay <= 1:
        raise ValueError(f"position_decay: expected a number in (0, 1], got {position_decay!r}")
    hn, hc = draft_hidden(net, lora, batch.noisy, batch.clean, block)
    rows = batch.masked.nonzero(as_tuple=True)
    head = net.diffusion_head
    draft = head(hn[rows]).float()
    prev = (rows[0], rows[1] - 1)   # row i - 1 of the clean stream predicts token i
    with torch.no_grad():
        teacher = head(hc[prev]).float()
    if target == "ar":
        ce = -(teacher.softmax(-1) * draft.log_softmax(-1)).sum(-1)
    else:
        ce = F.cross_entropy(draft, batch.clean[rows], reduction="none")
    weight = position_decay ** ((rows[1] % block) - 1).to(ce.dtype)
    loss = (weight * ce).sum() / weight.sum()
    with torch.no_grad():
        agree = draft.argmax(-1) == teacher.argmax(-1)
        hit = torch.zeros_like(batch.masked)
        hit[rows] = agree
        B, S = batch.masked.shape
        # per block: leading positions 1.. that are masked and agree
        run = (hit | ~batch.masked).view(B, S // block, block)[..., 1:]
        lead = run.int().cumprod(-1).sum(-1)
        linear = batch.masked.view(B, S // block, block)[..., 1:].all(-1)
        stats = {"agree": float(agree.float().mean()),
                 "accepted": float(lead[linear].float().mean()) if bool(linear.any()) else float("nan")}
    return loss, stats
