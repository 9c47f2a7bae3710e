"""Batched decoding for tri-mode models: AR, block diffusion, linear and quadratic
self-speculation (SPEC.md section 3, followed to the letter, parity quirks included).

    out = generate(model, prompts, mode="linear-spec", max_new_tokens=64)
    out.results[b].tokens      generated ids of row b (prompt excluded)

Every row keeps its own state on the device (committed cache length, seed, output
pointer, counters) and advances on its own, so a row gives in a batch exactly what it
gives alone. A finished row stays in the batch as a no-op: its writing forwards get
q_lens = 0 (nothing written or committed), its state is frozen with torch.where and it
is not counted. Inside an iteration nothing is copied to the host; the only host reads
are the "is any row still running" checks, one every `eos_check_every` iterations (and,
spaced the same way, "does any row still draft" between the passes of a threshold
draft or a diffusion block, whose pass counts depend on the data).

Randomness (temperature > 0) is counter based: key = `seed` for every row (so a row's
noise does not depend on its batch), offset = the row's own forward counter (prefill = 0),
streams as in tridiff.reference.philox. Quadratic self-speculation is greedy only.

CUDA graphs: one iteration of AR, linear and quadratic self-speculation is a method
(`ar_step`, `linear_step`, `quadratic_step`; a threshold draft splits the linear one
into `linear_begin_and_pass`, `draft_pass` x k, `linear_verify`, each graphed on its
own) that reads and writes only state buffers allocated before the loop, updated in
place, with shapes fixed by (B, L, V): no host read, no host-to-device copy, no branch
on a tensor value. The same method runs eagerly, or (cuda_graphs) once eagerly as
warm-up on a side stream, then captured into a torch.cuda.CUDAGraph and replayed.
Random offsets live in device tensors, so a replay draws fresh noise exactly as the
eager step would. The graphs and the buffers they point at are kept with the model for
the next generate call with the same shape-fixing arguments (mode, batch size, cache
capacity rounded up to GRAPH_CAPACITY_STEP, block length, max_new_tokens, temperature,
threshold, rule, eos id, backend, adapter, paging): that call refills the buffers in
place and replays from its first iteration, with no warm-up and no capture (which
synchronises the device). One such run is kept per model; release_graphs(model) drops it.
"""
from __future__ import annotations

import operator
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from tridiff import ops
from tridiff import _checks as chk
from tridiff._checks import TridiffInputError
from tridiff.modes import Mode

MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")
RULES = ("lossless", "reference")


@dataclass
class RowResult:
    """One prompt's result. tokens: generated ids only (eos included when hit)."""
    prompt_ids: List[int]
    tokens: List[int]
    nfe: int                       # forwards counted as SPEC section 3 counts them
    tokens_per_forward: float      # len(tokens) / nfe
    mean_accepted: Optional[float]  # self-speculation: mean accepted length per verify
    iterations: int = 0            # verify forwards (self-spec) or blocks (diffusion)
    forced_fills: int = 0          # linear drafts finished by the no-hang rule


@dataclass
class GenerateOutput:
    mode: str
    results: List[RowResult]
    seconds: float
    total_tokens: int = field(init=False)
    total_nfe: int = field(init=False)
    tokens_per_forward: float = field(init=False)

    def __post_init__(self):
        self.total_tokens = sum(len(r.tokens) for r in self.results)
        self.total_nfe = sum(r.nfe for r in self.results)
        self.tokens_per_forward = self.total_tokens / max(self.total_nfe, 1)


def generate(model, prompts: Sequence[Sequence[int]], *, mode: str = "ar", max_new_tokens: int,
             block_length: Optional[int] = None, threshold: Optional[float] = None,
             temperature: float = 0.0, rule: str = "lossless", seed: int = 0, backend: str = "auto",
             eos_check_every: int = 1, eos_id: Optional[int] = None, adapter: bool = True,
             paged: bool = False, page_size: int = 16,
             cuda_graphs: Optional[bool] = None) -> GenerateOutput:
    """Decode every prompt with one of the four SPEC modes.

    mode            "ar" | "diffusion" | "linear-spec" | "quadratic-spec"
    max_new_tokens  diffusion / quadratic: a multiple of the block; linear may overshoot
                    it by up to block-1 tokens (as the reference does)
    block_length    default model.config.block_length
    threshold       diffusion: confidence threshold (None = top-k schedule over L steps);
                    linear: draft threshold (None or 0 = one draft forward, fill all masks)
    temperature     0 = greedy. > 0: sampling; linear-spec uses `rule` ("lossless":
                    rejection sampling, distribution preserving; "reference": the
                    reference's independent-sample compare)
    eos_check_every host checks of "any row still running" happen once per this many
                    iterations; the rows that finished earlier idle meanwhile
    eos_id          override config.eos_token_id (-1 disables eos)
    adapter         use the drafter LoRA where SPEC turns it on (diffusion denoise and
                    linear draft forwards; never prefill, commit, verify or the
                    quadratic forward, whose verify rows must be the base model).
                    Ignored by a model without adapter.
    paged           decode on a paged KV cache (page_size tokens per page)
    cuda_graphs     replay each decoding iteration as a CUDA graph (AR, linear and
                    quadratic self-speculation). None: on for a CUDA model in those
                    modes, and a step whose capture fails runs eagerly with a warning;
                    True: a failed capture raises; True on a CPU model or for diffusion
                    is refused. The graphs and their buffers stay with the model for
                    the next call with the same arguments except prompts (same count),
                    seed and eos_check_every; release_graphs(model) frees them.
    """
    cfg = model.config
    L = int(block_length if block_length is not None else getattr(cfg, "block_length", 32))
    _validate(cfg, prompts, mode, max_new_tokens, L, threshold, temperature, rule, eos_check_every)
    graphs = _use_graphs(cuda_graphs, mode, _device(model))
    settings = (mode, int(max_new_tokens), L, threshold, float(temperature), rule, backend,
                int(cfg.eos_token_id if eos_id is None else eos_id), bool(adapter),
                (("paged", True), ("page_size", page_size)) if paged else ())
    capacity = max(len(p) for p in prompts) + _extra_len(mode, int(max_new_tokens), L)
    if graphs:
        capacity = -(-capacity // GRAPH_CAPACITY_STEP) * GRAPH_CAPACITY_STEP
    key = (settings, len(prompts), capacity, graphs)
    run = _kept_run(model, key) if graphs else None
    if run is None:
        run = _Run(model, prompts, settings, capacity, int(seed), int(eos_check_every), graphs)
        if graphs:
            _KEPT[model] = (key, run)
    else:
        run.restart(prompts, int(seed), int(eos_check_every))
    start = time.perf_counter()
    # Arguments were validated above; inside, every op input is made by the loop itself,
    # so value checks (host round trips on a device, Python time per op call on CPU) are
    # skipped; shapes and dtypes are still checked.
    with chk.trusted(cpu=True):
        {"ar": run.ar, "diffusion": run.diffusion, "linear-spec": run.linear,
         "quadratic-spec": run.quadratic}[mode]()
    results = run.results()  # the one host copy of the outputs (synchronises)
    return GenerateOutput(mode=mode, results=results, seconds=time.perf_counter() - start)


def _validate(cfg, prompts, mode, max_new_tokens, L, threshold, temperature, rule, check_every):
    def bad(arg, expected, got):
        raise TridiffInputError(f"{arg}: expected {expected}, got {got}")

    if mode not in MODES:
        bad("mode", "one of " + ", ".join(MODES), repr(mode))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        bad("max_new_tokens", "a positive int", repr(max_new_tokens))
    if L < 1:
        bad("block_length", "a positive int", L)
    if mode in ("diffusion", "quadratic-spec") and max_new_tokens % L:
        bad("max_new_tokens", f"a multiple of the block length {L} for {mode}", max_new_tokens)
    if threshold is not None:
        low = 0.0 if mode == "linear-spec" else 1e-300  # diffusion needs > 0 (0 = no threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not low <= float(threshold) <= 1.0:
            interval = "[0, 1]" if mode == "linear-spec" else "(0, 1]"
            bad("threshold", f"a number in {interval} for {mode}", threshold)
    if not float(temperature) >= 0.0:
        bad("temperature", "a number >= 0", temperature)
    if mode == "quadratic-spec" and temperature > 0:
        bad("temperature", "0 for quadratic-spec (its acceptance rule is greedy only)", temperature)
    if rule not in RULES:
        bad("rule", "one of " + ", ".join(RULES), repr(rule))
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        bad("eos_check_every", "a positive int", check_every)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        bad("prompts", "a non-empty list of token-id lists", type(prompts).__name__)
    for b, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) == 0:
            bad(f"prompts[{b}]", "a non-empty list of token ids", repr(p)[:40])
        if any(not _is_id(t, cfg.vocab_size) for t in p):
            bad(f"prompts[{b}]", f"token ids in [0, {cfg.vocab_size})", list(p)[:8])
    need = max(len(p) for p in prompts) + _extra_len(mode, max_new_tokens, L)
    limit = int(getattr(cfg, "max_position_embeddings", need))
    if need > limit:
        bad("prompts", f"prompt + generation within the context of {limit} positions",
            f"{need} positions (longest prompt {max(len(p) for p in prompts)}, {mode}, "
            f"max_new_tokens {max_new_tokens})")


GRAPH_MODES = ("ar", "linear-spec", "quadratic-spec")
GRAPH_CAPACITY_STEP = 256   # graphed runs round the cache capacity up to this, for reuse

# model -> (key, _Run): the last graphed run of each model, kept for the next call.
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _kept_run(model, key):
    kept = _KEPT.get(model)
    return kept[1] if kept is not None and kept[0] == key else None


def release_graphs(model) -> None:
    """Drop the CUDA graphs and decoding buffers (KV cache included) kept for `model`."""
    _KEPT.pop(model, None)


def _use_graphs(flag, mode, device):
    """False (eager), True (graphs; a failed capture falls back to eager) or "strict"."""
    if flag is not None and not isinstance(flag, bool):
        raise TridiffInputError(f"cuda_graphs: expected None, True or False, got {flag!r}")
    if flag is None:   # automatic: a failed capture warns and the step runs eagerly
        return device.type == "cuda" and mode in GRAPH_MODES
    if flag and device.type != "cuda":
        raise TridiffInputError(f"cuda_graphs: expected None or False for a model on {device} "
                                "(CUDA graphs need a CUDA model)")
    if flag and mode not in GRAPH_MODES:
        raise TridiffInputError(f"cuda_graphs: expected None or False for {mode} "
                                f"(graphed modes: {', '.join(GRAPH_MODES)})")
    return "strict" if flag else False   # asked for: a failed capture raises


def _is_id(t, V) -> bool:
    if isinstance(t, bool):
        return False
    try:
        t = operator.index(t)  # ints, numpy / 0-d torch integers
    except TypeError:
        return False
    return 0 <= t < V


def _extra_len(mode, max_new_tokens, L):
    """Positions a row may touch beyond its prompt (cache capacity planning)."""
    if mode == "linear-spec":
        return max_new_tokens + L          # verify writes L slots from P <= prompt+new-1
    if mode == "quadratic-spec":
        # the last iteration may commit up to L-1 past max_new_tokens (trimmed later), and
        # a finished row keeps running its QUADRATIC forward (L*(L+1) scratch slots)
        return max_new_tokens + L - 1 + L * (L + 1)
    return max_new_tokens


class _Run:
    """Device-side state of one generate call; one method per mode."""

    def __init__(self, model, prompts, settings, capacity, seed, check_every, graphs=False):
        (self.mode, self.max_new, self.L, self.threshold, self.T, self.rule, self.backend, self.eos,
         self.adapter, cache_kw) = settings
        self.model = model
        self.mask = int(model.config.mask_token_id)
        self.dev = dev = _device(model)
        B = self.B = len(prompts)
        self.prompt_lens = torch.zeros(B, dtype=torch.int32, device=dev)
        self.cache = model.new_cache(B, capacity, **dict(cache_kw))
        # Output buffer with one spare column that swallows the writes of idle entries.
        self.cap = self.max_new + self.L
        self.out = torch.empty((B, self.cap + 1), dtype=torch.int64, device=dev)
        self.n_out = torch.empty(B, dtype=torch.int64, device=dev)
        self.nfe = torch.empty(B, dtype=torch.int64, device=dev)
        self.fwd = torch.empty(B, dtype=torch.int64, device=dev)  # random offset per row
        self.acc_sum = torch.empty(B, dtype=torch.int64, device=dev)
        self.iters = torch.empty(B, dtype=torch.int64, device=dev)
        self.forced = torch.empty(B, dtype=torch.int64, device=dev)
        self.seeds = torch.empty(B, dtype=torch.int64, device=dev)
        self.active = torch.empty(B, dtype=torch.bool, device=dev)
        self.graphs = graphs
        self.steppers = {}
        self._aranges = {}
        self.restart(prompts, seed, check_every)

    def restart(self, prompts, seed, check_every):
        """Per-call state, written into the buffers in place (a kept run's graphs read them)."""
        self.prompts = [[operator.index(t) for t in p] for p in prompts]
        self.check_every = check_every
        self.prompt_lens.copy_(torch.tensor([len(p) for p in prompts], dtype=torch.int32))
        self.cache.reset_()
        self.out.fill_(-1)
        for counter in (self.n_out, self.nfe, self.fwd, self.acc_sum, self.iters, self.forced):
            counter.zero_()
        self.seeds.fill_(seed)
        self.active.fill_(True)

    def keep(self, name, value):
        """Set state buffer `name` before the loop: copied into the buffer a reused run
        already has (its captured graphs hold that address), else stored. Returns it."""
        old = self.__dict__.get(name)
        if isinstance(old, torch.Tensor) and old.shape == value.shape and old.dtype == value.dtype:
            old.copy_(value)
            return old
        setattr(self, name, value)
        return value

    # ---- shared pieces --------------------------------------------------------------

    def forward(self, tokens, *, modes, kv, q_lens=None, mode_args=None, positions=None, adapter=False):
        return self.model.forward(tokens, self.cache, modes=modes, mode_args=mode_args, q_lens=q_lens,
                                  positions=positions, kv=kv, adapter=adapter, backend=self.backend)

    def pick(self, logits):
        """Next-token choice from [B, V] or [B, T, V] logits (AR reading)."""
        if self.T == 0:
            return ops.sample(logits, backend=self.backend)
        return ops.sample(logits, temperature=self.T, seed=self.seeds, offset=self.fwd,
                          backend=self.backend)

    def count(self, rows):
        """One forward done by `rows` (bool [B]): NFE and the random offset advance."""
        self.nfe += rows
        self.fwd += rows

    def emit(self, tokens, counts):
        """Append tokens[b, :counts[b]] to row b's output (counts 0 for idle rows)."""
        i = self.arange(tokens.shape[1])[None, :]
        idx = torch.where(i < counts[:, None], (self.n_out[:, None] + i).clamp_(max=self.cap), self.cap)
        self.out.scatter_(1, idx, tokens)
        self.n_out += counts

    def arange(self, k):
        """torch.arange(k) on the device, made once per run (steps index with it)."""
        got = self._aranges.get(k)
        if got is None:
            got = self._aranges[k] = torch.arange(k, device=self.dev)
        return got

    def prefill(self):
        """Causal prefill of the right-padded prompts, KV committed. Returns last-row logits."""
        width = int(max(len(p) for p in self.prompts))
        tok = torch.full((self.B, width), self.mask, dtype=torch.int64)
        for b, p in enumerate(self.prompts):
            tok[b, :len(p)] = torch.tensor(p, dtype=torch.int64)
        logits = self.forward(tok.to(self.dev), modes=Mode.CAUSAL, kv="commit", q_lens=self.prompt_lens)
        return logits[torch.arange(self.B, device=self.dev), self.prompt_lens.long() - 1]

    def running(self, it):
        """Host check, every `check_every` iterations: is any row still running?"""
        return (it % self.check_every) or bool(self.active.any())

    def stepper(self, fn):
        """fn itself (eager), or a callable replaying it as a CUDA graph (kept with the run,
        so a reused run replays the graph captured by an earlier call)."""
        if not self.graphs:
            return fn
        if fn.__name__ not in self.steppers:
            self.steppers[fn.__name__] = _Graphed(fn, strict=self.graphs == "strict")
        return self.steppers[fn.__name__]

    def block_of(self, seed):
        blk = torch.full((self.B, self.L), self.mask, dtype=torch.int64, device=self.dev)
        blk[:, 0] = seed
        return blk

    # ---- AR ---------------------------------------------------------------------------

    def ar(self):
        self.keep("tok", self.pick(self.prefill()))   # state buffer: the last token of every row
        self.count(self.active)
        self.emit(self.tok[:, None], self.active.long())
        self.active &= (self.tok != self.eos) & (self.n_out < self.max_new)
        step = self.stepper(self.ar_step)
        for it in range(self.max_new - 1):
            if not self.running(it):
                break
            step()

    def ar_step(self):
        """One AR iteration on the state buffers (graph-capturable)."""
        act = self.active.clone()
        logits = self.forward(self.tok[:, None], modes=Mode.CAUSAL, kv="commit", q_lens=act.int())
        nxt = self.pick(logits[:, 0])
        self.count(act)
        self.tok.copy_(torch.where(act, nxt, self.tok))
        self.emit(self.tok[:, None], act.long())
        self.active &= (self.tok != self.eos) & (self.n_out < self.max_new)

    # ---- diffusion --------------------------------------------------------------------

    def diffusion(self):
        L, mask = self.L, self.mask
        seed = self.pick(self.prefill())   # the prefill is not counted in diffusion NFE
        self.fwd += 1
        for blk_i in range(self.max_new // L):
            if not self.running(blk_i):
                break
            block = self.block_of(seed)
            todo = self.active & (block == mask).any(1)
            sched = None
            if self.threshold is None:
                sched = ops.num_transfer_schedule((block == mask).sum(1), L)
            for step in range(L):
                if step and step % self.check_every == 0 and not bool(todo.any()):
                    break
                logits = self.forward(block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
                x0, conf = self._confidence(logits)
                kw = ({"threshold": float(self.threshold)} if sched is None
                      else {"num_transfer": sched[:, step].contiguous()})
                new, _ = ops.diffusion_unmask(block, x0, conf, mask_id=mask, backend=self.backend, **kw)
                block = torch.where(todo[:, None], new, block)
                self.count(todo)
                todo &= ~_block_settled(block, mask, self.eos)
            act = self.active.clone()
            logits = self.forward(block, modes=Mode.CAUSAL, kv="commit", q_lens=act.int() * L)
            seed = torch.where(act, self.pick(logits[:, L - 1]), seed)
            self.count(act)
            self.iters += act
            self.emit(block, act.long() * L)
            self.active &= ~(block == self.eos).any(1)

    def _confidence(self, logits, *, greedy=False):
        if self.T == 0 or greedy:
            return ops.diffusion_confidence(logits, backend=self.backend)
        return ops.diffusion_confidence(logits, temperature=self.T, seed=self.seeds, offset=self.fwd,
                                        backend=self.backend)

    # ---- linear self-speculation ------------------------------------------------------

    def linear(self):
        B, L, dev = self.B, self.L, self.dev
        self.keep("seed_tok", self.pick(self.prefill()))   # state: next seed per row (uncommitted)
        self.count(self.active)
        self.emit(self.seed_tok[:, None], self.active.long())
        self.active &= (self.seed_tok != self.eos) & (self.n_out < self.max_new)
        # Per-iteration state shared by the pieces of a threshold draft.
        self.keep("act", torch.zeros(B, dtype=torch.bool, device=dev))
        self.keep("todo", torch.zeros(B, dtype=torch.bool, device=dev))
        self.keep("P", torch.zeros(B, dtype=torch.int32, device=dev))
        self.keep("block", torch.full((B, L), self.mask, dtype=torch.int64, device=dev))
        if not self.threshold:
            step = self.stepper(self.linear_step)
            for it in range(self.max_new):   # every iteration emits >= 1 token per running row
                if not self.running(it):
                    break
                step()
            return
        # Threshold draft: a data-dependent number of passes (like the finish check, the
        # "any mask left" check is a host read every check_every passes, between graphs).
        if self.lossless_sampling():
            V = self.model.config.vocab_size
            ldt = torch.float64 if self.model.dtype == torch.float64 else torch.float32
            self.keep("draft_logits", torch.zeros((B, L, V), dtype=ldt, device=dev))
        first = self.stepper(self.linear_begin_and_pass)
        more = self.stepper(self.draft_pass)
        verify = self.stepper(self.linear_verify)
        for it in range(self.max_new):
            if not self.running(it):
                break
            first()
            for step in range(1, L):   # each pass fills >= 1 mask or ends by the no-hang rule
                if not self.masks_left(step):
                    break
                more()
            verify()

    def masks_left(self, step):
        """Host check, every `check_every` draft passes: does any row still draft?"""
        return (step % self.check_every) or bool(self.todo.any())

    def lossless_sampling(self):
        return self.T > 0 and self.rule == "lossless"

    def linear_step(self):
        """One iteration, one-forward draft: draft + fill, verify, accept, roll back,
        emit, state update (graph-capturable)."""
        self.linear_begin()
        logits = self.forward(self.block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
        x0, _ = self._confidence(logits)   # every mask takes its argmax (mask id included)
        self.count(self.act)
        self.block.copy_(torch.where(self.block == self.mask, x0, self.block))
        self.linear_verify(logits)

    def linear_begin(self):
        self.act.copy_(self.active)
        self.P.copy_(self.cache.lens)
        self.block.copy_(self.block_of(self.seed_tok))
        self.todo.copy_(self.act & (self.block == self.mask).any(1))

    def linear_begin_and_pass(self):
        self.linear_begin()
        if self.lossless_sampling():
            self.draft_logits.zero_()
        self.draft_pass()

    def draft_pass(self):
        """One threshold draft pass over self.block for the rows in self.todo (adapter on,
        nothing committed); self.draft_logits keeps the logits each position was drawn from
        (they feed the lossless acceptance)."""
        mask, block, todo = self.mask, self.block, self.todo
        logits = self.forward(block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
        x0, conf = self._confidence(logits)
        if self.lossless_sampling():
            # choose WHICH positions to fill by greedy confidence, so that the choice
            # does not depend on the sampled values (keeps the draft law = softmax/T)
            conf = self._confidence(logits, greedy=True)[1]
        new, moved = ops.diffusion_unmask(block, x0, conf, mask_id=mask, threshold=float(self.threshold),
                                          backend=self.backend)
        # No-hang rule: a pass that changes nothing (every chosen position predicted the
        # mask id) fills all remaining masks with their best non-mask token.
        stuck = todo & (new == block).all(1)
        no_mask = logits.clone()
        no_mask[..., mask] = float("-inf")
        fx0, _ = self._confidence(no_mask)
        forced = stuck[:, None] & (block == mask)
        new = torch.where(forced, fx0, new)
        if self.lossless_sampling():
            drawn = todo[:, None, None] & (moved | forced)[..., None]
            self.draft_logits.copy_(torch.where(drawn, torch.where(forced[..., None], no_mask, logits),
                                                self.draft_logits))
        block.copy_(torch.where(todo[:, None], new, block))
        self.count(todo)
        self.forced += stuck
        todo &= (block == mask).any(1)

    def linear_verify(self, draft_logits=None):
        """Verify forward (KV committed for all L), accept, roll back, emit, next seed."""
        L, act, block = self.L, self.act, self.block
        if draft_logits is None and self.lossless_sampling():
            draft_logits = self.draft_logits
        fwd_verify = self.fwd.clone()
        logits = self.forward(block, modes=Mode.CAUSAL, kv="commit", q_lens=act.int() * L)
        self.count(act)
        if not self.lossless_sampling():
            res = ops.accept_linear(logits, block[:, 1:], self.P, eos_id=self.eos, temperature=self.T,
                                    seed=self.seeds if self.T else None,
                                    offset=fwd_verify if self.T else None, backend=self.backend)
        else:
            res = ops.accept_rejection(logits, draft_logits[:, 1:], block[:, 1:], self.P, eos_id=self.eos,
                                       temperature=self.T, seed=self.seeds, offset=fwd_verify,
                                       backend=self.backend)
        self.cache.rollback_(torch.where(act, res.new_cache_lens.to(torch.int32), self.cache.lens))
        self.emit(res.tokens[:, :L], torch.where(act, res.n_emitted.long(), 0))
        self.acc_sum += torch.where(act, res.n_accepted.long(), 0)
        self.iters += act
        self.seed_tok.copy_(torch.where(act, res.next_token, self.seed_tok))
        self.active &= ~res.hit_eos & (self.n_out < self.max_new)

    # ---- quadratic self-speculation ---------------------------------------------------

    def quadratic(self):
        L, B, dev, mask = self.L, self.B, self.dev, self.mask
        # First forward: [prompt | MASK x L], prompt rows causal, block rows bidirectional
        # (CAUSAL_THEN_BIDIR, K = L); KV written for all, committed for the prompt only.
        width = int(max(len(p) for p in self.prompts)) + L
        tok = torch.full((B, width), mask, dtype=torch.int64)
        for b, p in enumerate(self.prompts):
            tok[b, :len(p)] = torch.tensor(p, dtype=torch.int64)
        q = self.prompt_lens + L
        logits = self.forward(tok.to(dev), modes=Mode.CAUSAL_THEN_BIDIR, mode_args=L, kv="write", q_lens=q)
        self.cache.commit_(self.prompt_lens)
        rows = torch.arange(B, device=dev)[:, None]
        # draft[0]: AR reading of the last prompt row; draft[j>0]: diffusion reading of block row j
        cols = self.prompt_lens.long()[:, None] + torch.arange(L, device=dev)[None, :]
        cols[:, 0] -= 1
        self.keep("draft", self.pick(logits[rows, cols]))   # state: the current draft per row
        self.count(self.active)
        a = torch.arange(L, device=dev)[:, None]
        b_ = torch.arange(L + 1, device=dev)[None, :]
        self.keep("offsets", (a + b_).reshape(1, -1))   # slot (a, b) sits at position P + a + b
        self.keep("verify_slots", ops.quadratic_verify_slots(L, B, device=dev))
        step = self.stepper(self.quadratic_step)
        for it in range(self.max_new):   # every iteration emits >= 1 token per running row
            if not self.running(it):
                break
            step()

    def quadratic_step(self):
        """One QUADRATIC(L) forward, accept, keep the d-slot KV, emit (graph-capturable)."""
        L, B, draft = self.L, self.B, self.draft
        act = self.active.clone()
        P = self.cache.lens.clone()
        qtok = torch.full((B, L, L + 1), self.mask, dtype=torch.int64, device=self.dev)
        qtok[:, :, 0] = draft
        logits = self.forward(qtok.reshape(B, -1), modes=Mode.QUADRATIC, mode_args=L, kv="write",
                              positions=P.long()[:, None] + self.offsets)
        self.count(act)
        res = ops.accept_quadratic(logits, draft, P, eos_id=self.eos, backend=self.backend)
        self.cache.compact_(self.verify_slots)          # d slots -> P .. P+L-1
        self.cache.commit_(torch.where(act, res.n_accepted.to(torch.int32), 0))
        self.emit(res.tokens, torch.where(act, res.n_emitted.long(), 0))
        self.acc_sum += torch.where(act, res.n_accepted.long(), 0)
        self.iters += act
        draft.copy_(torch.where(act[:, None], res.next_draft, draft))
        self.active &= ~res.hit_eos & (self.n_out < self.max_new)

    # ---- results ----------------------------------------------------------------------

    def results(self) -> List[RowResult]:
        out = self.out[:, :self.cap].tolist()
        n_out, nfe = self.n_out.tolist(), self.nfe.tolist()
        acc, iters, forced = self.acc_sum.tolist(), self.iters.tolist(), self.forced.tolist()
        rows = []
        for b in range(self.B):
            toks = out[b][:n_out[b]]
            if self.mode == "quadratic-spec":
                toks = toks[:self.max_new]   # the reference returns exactly max_new_tokens
            if self.eos >= 0 and self.eos in toks:
                toks = toks[:toks.index(self.eos) + 1]
            spec = self.mode in ("linear-spec", "quadratic-spec")
            rows.append(RowResult(
                prompt_ids=self.prompts[b], tokens=toks, nfe=nfe[b],
                tokens_per_forward=len(toks) / nfe[b] if nfe[b] else 0.0,
                mean_accepted=(acc[b] / iters[b] if iters[b] else 0.0) if spec else None,
                iterations=iters[b], forced_fills=forced[b]))
        return rows


class _Graphed:
    """Calls fn eagerly once as warm-up on a side stream (lazy init, allocator, kernel
    compilation and autotuning happen there; that call is a real iteration), captures
    fn into a CUDA graph on the second call and replays it from then on (capture only
    records, so the replay right after it is that call's iteration). fn must read and
    write only tensors that outlive it, in place (torch.cuda.graphs semantics)."""

    def __init__(self, fn, strict):
        self.fn, self.strict, self.replay, self.warm = fn, strict, None, False

    def __call__(self):
        if self.replay is None:
            if not self.warm:
                _warm_up(self.fn)
                self.warm = True
                return
            try:
                self.replay = _capture(self.fn)
            except Exception as exc:   # a failed capture ran nothing: the state is intact
                if self.strict:
                    raise
                warnings.warn(f"CUDA graph capture of {getattr(self.fn, '__name__', 'a step')} failed "
                              f"({exc}); running it eagerly", RuntimeWarning, stacklevel=2)
                self.replay = self.fn
        self.replay()


def _warm_up(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


def _capture(fn):
    """Record fn into a CUDA graph (nothing runs) and return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _block_settled(block, mask_id, eos_id):
    """bool [B]: no mask left, or an eos with no mask before it (SPEC early stop)."""
    is_mask = block == mask_id
    no_mask_before = torch.cumsum(is_mask.int(), 1) == 0
    eos_clear = (block == eos_id) & no_mask_before if eos_id >= 0 else torch.zeros_like(is_mask)
    return ~is_mask.any(1) | eos_clear.any(1)


def _device(model):
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    return next(model.parameters()).device
