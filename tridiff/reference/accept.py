"""Reference acceptance of speculative drafts (docs/spec.md section 3).

All three rules return, per row, a 6-tuple; for the linear / rejection rules it is
    (n_accepted int32 [B], tokens int64 [B, n+1], n_emitted int32 [B],
     next_token int64 [B], new_cache_lens int32 [B], hit_eos bool [B])
and the quadratic rule puts next_draft int64 [B, L] in place of next_token and emits
tokens [B, L]. n_accepted = accepted drafts + 1 (the seed / correction / bonus);
tokens hold the emitted tokens, -1 after n_emitted; n_emitted is n_accepted cut right
after the first eos (eos_id = -1: no eos handling); new_cache_lens = cache_lens +
n_accepted (eos does not change what the cache keeps).

Leading-accept counts use cumprod of the per-position matches, row selections use
gather / tensor indexing: no host synchronisation, no loop over rows.
"""
from __future__ import annotations

from typing import Optional

import torch

from tridiff.reference.philox import ACCEPT, RESIDUAL, SAMPLE, uniform
from tridiff.reference.sample import const, gumbel_argmax, sample


def _leading(match: torch.Tensor) -> torch.Tensor:
    """Number of leading True per row of a bool [B, n] tensor (int64 [B])."""
    return match.long().cumprod(dim=1).sum(dim=1)


def _finish(tokens: torch.Tensor, n_accepted: torch.Tensor, eos_id: int):
    """Mask tokens [B, m] to the emitted prefix; returns (tokens, n_emitted, hit_eos)."""
    m = tokens.shape[1]
    live = torch.arange(m, device=tokens.device)[None, :] < n_accepted[:, None]
    is_eos = live & (tokens == eos_id) if eos_id >= 0 else torch.zeros_like(live)
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # eos strictly earlier
    emitted = live & (eos_before == 0)
    out = torch.where(emitted, tokens, torch.full_like(tokens, -1))
    return out, emitted.sum(dim=1).to(torch.int32), (is_eos & emitted).any(dim=1)


def _result(tokens_full, n_accepted, next_token, cache_lens, eos_id):
    tokens, n_emitted, hit_eos = _finish(tokens_full, n_accepted, eos_id)
    new_lens = (cache_lens.long() + n_accepted).to(torch.int32)
    return n_accepted.to(torch.int32), tokens, n_emitted, next_token, new_lens, hit_eos


def accept_linear(target_logits: torch.Tensor, draft_tokens: torch.Tensor, cache_lens: torch.Tensor,
                  eos_id: int, temperature: float, seed: Optional[torch.Tensor],
                  offset: Optional[torch.Tensor]):
    """Linear verify: ar[i] = sample(target_logits[b, i]) (argmax at T == 0, the SAMPLE-stream
    Gumbel sample at t = i otherwise); accept the leading drafts with ar[i] == draft[i];
    emit ar[0..c] and continue from ar[c]."""
    n = draft_tokens.shape[1]
    ar = sample(target_logits, temperature, seed, offset)  # [B, n+1]
    c = _leading(ar[:, :n] == draft_tokens)
    next_token = ar.gather(1, c[:, None]).squeeze(1)
    return _result(ar, c + 1, next_token, cache_lens, eos_id)


def _probs_at(logits_scaled, m, s, idx):
    """softmax probabilities exp(x - max) / sum at the vocabulary ids idx [B, k] of rows [B, k, V]."""
    return (logits_scaled.gather(-1, idx[..., None]) - m).exp().squeeze(-1) / s.squeeze(-1)


def accept_rejection(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft_tokens: torch.Tensor,
                     cache_lens: torch.Tensor, eos_id: int, temperature: float,
                     seed: Optional[torch.Tensor], offset: Optional[torch.Tensor]):
    """Lossless speculative sampling (accept x with probability min(1, p_t(x) / p_d(x)),
    resample the first rejection from max(0, p_t - p_d), bonus from p_t(n)).

    p = softmax(float32(logits) / T) as exp(x - max) / sum(exp(x - max)), float32.
    Coin of position i: u = uniform(seed, 0, i, ACCEPT, offset); accept iff u * p_d < p_t.
    Residual: argmax over r > 0 of log(r_v) + gumbel(seed, v, i, RESIDUAL, offset), r not
    normalised (all-zero r: p_t(i) in its place). Bonus: the SAMPLE-stream sample at t = n.
    T == 0 is accept_linear's greedy rule.
    """
    if temperature == 0.0:
        return accept_linear(target_logits, draft_tokens, cache_lens, eos_id, 0.0, None, None)
    B, n1, V = target_logits.shape
    n = n1 - 1
    dev = target_logits.device
    seed, offset = seed.long(), offset.long()
    temp = const(temperature, dev, torch.float32)
    bonus = gumbel_argmax(target_logits[:, n], seed, torch.full((B,), n, device=dev), SAMPLE, offset,
                          temperature)
    if n == 0:
        return _result(bonus[:, None], torch.ones_like(bonus), bonus, cache_lens, eos_id)

    lt = target_logits[:, :n].float() / temp  # [B, n, V]
    ld = draft_logits.float() / temp
    mt, md = lt.amax(-1, keepdim=True), ld.amax(-1, keepdim=True)
    st = (lt - mt).exp().sum(-1, keepdim=True)
    sd = (ld - md).exp().sum(-1, keepdim=True)
    pt_x = _probs_at(lt, mt, st, draft_tokens)  # [B, n]
    pd_x = _probs_at(ld, md, sd, draft_tokens)
    i = torch.arange(n, device=dev)[None, :]
    u = uniform(seed[:, None], const(0, dev), i, const(ACCEPT, dev), offset[:, None])
    c = _leading(u * pd_x < pt_x)  # [B]

    # Residual at the first rejected position (computed for every row, used where c < n).
    rows = torch.arange(B, device=dev)
    ci = c.clamp(max=n - 1)
    pt_c = (lt[rows, ci] - mt[rows, ci]).exp() / st[rows, ci]  # [B, V]
    pd_c = (ld[rows, ci] - md[rows, ci]).exp() / sd[rows, ci]
    r = (pt_c - pd_c).clamp(min=0)
    r = torch.where((r > 0).any(dim=1, keepdim=True), r, pt_c)
    corr = gumbel_argmax(torch.log(r), seed, ci, RESIDUAL, offset)
    final = torch.where(c == n, bonus, corr)
    tokens = torch.cat([draft_tokens.long(), final[:, None]], dim=1).scatter(1, c[:, None], final[:, None])
    return _result(tokens, c + 1, final, cache_lens, eos_id)


def accept_quadratic(logits: torch.Tensor, draft: torch.Tensor, cache_lens: torch.Tensor, eos_id: int):
    """Quadratic verify of draft d [B, L] from logits [B, L*(L+1), V] viewed [B, L, L+1, V]:
    pred[a, b] = argmax(logits[a, b]) with slot 1 replaced by slot 0 (the AR prediction
    after d_a). accepted = 1 + leading a < L-1 with pred[a, 0] == d[a+1]; emits
    d[:accepted]; next_draft = pred[accepted-1, 1:]."""
    B, S, V = logits.shape
    L = draft.shape[1]
    view = logits.reshape(B, L, L + 1, V)
    ar = torch.argmax(view[:, :, 0], dim=-1)  # pred[a, 0], [B, L]
    n_acc = 1 + _leading(ar[:, :L - 1] == draft[:, 1:])
    last = n_acc - 1
    rows = torch.arange(B, device=logits.device)
    rest = torch.argmax(view[rows, last, 2:], dim=-1)  # pred[acc-1, 2..L], [B, L-1]
    next_draft = torch.cat([ar.gather(1, last[:, None]), rest], dim=1)
    return _result(draft.long(), n_acc, next_draft, cache_lens, eos_id)
