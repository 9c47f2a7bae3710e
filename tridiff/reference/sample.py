"""Reference token selection: greedy / Gumbel-max sampling, diffusion x0 and confidence,
confidence-ranked unmasking.

Layouts: logits [B, T, V] (any float dtype), seed / offset int64 [B], token ids int64.
Everything is whole-tensor torch code without host synchronisation; the noise over the
vocabulary is generated a bounded number of rows at a time so CPU memory stays small
for a 130k vocabulary.

Bit-level definitions every backend reproduces (see tridiff.reference.philox):
  * temperature division: float32(logits) / float32(T), correctly rounded (IEEE `/`,
    not a multiplication by 1/T; Triton: tl.math.div_rn).
  * sample, T > 0:  argmax_v(float32(logits)/T + gumbel(seed, v, t, SAMPLE, offset)), float32 add.
  * diffusion x0, T > 0: argmax_v(float64(logits) - T * log(-log(float64(u)))),
    u = uniform(seed, v, t, DIFFUSION, offset), all float64.
  * ties (equal scores) go to the lowest id; torch.argmax returns the first maximum.
"""
from __future__ import annotations

from typing import Optional

import torch

from tridiff.reference.philox import DIFFUSION, SAMPLE, gumbel, uniform

# Elements of vocabulary-wide noise materialised at once (bounds memory, not a tuning knob).
CHUNK_ELEMENTS = 1 << 20


def _row_chunks(n_rows: int, V: int):
    step = max(1, CHUNK_ELEMENTS // max(V, 1))
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def const(value, device, dtype=torch.int64) -> torch.Tensor:
    """A 0-dim device tensor made by a fill, not copied from the host: torch.tensor(x,
    device="cuda") would synchronise the stream (and break CUDA graph capture)."""
    return torch.full((), value, dtype=dtype, device=device)


def _per_position(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B] -> [B*T], row b repeated T times (flattened position order b*T + t)."""
    return x.long()[:, None].expand(x.shape[0], T).reshape(-1)


def gumbel_argmax(x: torch.Tensor, seed: torch.Tensor, t: torch.Tensor, stream: int,
                  offset: torch.Tensor, temperature: Optional[float] = None) -> torch.Tensor:
    """Per row r of x [N, V]: argmax_v(s[r, v] + gumbel(seed[r], v, t[r], stream, offset[r])),
    s = float32(x) / temperature, or x itself (already float) when temperature is None.
    seed, t, offset: [N] integer tensors. Returns int64 [N]."""
    N, V = x.shape
    out = torch.empty(N, dtype=torch.int64, device=x.device)
    v = torch.arange(V, device=x.device)[None, :]
    temp = None if temperature is None else const(temperature, x.device, torch.float32)
    stream_t = const(stream, x.device)
    for s, e in _row_chunks(N, V):
        scores = x[s:e].float() / temp if temp is not None else x[s:e]
        g = gumbel(seed[s:e, None], v, t[s:e, None], stream_t, offset[s:e, None])
        out[s:e] = torch.argmax(scores + g, dim=-1)
    return out


def sample(logits: torch.Tensor, temperature: float, seed: Optional[torch.Tensor],
           offset: Optional[torch.Tensor]) -> torch.Tensor:
    """Token per position of logits [B, T, V] -> int64 [B, T]. T == 0: argmax (lowest id on
    ties). T > 0: Gumbel-max with the SAMPLE stream at counter (v, t, SAMPLE, offset[b])."""
    B, T, V = logits.shape
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    t = torch.arange(T, device=logits.device).repeat(B)
    out = gumbel_argmax(logits.reshape(B * T, V), _per_position(seed, T), t, SAMPLE,
                        _per_position(offset, T), temperature)
    return out.view(B, T)


def diffusion_confidence(logits: torch.Tensor, temperature: float, seed: Optional[torch.Tensor],
                         offset: Optional[torch.Tensor]):
    """x0 int64 [B, L] and conf [B, L] (logits.dtype) for logits [B, L, V].

    x0: argmax (T == 0; the mask id is not excluded) or float64 Gumbel-max noise with the
    DIFFUSION stream (T > 0). conf = softmax(logits)[x0] computed in float32 (float64 for
    float64 logits) and cast to logits.dtype; the temperature never enters conf.
    """
    B, L, V = logits.shape
    flat = logits.reshape(B * L, V)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if temperature == 0.0:
        x0 = torch.argmax(flat, dim=-1)
    else:
        x0 = torch.empty(B * L, dtype=torch.int64, device=logits.device)
        seed_r, off_r = _per_position(seed, L), _per_position(offset, L)
        t = torch.arange(L, device=logits.device).repeat(B)
        v = torch.arange(V, device=logits.device)[None, :]
        stream = const(DIFFUSION, logits.device)
        for s, e in _row_chunks(B * L, V):
            u = uniform(seed_r[s:e, None], v, t[s:e, None], stream, off_r[s:e, None]).double()
            scores = flat[s:e].double() - temperature * torch.log(-torch.log(u))
            x0[s:e] = torch.argmax(scores, dim=-1)
    conf = torch.empty(B * L, dtype=acc, device=logits.device)
    for s, e in _row_chunks(B * L, V):
        p = torch.softmax(flat[s:e].to(acc), dim=-1)
        conf[s:e] = p.gather(1, x0[s:e, None]).squeeze(1)
    return x0.view(B, L), conf.to(logits.dtype).view(B, L)


def candidate_rank(cand: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """rank[b, i] = number of candidates j that come before position i in the order
    (conf descending, position ascending). int64 [B, L]; rank 0 = the best candidate."""
    L = conf.shape[1]
    pos = torch.arange(L, device=conf.device)
    cj, ci = conf[:, None, :], conf[:, :, None]
    earlier = pos[None, None, :] < pos[None, :, None]
    beats = cand[:, None, :] & ((cj > ci) | ((cj == ci) & earlier))
    return beats.sum(dim=-1)


def diffusion_unmask(block: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, mask_id: int,
                     threshold: Optional[float], num_transfer: Optional[torch.Tensor]):
    """Unmask the most confident masked positions of block [B, L].

    Candidates are positions holding mask_id. With a threshold: the best candidate plus
    every candidate with conf >= threshold (compared in conf's dtype, i.e. threshold
    rounded to that dtype, as `conf >= threshold` does in PyTorch). Otherwise the top
    num_transfer[b] candidates (fewer if the row has fewer). Ties: lower position first.
    Returns (new_block int64 [B, L], transferred bool [B, L]).
    """
    cand = block == mask_id
    rank = candidate_rank(cand, conf)
    if threshold is not None:
        thr = const(threshold, conf.device, conf.dtype)
        transferred = cand & ((rank == 0) | (conf >= thr))
    else:
        transferred = cand & (rank < num_transfer.long()[:, None])
    return torch.where(transferred, x0, block), transferred


def num_transfer_schedule(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """int32 [B, steps]: an even split of mask_counts[b] over steps, the first
    mask_counts[b] % steps steps getting one more."""
    counts = mask_counts.long()
    base = torch.div(counts, steps, rounding_mode="floor")
    extra = torch.arange(steps, device=counts.device)[None, :] < (counts - base * steps)[:, None]
    return (base[:, None] + extra).to(torch.int32)
