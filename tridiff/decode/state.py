"""Per-row decoding state shared by every strategy: the buffers, counters and the small
operations the algorithms are written with (forward, pick, count, emit, prefill).

Every row keeps its own state on the device (committed cache length, seed, output
pointer, counters) and advances on its own, so a row gives in a batch exactly what it
gives alone. A finished row stays in the batch as a no-op: its writing forwards get
q_lens = 0, its state is frozen with torch.where and it is not counted. Inside an
iteration nothing is copied to the host; the only host reads are the spaced checks
(running, and a threshold draft's masks_left), one every `check_every` iterations.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Union

import torch

from tridiff import ops
from tridiff.decode import graphs, hooks
from tridiff.modes import Mode


@dataclass(frozen=True)
class RunShape:
    """The arguments that fix a run's buffers and graphs; a kept graphed run is reused
    by the next call with an equal RunShape."""
    strategy: str                # the generate(mode=...) value
    batch: int
    capacity: int                # KV cache positions per row
    max_new_tokens: int
    block_length: int
    threshold: Optional[float]
    temperature: float
    rule: str
    backend: str
    eos_id: int                  # -1: no eos
    adapter: bool
    page_size: Optional[int]     # paged KV cache with pages of this many tokens; None: contiguous
    graphs: Union[bool, str]     # False, True or "strict" (graphs.use_graphs)
    anchors: Union[None, int, tuple] = None   # quadratic-spec: None (all L), k, or a fixed set


class RunState:
    """Device-side state of one generate call. A strategy subclasses it with decode()
    (the algorithm) and its per-iteration steps, and sets the class attributes below."""

    name = ""                # the generate(mode=...) value
    graphable = False        # decode() runs its iterations through stepper()
    speculative = False      # results report the mean accepted length per verify
    block_multiple = False   # max_new_tokens must be a multiple of the block length
    greedy_only = False      # temperature must be 0
    zero_threshold = False   # threshold 0 is allowed (else a threshold is in (0, 1])

    @staticmethod
    def extra_len(max_new: int, L: int, anchors=None) -> int:
        """Positions a row may touch beyond its prompt (cache capacity planning)."""
        return max_new

    def __init__(self, model, prompts, shape: RunShape, seed: int, check_every: int):
        self.shape = shape
        self.model = model
        self.max_new, self.block_length = shape.max_new_tokens, shape.block_length
        self.threshold, self.temperature, self.rule = shape.threshold, shape.temperature, shape.rule
        self.backend, self.eos, self.adapter = shape.backend, shape.eos_id, shape.adapter
        self.mask = int(model.config.mask_token_id)
        self.dev = dev = device_of(model)
        B = self.batch = shape.batch
        self.prompt_lens = torch.zeros(B, dtype=torch.int32, device=dev)
        if shape.page_size is None:
            self.cache = model.new_cache(B, shape.capacity)
        else:
            self.cache = model.new_cache(B, shape.capacity, paged=True, page_size=shape.page_size)
        # Output buffer with one spare column that swallows the writes of idle entries.
        self.cap = self.max_new + self.block_length
        self.out = torch.empty((B, self.cap + 1), dtype=torch.int64, device=dev)
        self.n_out = torch.empty(B, dtype=torch.int64, device=dev)
        self.nfe = torch.empty(B, dtype=torch.int64, device=dev)
        self.rng_offset = torch.empty(B, dtype=torch.int64, device=dev)   # forwards done, incl. uncounted
        self.accepted = torch.empty(B, dtype=torch.int64, device=dev)     # sum of accepted lengths
        self.iterations = torch.empty(B, dtype=torch.int64, device=dev)
        self.forced_fills = torch.empty(B, dtype=torch.int64, device=dev)
        self.seeds = torch.empty(B, dtype=torch.int64, device=dev)
        self.active = torch.empty(B, dtype=torch.bool, device=dev)
        self.steppers = {}
        self._aranges = {}
        self.restart(prompts, seed, check_every)

    def restart(self, prompts, seed: int, check_every: int) -> None:
        """Per-call state, written into the buffers in place (a kept run's graphs read them)."""
        self.prompts = [[operator.index(t) for t in p] for p in prompts]
        self.check_every = check_every
        self.prompt_lens.copy_(torch.tensor([len(p) for p in prompts], dtype=torch.int32))
        self.cache.reset_()
        self.out.fill_(-1)
        for counter in (self.n_out, self.nfe, self.rng_offset, self.accepted, self.iterations,
                        self.forced_fills):
            counter.zero_()
        self.seeds.fill_(seed)
        self.active.fill_(True)

    def decode(self) -> None:
        raise NotImplementedError

    def keep(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Set state buffer `name` before the loop: copied into the buffer a reused run
        already has (its captured graphs hold that address), else stored. Returns it."""
        old = self.__dict__.get(name)
        if isinstance(old, torch.Tensor) and old.shape == value.shape and old.dtype == value.dtype:
            old.copy_(value)
            return old
        setattr(self, name, value)
        return value

    # ---- the operations the algorithms are written with -------------------------------

    def forward(self, tokens, *, modes, kv, q_lens=None, mode_args=None, positions=None, adapter=False):
        return self.model.forward(tokens, self.cache, modes=modes, mode_args=mode_args, q_lens=q_lens,
                                  positions=positions, kv=kv, adapter=adapter, backend=self.backend)

    def pick(self, logits):
        """Next-token choice from [B, V] or [B, T, V] logits (AR reading)."""
        if self.temperature == 0:
            return ops.sample(logits, backend=self.backend)
        return ops.sample(logits, temperature=self.temperature, seed=self.seeds, offset=self.rng_offset,
                          backend=self.backend)

    def confidence(self, logits, *, greedy=False):
        """(x0, confidence) per position of a diffusion reading (sampled when temperature > 0)."""
        if self.temperature == 0 or greedy:
            return ops.diffusion_confidence(logits, backend=self.backend)
        return ops.diffusion_confidence(logits, temperature=self.temperature, seed=self.seeds,
                                        offset=self.rng_offset, backend=self.backend)

    def count(self, rows) -> None:
        """One forward done by `rows` (bool [B]): NFE and the random offset advance."""
        self.nfe += rows
        self.rng_offset += rows

    def emit(self, tokens, counts) -> None:
        """Append tokens[b, :counts[b]] to row b's output (counts 0 for idle rows)."""
        i = self.arange(tokens.shape[1])[None, :]
        idx = torch.where(i < counts[:, None], (self.n_out[:, None] + i).clamp_(max=self.cap), self.cap)
        self.out.scatter_(1, idx, tokens)
        self.n_out += counts

    def arange(self, k: int) -> torch.Tensor:
        """torch.arange(k) on the device, made once per run (steps index with it)."""
        got = self._aranges.get(k)
        if got is None:
            got = self._aranges[k] = torch.arange(k, device=self.dev)
        return got

    def padded_prompts(self, width: int) -> torch.Tensor:
        """The prompts right-padded with the mask id to `width`, int64 [B, width] on the device."""
        tok = torch.full((self.batch, width), self.mask, dtype=torch.int64)
        for b, p in enumerate(self.prompts):
            tok[b, :len(p)] = torch.tensor(p, dtype=torch.int64)
        return tok.to(self.dev)

    def prefill(self):
        """Causal prefill of the prompts, KV committed. Returns last-row logits [B, V]."""
        tok = self.padded_prompts(int(max(len(p) for p in self.prompts)))
        logits = self.forward(tok, modes=Mode.CAUSAL, kv="commit", q_lens=self.prompt_lens)
        return logits[torch.arange(self.batch, device=self.dev), self.prompt_lens.long() - 1]

    def block_of(self, seed):
        """[seed, MASK x (L-1)] per row, int64 [B, L]."""
        blk = torch.full((self.batch, self.block_length), self.mask, dtype=torch.int64, device=self.dev)
        blk[:, 0] = seed
        return blk

    # ---- the loop ---------------------------------------------------------------------

    def running(self, it: int):
        """Host check, every `check_every` iterations: is any row still running?"""
        return hooks.host_check(self, it, lambda: (it % self.check_every) or bool(self.active.any()))

    def stepper(self, fn):
        """What the loop calls for step fn: fn itself (eager), or a callable replaying it
        as a CUDA graph (kept with the run, so a reused run replays the graph captured by
        an earlier call)."""
        if self.shape.graphs:
            if fn.__name__ not in self.steppers:
                self.steppers[fn.__name__] = graphs.Graphed(fn, strict=self.shape.graphs == "strict")
            fn = self.steppers[fn.__name__]
        return hooks.step(self, fn)

    # ---- results ----------------------------------------------------------------------

    def trim(self, tokens: list) -> list:
        """A row's output as the reference returns it: cut after its first eos."""
        if self.eos >= 0 and self.eos in tokens:
            tokens = tokens[:tokens.index(self.eos) + 1]
        return tokens


def device_of(model) -> torch.device:
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    return next(model.parameters()).device
