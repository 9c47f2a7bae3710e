"""Test helpers for tridiff.generate: plain, cache-free transcriptions of docs/spec.md section 3,
a model wrapper that edits logits (to force acceptance, eos or the mask id), and the eos
check the self-speculative modes share.

The transcriptions recompute the whole sequence on a fresh cache for every forward
(kv="none"), with the dense per-row mask docs/spec.md describes: CAUSAL for the AR reading,
CAUSAL_THEN_BIDIR(L) for "prompt causal + block bidirectional". They share no code
with tridiff.generate.
"""
from __future__ import annotations

import torch

from tridiff import Mode


class Patched:
    """Wraps a Model: forward() runs the real model, then edit(logits, info) may change
    the logits. info: tokens, positions [B, T] (true absolute positions), modes,
    mode_args, q_lens, adapter. Every forward is recorded in .calls."""

    def __init__(self, model, edit=None):
        self._model = model
        self._edit = edit
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, tokens, cache, *, modes, mode_args=None, q_lens=None, positions=None, kv="none",
                adapter=False, backend="auto"):
        T = tokens.shape[1]
        pos = positions if positions is not None else cache.lens.long()[:, None] + torch.arange(T)
        info = dict(tokens=tokens, positions=pos.clone(), modes=Mode(int(modes)), mode_args=mode_args,
                    q_lens=q_lens, adapter=adapter)
        self.calls.append(info)
        logits = self._model.forward(tokens, cache, modes=modes, mode_args=mode_args, q_lens=q_lens,
                                     positions=positions, kv=kv, adapter=adapter, backend=backend)
        return self._edit(logits.clone(), info) if self._edit else logits


def peak(logits, b, t, token, *, second=None):
    """Make `token` the clear argmax of logits[b, t] (optionally `second` the runner-up)."""
    logits[b, t] = -20.0
    logits[b, t, token] = 20.0
    if second is not None:
        logits[b, t, second] = 16.0


def oracle_edit(conts, *, wrong=lambda p: p % 5 == 3, V):
    """Draft-side logits that predict the true greedy continuation conts[b][p] at absolute
    position p (diffusion reading), except at `wrong` positions. Applies to the linear
    draft (BIDIR_BLOCK with adapter), the quadratic block rows (CAUSAL_THEN_BIDIR block,
    QUADRATIC mask slots b >= 2, ANCHORED_QUADRATIC anchor groups); CAUSAL forwards
    (verify, AR) and clean slots are left untouched."""

    def target(b, p):
        if p < len(conts[b]) and not wrong(p):
            return conts[b][p]
        return (conts[b][min(p, len(conts[b]) - 1)] + 1 + p) % V

    def edit(logits, info):
        B, T = info["tokens"].shape
        mode, pos = info["modes"], info["positions"]
        for b in range(B):
            n = _row_len(info["q_lens"], b, T)
            for t in range(T):
                p = int(pos[b, t])
                if mode == Mode.BIDIR_BLOCK and info["adapter"]:
                    hit = True
                elif mode == Mode.CAUSAL_THEN_BIDIR:
                    hit = n - int(info["mode_args"]) <= t < n
                elif mode == Mode.QUADRATIC:
                    hit = t % (int(info["mode_args"]) + 1) >= 2
                elif mode == Mode.ANCHORED_QUADRATIC:   # the anchor groups follow L clean slots
                    bits = int(torch.as_tensor(info["mode_args"]).reshape(-1)[b]) & 0xFFFFFFFF
                    hit = t >= n // (bin(bits).count("1") + 1)
                else:
                    hit = False
                if hit:
                    peak(logits, b, t, target(b, p))
        return logits

    return edit


def _row_len(q_lens, b, T):
    if q_lens is None:
        return T
    q = torch.as_tensor(q_lens).reshape(-1)
    return int(q[b] if q.numel() > 1 else q[0])


def _fresh_logits(model, seq, block=0):
    """Logits [len(seq), V] of one cache-free forward: causal, or causal prompt + a
    bidirectional last `block` tokens."""
    cache = model.new_cache(1, len(seq))
    tokens = torch.tensor([seq], dtype=torch.int64)
    if block:
        out = model.forward(tokens, cache, modes=Mode.CAUSAL_THEN_BIDIR, mode_args=block, kv="none")
    else:
        out = model.forward(tokens, cache, modes=Mode.CAUSAL, kv="none")
    return out[0]


def greedy_ar(model, prompt, n, *, eos=None):
    """AR greedy by full recomputation: returns the generated ids (eos included)."""
    seq, out = list(prompt), []
    for _ in range(n):
        tok = int(torch.argmax(_fresh_logits(model, seq)[-1]))
        out.append(tok)
        seq.append(tok)
        if eos is not None and tok == eos:
            break
    return out


def diffusion_reference(model, prompt, max_new, L, *, threshold, eos, mask):
    """docs/spec.md section 3 diffusion, transcribed line by line. Returns (tokens, nfe)."""
    seq, out, nfe = list(prompt), [], 0
    seed = int(torch.argmax(_fresh_logits(model, seq)[-1]))
    for _ in range(max_new // L):
        block = [seed] + [mask] * (L - 1)
        n_masks = block.count(mask)
        schedule = [n_masks // L + (1 if s < n_masks % L else 0) for s in range(L)]
        for step in range(L):
            if mask not in block:
                break
            logits = _fresh_logits(model, seq + block, L)[len(seq):]
            nfe += 1
            acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
            x0 = [int(torch.argmax(row)) for row in logits]
            conf = [float(torch.softmax(row.to(acc), -1)[x0[i]].to(logits.dtype))
                    for i, row in enumerate(logits)]
            cands = sorted((i for i in range(L) if block[i] == mask), key=lambda i: (-conf[i], i))
            if threshold is not None:
                chosen = cands[:1] + [i for i in cands[1:] if conf[i] >= threshold]
            else:
                chosen = cands[:schedule[step]]
            for i in chosen:
                block[i] = x0[i]
            if eos in block and mask not in block[:block.index(eos)]:
                break
        seq += block
        out += block
        nfe += 1
        seed = int(torch.argmax(_fresh_logits(model, seq)[-1]))
        if eos in block:
            break
    if eos in out:
        out = out[:out.index(eos) + 1]
    return out, nfe


def check_eos_truncates(model, prompt, *, mode, n, eos_at, L, **kw):
    """Drafts follow the greedy continuation (oracle_edit) and eos is the token it emits
    at index eos_at: `mode` must stop right after that token's first occurrence."""
    from tridiff.generate import generate

    ar = greedy_ar(model, prompt, n)
    eos = ar[eos_at]
    first = ar.index(eos)  # the chosen id may already occur earlier
    pm = Patched(model, oracle_edit([prompt + ar], V=model.config.vocab_size))
    r = generate(pm, [prompt], mode=mode, max_new_tokens=n, block_length=L, eos_id=eos, **kw).results[0]
    assert r.tokens == ar[:first + 1]
