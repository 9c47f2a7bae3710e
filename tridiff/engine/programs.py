"""One step of each decoding strategy for a cohort of requests, written so that the engine
can batch the forwards of every cohort of the step into shared model calls.

A program is a generator over a Cohort (requests that share a strategy, its scalar
settings and their phase): it yields Forward(...) and receives that forward's logits
for its rows, or yields Sync(bool tensor) and receives the bool (a host read: only a
threshold draft's "any mask left", as generate makes it). It returns Readback: device
int64 tensors [n, w] and the function that applies their host copies to the requests.
The engine copies every cohort's readback to the host in one read per step.

The arithmetic of every iteration is generate's, per row (tridiff.decode.ar, linear,
diffusion, quadratic, anchored: docs/spec.md section 3), with each request's own seed
and random offset, so a request gives what generate gives it alone, whatever shares
its step. Strategy state between steps lives on the host (tokens) except the pruned
quadratic draft's confidences (device rows, Request.state["conf"]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from tridiff import ops
from tridiff.decode import anchors as anc
from tridiff.decode.diffusion import block_settled
from tridiff.engine.request import Phase, Request
from tridiff.modes import Mode


@dataclass
class Forward:
    """A model call for a cohort's rows; the engine merges calls with equal key()."""
    tokens: torch.Tensor                 # int64 [n, T]
    slots: torch.Tensor                  # int64 [n]: pool rows
    modes: List[int]
    q_lens: List[int]
    kv: str                              # "none" | "write" (commits are the program's)
    adapter: bool
    mode_args: Optional[List[int]] = None
    mode_args_t: Optional[torch.Tensor] = None   # per-row mode_args computed on the device
    positions: Optional[torch.Tensor] = None     # int64 [n, T]; None: cache lens + 0..T-1

    def key(self):
        return (self.tokens.shape[1], self.kv, self.adapter, self.positions is None)


@dataclass
class Sync:
    flag: torch.Tensor                   # bool [] on the device


@dataclass
class Readback:
    tensors: List[torch.Tensor]          # int64 [n, w_i]
    apply: Callable[[List[List[List[int]]]], None]   # host copies, per tensor per row


class Cohort:
    """Requests of one program in one step, and the small tensors their ops share."""

    def __init__(self, engine, requests: List[Request], strategy: str, program: Callable):
        self.engine, self.requests, self.strategy, self.program = engine, requests, strategy, program
        self.s = requests[0].settings
        self.dev, self.mask, self.backend = engine.device, engine.mask_id, engine.backend
        self.n = len(requests)
        self.slots = torch.tensor([r.slot for r in requests], dtype=torch.int64, device=self.dev)
        self.seeds = torch.tensor([r.settings.seed for r in requests], dtype=torch.int64, device=self.dev)

    def offsets(self, extra: int = 0) -> torch.Tensor:
        return torch.tensor([r.rng_offset + extra for r in self.requests], dtype=torch.int64, device=self.dev)

    def lens(self) -> torch.Tensor:
        return torch.tensor([r.lens for r in self.requests], dtype=torch.int32, device=self.dev)

    def ids(self, rows) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.int64, device=self.dev)

    def pick(self, logits, offsets):
        if self.s.temperature == 0:
            return ops.sample(logits, backend=self.backend)
        return ops.sample(logits, temperature=self.s.temperature, seed=self.seeds, offset=offsets,
                          backend=self.backend)

    def confidence(self, logits, offsets, *, greedy=False):
        if self.s.temperature == 0 or greedy:
            return ops.diffusion_confidence(logits, backend=self.backend)
        return ops.diffusion_confidence(logits, temperature=self.s.temperature, seed=self.seeds,
                                        offset=offsets, backend=self.backend)

    def commit(self, n: torch.Tensor, *, compact: Optional[torch.Tensor] = None) -> None:
        """Rows' cache: optionally compact (slot P+i <- P+compact[b, i]), then lens += n."""
        view = self.engine.pool.view(self.slots)
        if compact is not None:
            view.compact_(compact, backend=self.backend)
        view.commit_(n.to(torch.int32), backend=self.backend)
        view.write_back()

    def block(self, seeds: List[int], L: int) -> torch.Tensor:
        """[seed, MASK x (L-1)] per row, int64 [n, L]."""
        return self.ids([[t] + [self.mask] * (L - 1) for t in seeds])


def _finish_check(r: Request) -> None:
    if r.hit_stop():
        r.finish_reason = "stop"
    elif len(r.tokens) >= r.settings.max_new_tokens:
        r.finish_reason = "length"


# ---- prefill ---------------------------------------------------------------------------

def prefill_chunk(c: Cohort):
    """A prompt chunk that is not the last one: CAUSAL, KV committed, nothing picked."""
    chunk = c.engine.prefill_chunk
    rows = [r.prompt[r.prefilled:r.prefilled + chunk] for r in c.requests]
    n = [len(x) for x in rows]
    tok = c.ids([x + [c.mask] * (chunk - len(x)) for x in rows])
    yield Forward(tok, c.slots, [Mode.CAUSAL] * c.n, n, "write", False)
    c.commit(c.ids(n))

    def apply(_):
        for r, k in zip(c.requests, n):
            r.prefilled += k
            r.lens += k
            if len(r.prompt) - r.prefilled <= chunk:
                r.phase = Phase.START
    return Readback([], apply)


def _last_chunk(c: Cohort, extra_masks: int = 0):
    """Tokens [n, chunk + extra_masks] of the last prompt chunk (then extra_masks masks)."""
    chunk = c.engine.prefill_chunk
    rows = [r.prompt[r.prefilled:] for r in c.requests]
    n = [len(x) for x in rows]
    width = chunk + extra_masks
    return c.ids([x + [c.mask] * (width - len(x)) for x in rows]), n


def _after_prompt(c: Cohort, n: List[int]) -> None:
    for r, k in zip(c.requests, n):
        r.prefilled += k
        r.lens += k
        r.phase = Phase.DECODE


# ---- AR and linear self-speculation (and auto, which runs either) -------------------------

def causal_start(c: Cohort):
    """Last prompt chunk (KV committed) and the first token: AR, linear-spec, auto; and
    diffusion's first seed (picked, not emitted, not counted as a forward)."""
    tok, n = _last_chunk(c)
    logits = yield Forward(tok, c.slots, [Mode.CAUSAL] * c.n, n, "write", False)
    c.commit(c.ids(n))
    last = logits[torch.arange(c.n, device=c.dev), c.ids(n) - 1]
    first = c.pick(last, c.offsets())
    diffusion = c.strategy == "diffusion"

    def apply(host):
        _after_prompt(c, n)
        for r, (t,) in zip(c.requests, host[0]):
            r.rng_offset += 1
            if diffusion:
                r.state = {"block": [t] + [c.mask] * (r.settings.block_length - 1), "pass": 0, "commit": False}
                continue
            r.nfe += 1
            r.emit([t])
            r.state = {"last": t}
            _finish_check(r)
    return Readback([first[:, None]], apply)


def ar_step(c: Cohort):
    tok = c.ids([[r.state["last"]] for r in c.requests])
    logits = yield Forward(tok, c.slots, [Mode.CAUSAL] * c.n, [1] * c.n, "write", False)
    c.commit(torch.ones(c.n, dtype=torch.int32, device=c.dev))
    nxt = c.pick(logits[:, 0], c.offsets())

    def apply(host):
        for r, (t,) in zip(c.requests, host[0]):
            r.nfe += 1
            r.rng_offset += 1
            r.lens += 1
            r.emit([t])
            r.state["last"] = t
            _finish_check(r)
    return Readback([nxt[:, None]], apply)


def linear_step(c: Cohort):
    """Draft (one forward, or threshold passes), verify, accept, roll back (tridiff.decode.linear)."""
    s, L, mask = c.s, c.s.block_length, c.mask
    lossless = s.temperature > 0 and s.rule == "lossless"
    block = c.block([r.state["last"] for r in c.requests], L)
    passes = torch.zeros(c.n, dtype=torch.int64, device=c.dev)
    forced = torch.zeros(c.n, dtype=torch.int64, device=c.dev)
    draft_logits = None
    if not s.threshold:
        logits = yield Forward(block, c.slots, [Mode.BIDIR_BLOCK] * c.n, [L] * c.n, "none", s.adapter)
        x0, _ = c.confidence(logits, c.offsets())
        block = torch.where(block == mask, x0, block)
        passes += 1
        draft_logits = logits
    else:
        todo = (block == mask).any(1)
        for step in range(L):
            if step and not (yield Sync(todo.any())):
                break
            block, passes, forced, draft_logits = yield from _draft_pass(c, block, todo, passes, forced,
                                                                         draft_logits, lossless)
            todo &= (block == mask).any(1)
    # verify: CAUSAL over the block, KV written for all L, the accepted prefix kept
    offsets = c.offsets() + passes
    logits = yield Forward(block, c.slots, [Mode.CAUSAL] * c.n, [L] * c.n, "write", False)
    P = c.lens()
    if not lossless:
        T = s.temperature
        res = ops.accept_linear(logits, block[:, 1:], P, eos_id=s.eos_id, temperature=T,
                                seed=c.seeds if T else None, offset=offsets if T else None, backend=c.backend)
    else:
        res = ops.accept_rejection(logits, draft_logits[:, 1:], block[:, 1:], P, eos_id=s.eos_id,
                                   temperature=s.temperature, seed=c.seeds, offset=offsets, backend=c.backend)
    c.commit(res.n_accepted)
    out = torch.cat([res.tokens[:, :L], res.n_emitted[:, None].long(), res.n_accepted[:, None].long(),
                     res.next_token[:, None], passes[:, None], forced[:, None]], dim=1)

    def apply(host):
        for r, row in zip(c.requests, host[0]):
            toks, (n_em, n_acc, nxt, n_pass, n_forced) = row[:L], row[L:]
            r.nfe += n_pass + 1
            r.rng_offset += n_pass + 1
            r.lens += n_acc
            r.emit(toks[:n_em])
            r.accepted += n_acc
            r.accepted_lengths.append(n_acc)
            r.iterations += 1
            r.forced_fills += n_forced
            r.state["last"] = nxt
            _finish_check(r)
    return Readback([out], apply)


def _draft_pass(c: Cohort, block, todo, passes, forced, draft_logits, lossless):
    """One threshold draft pass for the rows in todo (tridiff.decode.linear draft_pass)."""
    s, L, mask = c.s, c.s.block_length, c.mask
    logits = yield Forward(block, c.slots, [Mode.BIDIR_BLOCK] * c.n, [L] * c.n, "none", s.adapter)
    offsets = c.offsets() + passes
    x0, conf = c.confidence(logits, offsets)
    if lossless:
        conf = c.confidence(logits, offsets, greedy=True)[1]
    new, moved = ops.diffusion_unmask(block, x0, conf, mask_id=mask, threshold=float(s.threshold),
                                      backend=c.backend)
    stuck = todo & (new == block).all(1)
    no_mask = logits.clone()
    no_mask[..., mask] = float("-inf")
    fx0, _ = c.confidence(no_mask, offsets)
    fill = stuck[:, None] & (block == mask)
    new = torch.where(fill, fx0, new)
    if lossless:
        if draft_logits is None:
            draft_logits = torch.zeros_like(logits)
        drawn = todo[:, None, None] & (moved | fill)[..., None]
        draft_logits = torch.where(drawn, torch.where(fill[..., None], no_mask, logits), draft_logits)
    block = torch.where(todo[:, None], new, block)
    return block, passes + todo.long(), forced + stuck.long(), draft_logits


# ---- block diffusion ---------------------------------------------------------------------

def diffusion_step(c: Cohort):
    """One denoise pass of every row's block, or (rows whose block is settled) the block's
    CAUSAL commit forward and the next seed (tridiff.decode.diffusion)."""
    s, L, mask = c.s, c.s.block_length, c.mask
    block = c.ids([r.state["block"] for r in c.requests])
    if c.requests[0].state["commit"]:
        logits = yield Forward(block, c.slots, [Mode.CAUSAL] * c.n, [L] * c.n, "write", False)
        c.commit(torch.full((c.n,), L, dtype=torch.int32, device=c.dev))
        seed = c.pick(logits[:, L - 1], c.offsets())

        def apply_commit(host):
            for r, (t,) in zip(c.requests, host[0]):
                r.nfe += 1
                r.rng_offset += 1
                r.lens += L
                r.iterations += 1
                r.emit(r.state["block"])
                r.state = {"block": [t] + [mask] * (L - 1), "pass": 0, "commit": False}
                _finish_check(r)
        return Readback([seed[:, None]], apply_commit)

    logits = yield Forward(block, c.slots, [Mode.BIDIR_BLOCK] * c.n, [L] * c.n, "none", s.adapter)
    x0, conf = c.confidence(logits, c.offsets())
    if s.threshold is not None:
        new, _ = ops.diffusion_unmask(block, x0, conf, mask_id=mask, threshold=float(s.threshold),
                                      backend=c.backend)
    else:
        sched = ops.num_transfer_schedule(torch.full((c.n,), L - 1, dtype=torch.int32, device=c.dev), L)
        step = c.ids([r.state["pass"] for r in c.requests])
        new, _ = ops.diffusion_unmask(block, x0, conf, mask_id=mask, backend=c.backend,
                                      num_transfer=sched.gather(1, step[:, None])[:, 0].contiguous())
    settled = block_settled(new, mask, s.eos_id)

    def apply_pass(host):
        for r, row in zip(c.requests, host[0]):
            r.nfe += 1
            r.rng_offset += 1
            r.state["block"] = row[:L]
            r.state["pass"] += 1
            r.state["commit"] = bool(row[L]) or r.state["pass"] == L
    return Readback([torch.cat([new, settled[:, None].long()], dim=1)], apply_pass)


# ---- quadratic self-speculation (full and pruned) -----------------------------------------

def quadratic_start(c: Cohort):
    """Last prompt chunk + L masks, prompt causal and block bidirectional (KV of the prompt
    committed); the first draft (tridiff.decode.quadratic draft_forward)."""
    L = c.s.block_length
    tok, n = _last_chunk(c, extra_masks=L)
    nt = c.ids(n)
    logits = yield Forward(tok, c.slots, [Mode.CAUSAL_THEN_BIDIR] * c.n, [k + L for k in n], "write", False,
                           mode_args=[L] * c.n)
    c.commit(nt)
    cols = nt[:, None] + torch.arange(L, device=c.dev)[None, :]
    cols[:, 0] -= 1
    rows = logits[torch.arange(c.n, device=c.dev)[:, None], cols]
    if c.s.anchors is None:
        draft = c.pick(rows, None)
        conf = None
    else:   # tridiff.decode.anchored: d_0 emitted now, the block's confidences kept
        first = c.pick(rows[:, 0], None)
        x0, conf = c.confidence(rows, None, greedy=True)
        draft = torch.cat([first[:, None], x0[:, 1:]], dim=1)

    def apply(host):
        _after_prompt(c, n)
        for i, (r, d) in enumerate(zip(c.requests, host[0])):
            r.nfe += 1
            r.rng_offset += 1
            r.state = {"draft": d}
            if conf is not None:
                r.state["conf"] = conf[i:i + 1]
                r.emit(d[:1])
                _finish_check(r)
    return Readback([draft], apply)


def quadratic_step(c: Cohort):
    """One QUADRATIC(L) forward, accept, keep the d-slot KV (tridiff.decode.quadratic)."""
    s, L = c.s, c.s.block_length
    draft = c.ids([r.state["draft"] for r in c.requests])
    P = c.lens()
    qtok = torch.full((c.n, L, L + 1), c.mask, dtype=torch.int64, device=c.dev)
    qtok[:, :, 0] = draft
    a = torch.arange(L, device=c.dev)[:, None]
    b = torch.arange(L + 1, device=c.dev)[None, :]
    positions = P.long()[:, None] + (a + b).reshape(1, -1)
    logits = yield Forward(qtok.reshape(c.n, -1), c.slots, [Mode.QUADRATIC] * c.n, [L * (L + 1)] * c.n, "write",
                           False, mode_args=[L] * c.n, positions=positions)
    res = ops.accept_quadratic(logits, draft, P, eos_id=s.eos_id, backend=c.backend)
    c.commit(res.n_accepted, compact=ops.quadratic_verify_slots(L, c.n, device=c.dev))
    out = torch.cat([res.tokens, res.next_draft, res.n_emitted[:, None].long(), res.n_accepted[:, None].long()],
                    dim=1)

    def apply(host):
        for r, row in zip(c.requests, host[0]):
            toks, nxt, (n_em, n_acc) = row[:L], row[L:2 * L], row[2 * L:]
            _speculated(r, toks[:n_em], n_acc)
            r.state["draft"] = nxt
    return Readback([out], apply)


def anchored_step(c: Cohort):
    """One ANCHORED_QUADRATIC forward, accept, commit, next draft (tridiff.decode.anchored)."""
    s, L, n = c.s, c.s.block_length, c.n
    draft = c.ids([r.state["draft"] for r in c.requests])
    conf = torch.cat([r.state["conf"] for r in c.requests])
    P = c.lens()
    if isinstance(s.anchors, tuple):
        S = anc.fixed_anchors(s.anchors, n, c.dev)
    else:
        S = anc.choose_anchors(conf, s.anchors)
    k = S.shape[1]
    tok = torch.full((n, L * (k + 1)), c.mask, dtype=torch.int64, device=c.dev)
    tok[:, :L] = draft
    logits = yield Forward(tok, c.slots, [Mode.ANCHORED_QUADRATIC] * n, [L * (k + 1)] * n, "write", False,
                           mode_args_t=anc.anchor_bitmask(S), positions=P.long()[:, None] + anc.slot_offsets(S, L))
    res = ops.accept_linear(logits[:, :L], draft[:, 1:], P, eos_id=s.eos_id, backend=c.backend)
    c.commit(res.n_accepted)
    x0, cf = c.confidence(logits[:, L:], None, greedy=True)
    new_draft, new_conf = anc.next_draft(res.next_token, x0.reshape(n, k, L), cf.reshape(n, k, L), S,
                                         res.n_accepted, c.mask)
    out = torch.cat([res.tokens[:, :L], new_draft, res.n_emitted[:, None].long(), res.n_accepted[:, None].long()],
                    dim=1)

    def apply(host):
        for i, (r, row) in enumerate(zip(c.requests, host[0])):
            toks, nxt, (n_em, n_acc) = row[:L], row[L:2 * L], row[2 * L:]
            _speculated(r, toks[:n_em], n_acc)
            r.state["draft"] = nxt
            r.state["conf"] = new_conf[i:i + 1]
    return Readback([out], apply)


def _speculated(r: Request, toks, n_acc: int) -> None:
    r.nfe += 1
    r.rng_offset += 1
    r.lens += n_acc
    r.emit(toks)
    r.accepted += n_acc
    r.accepted_lengths.append(n_acc)
    r.iterations += 1
    _finish_check(r)


def program_for(strategy: str, phase: Phase, anchors) -> Callable:
    """The step program of a request in `phase` running `strategy` (auto resolved)."""
    if phase == Phase.PREFILL:
        return prefill_chunk
    if phase == Phase.START:
        return quadratic_start if strategy == "quadratic-spec" else causal_start
    return {"ar": ar_step, "linear-spec": linear_step, "diffusion": diffusion_step,
            "quadratic-spec": quadratic_step if anchors is None else anchored_step}[strategy]
