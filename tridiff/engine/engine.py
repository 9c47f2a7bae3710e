"""Engine: requests that join and leave at any step, a strategy per request, one paged cache.

    engine = Engine(model, max_rows=32)
    rid = engine.add_request(prompt_ids, strategy="auto", max_new_tokens=64)
    while engine.has_work():
        for out in engine.step():          # RequestOutput: new tokens, finished, reason
            ...

A step (the plan is host work; the run is the model calls and ops):
  1. admit waiting requests, first come first served, while a row is free and the pages
     the request may need at worst are not promised to others (admission by free pages);
  2. pick the strategy of every "auto" request in its decode phase (tridiff.engine.cost);
  3. group the running requests into cohorts (same program, phase and scalar settings) and
     run one step of each cohort's program (tridiff.engine.programs); their forwards are
     merged across cohorts into one model call per call shape (query length, KV writing,
     adapter, explicit positions), each row with its own mode, mode_args and q_len, on
     views of the shared PagePool;
  4. one host read: every cohort's accepted lengths and tokens, copied in one go; the
     host state of every request is updated from it; finished requests leave and their
     pages go back to the free stack.
Host reads per step: 1, plus one per extra draft pass of linear-spec requests with a
threshold (generate makes the same "any mask left" check). A long prompt is prefilled one
chunk per step (prefill_chunk tokens), with at most prefill_budget prompt tokens per step
in all, so running requests never wait for more than one chunk.

Every request's output equals what tridiff.generate gives it alone with the same settings
and seed (greedy: token for token; sampled: the same noise stream, since the noise of a
row is keyed by its own seed and forward count), whatever else shares its steps. "auto"
runs AR or linear-spec per step (both keep "last token emitted, not in the cache" between
iterations, so switching costs nothing); its greedy output is AR's whatever the load.
With temperature > 0 "auto" runs AR only, so a sampled text never depends on the load.
"""
from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from tridiff import _checks as chk
from tridiff._checks import TridiffInputError
from tridiff.engine import programs as prog
from tridiff.engine.cost import PRIOR_ACCEPTED, CostModel, load_table
from tridiff.engine.pool import PagePool
from tridiff.engine.request import Phase, Request, check_settings, extra_len


@dataclass
class RequestOutput:
    """What step() reports for a request that produced tokens or finished."""
    request_id: int
    new_tokens: List[int]
    finished: bool
    finish_reason: Optional[str] = None      # "stop" (eos / stop id) | "length" | "abort"
    tokens: Optional[List[int]] = None       # when finished: every generated id
    nfe: int = 0
    tokens_per_forward: float = 0.0
    mean_accepted: Optional[float] = None    # self-speculation: mean accepted per verify
    accepted_lengths: Optional[List[int]] = None
    strategy: str = ""                       # as asked ("auto" included)
    strategies_run: Optional[Dict[str, int]] = None   # steps per strategy actually run


class Engine:
    def __init__(self, model, *, max_rows: int = 32, max_context: Optional[int] = None, page_size: int = 16,
                 num_pages: Optional[int] = None, prefill_chunk: int = 64, prefill_budget: Optional[int] = None,
                 backend: str = "auto", cost_table=None, calibrate: Optional[bool] = None):
        """cost_table: strategy auto's forward-cost table (tridiff.engine.cost.load_table: a
        dict, a JSON path, or None for $TRIDIFF_ENGINE_COSTS or the shipped default).
        calibrate: time the engine's own CPU calls and let them rescale the table (default:
        on with the default table, off with a table given here, which is taken as is)."""
        def positive(name, v):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TridiffInputError(f"{name}: expected a positive int, got {v!r}")
            return v

        cfg = model.config
        self.model = model
        self.device = model.device
        self.mask_id = int(cfg.mask_token_id)
        self.backend = backend
        self.max_rows = positive("max_rows", max_rows)
        limit = int(getattr(cfg, "max_position_embeddings", 4096))
        self.max_context = positive("max_context", max_context if max_context is not None else min(limit, 2048))
        if self.max_context > limit:
            raise TridiffInputError(f"max_context: expected at most the model's {limit} positions, "
                                    f"got {self.max_context}")
        self.page_size = positive("page_size", page_size)
        pages_per_row = -(-self.max_context // self.page_size)
        self.prefill_chunk = positive("prefill_chunk", prefill_chunk)
        self.prefill_budget = positive("prefill_budget",
                                       prefill_budget if prefill_budget is not None else 2 * prefill_chunk)
        num_pages = positive("num_pages", num_pages if num_pages is not None else max_rows * pages_per_row)
        self.pool = PagePool(model, max_rows=max_rows, max_context=self.max_context, page_size=self.page_size,
                             num_pages=num_pages)
        self.costs = CostModel(load_table(cost_table, self.device.type))
        self.calibrate = (cost_table is None) if calibrate is None else bool(calibrate)
        self._ids = itertools.count()
        self.waiting: collections.deque = collections.deque()
        self.running: Dict[int, Request] = {}
        self._free_slots = list(range(max_rows - 1, -1, -1))
        self._promised = 0             # pages promised to running requests (worst case)
        self._outbox: List[RequestOutput] = []   # aborts between steps, reported by the next step()
        self._ran: Dict[int, collections.Counter] = {}
        self.host_reads = 0            # host reads made by steps (the sync audit's count)
        self.steps = 0

    # ---- requests --------------------------------------------------------------------------

    def add_request(self, prompt_ids, *, strategy: str = "auto", max_new_tokens: int = 64, temperature: float = 0.0,
                    threshold: Optional[float] = None, block_length: Optional[int] = None, anchors=None,
                    stop_ids=(), seed: int = 0, rule: str = "lossless", adapter: bool = True) -> int:
        """Queue a request; returns its id. Bad arguments raise TridiffInputError naming the
        argument; nothing is queued then. It joins at a step where a row and its pages are free."""
        prompt, settings = check_settings(
            self.model.config, prompt_ids, strategy=strategy, max_new_tokens=max_new_tokens,
            temperature=temperature, threshold=threshold, block_length=block_length, anchors=anchors,
            stop_ids=stop_ids, seed=seed, rule=rule, adapter=adapter, max_context=self.max_context)
        need = -(-(len(prompt) + extra_len(strategy, max_new_tokens, settings.block_length, settings.anchors))
                 // self.page_size)
        if need > self.pool.num_pages:
            raise TridiffInputError(f"prompt_ids: expected a request that fits the cache's {self.pool.num_pages} "
                                    f"pages of {self.page_size}, got one needing {need}")
        r = Request(id=next(self._ids), prompt=prompt, settings=settings, pages_needed=need)
        self.waiting.append(r)
        return r.id

    def abort(self, request_id: int) -> bool:
        """Stop a request now: its pages go back at once; the next step() reports it
        (finish_reason "abort"). False if it is not queued or running."""
        for r in self.waiting:
            if r.id == request_id:
                self.waiting.remove(r)
                break
        else:
            r = self.running.get(request_id)
            if r is None:
                return False
            self._leave(r)
        r.finish_reason = "abort"
        self._outbox.append(self._output(r, []))
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._outbox)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def total_pages(self) -> int:
        return self.pool.num_pages

    @property
    def free_pages(self) -> int:
        """Pages on the free stack (a host read: for tests and monitoring, not the loop)."""
        return int(self.pool.cache.free_count[0])

    # ---- the step --------------------------------------------------------------------------

    def step(self) -> List[RequestOutput]:
        """One iteration of every running request; returns the outputs of this step."""
        outputs, self._outbox = self._outbox, []
        self._admit()
        if not self.running:
            return outputs
        with torch.no_grad(), chk.trusted(cpu=True):
            cohorts = self._cohorts()
            readbacks = self._run(cohorts)
            self._read(readbacks)
        self.steps += 1
        for r in list(self.running.values()):
            fresh = r.visible()[r.streamed:]
            if r.finish_reason is not None:
                self._leave(r)
            if fresh or r.finish_reason is not None:
                outputs.append(self._output(r, fresh))
        with chk.trusted(cpu=True):
            self.pool.release_unused_(self.backend)
        return outputs

    def run_until_done(self, on_output: Optional[Callable[[RequestOutput], None]] = None) -> Dict[int, RequestOutput]:
        """Step until no request is left; returns the final output of every request."""
        done = {}
        while self.has_work():
            for out in self.step():
                if on_output is not None:
                    on_output(out)
                if out.finished:
                    done[out.request_id] = out
        return done

    def stream(self, request_id: int):
        """Yield a request's new tokens step by step until it finishes (steps the engine,
        so the other requests advance too)."""
        while True:
            for out in self.step():
                if out.request_id == request_id:
                    if out.new_tokens:
                        yield out.new_tokens
                    if out.finished:
                        return
            if not self.has_work():
                return

    # ---- plan ------------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and self._free_slots:
            r = self.waiting[0]
            if self._promised + r.pages_needed > self.pool.num_pages:
                break   # first come, first served: later requests wait behind it
            self.waiting.popleft()
            r.slot = self._free_slots.pop()
            self._promised += r.pages_needed
            r.phase = Phase.PREFILL if len(r.prompt) > self.prefill_chunk else Phase.START
            self.running[r.id] = r
            self._ran[r.id] = collections.Counter()

    def _leave(self, r: Request) -> None:
        with chk.trusted(cpu=True):
            self.pool.free_rows_(torch.tensor([r.slot], dtype=torch.int64, device=self.device), self.backend)
        self._free_slots.append(r.slot)
        self._promised -= r.pages_needed
        del self.running[r.id]
        r.phase = Phase.FINISHED

    def _strategies(self) -> Dict[int, str]:
        """The strategy each running request runs this step ("auto" resolved)."""
        run = {}
        auto = []
        fixed_rows: Dict[tuple, int] = collections.Counter()
        fixed_tokens = 0.0
        for r in self.running.values():
            s = r.settings
            if s.strategy != "auto":
                run[r.id] = s.strategy
                if r.phase == Phase.DECODE and s.strategy == "ar":
                    fixed_rows[("ar",)] += 1
                    fixed_tokens += 1.0
                elif r.phase == Phase.DECODE and s.strategy == "linear-spec":
                    fixed_rows[("draft", s.block_length)] += s.block_length
                    fixed_rows[("verify", s.block_length)] += s.block_length
                    fixed_tokens += r.mean_accepted() or PRIOR_ACCEPTED
            elif r.phase != Phase.DECODE or s.temperature > 0:
                run[r.id] = "ar"
            else:
                auto.append(r)
        if auto:
            acc = [r.mean_accepted() or PRIOR_ACCEPTED for r in auto]
            use = self.costs.choose(acc, [r.settings.block_length for r in auto], dict(fixed_rows), fixed_tokens)
            for r, lin in zip(auto, use):
                run[r.id] = "linear-spec" if lin else "ar"
        return run

    def _cohorts(self) -> List[prog.Cohort]:
        run = self._strategies()
        groups = collections.defaultdict(list)
        budget = self.prefill_budget
        for r in self.running.values():
            if r.phase in (Phase.PREFILL, Phase.START):
                take = min(self.prefill_chunk, len(r.prompt) - r.prefilled)
                if take > budget and budget < self.prefill_budget:
                    continue   # over this step's prompt budget: next step
                budget -= take
            strategy = run[r.id]
            fn = prog.program_for(strategy, r.phase, r.settings.anchors)
            sub = r.state.get("commit") if strategy == "diffusion" and r.phase == Phase.DECODE else None
            key = (fn, sub) if fn is prog.prefill_chunk else (fn, sub, r.settings.key(strategy))
            groups[key].append((r, strategy))
        cohorts = []
        for (fn, *_), members in groups.items():
            c = prog.Cohort(self, [r for r, _ in members], members[0][1], fn)
            for r, s in members:
                if r.phase == Phase.DECODE:   # iterations only: every strategy shares the prefill
                    self._ran[r.id][s] += 1
            cohorts.append(c)
        return cohorts

    # ---- run -------------------------------------------------------------------------------

    def _run(self, cohorts: List[prog.Cohort]) -> List[prog.Readback]:
        """Drive every cohort's program; their forwards, round by round, share model calls."""
        live = {}
        done = []
        for c in cohorts:
            gen = c.program(c)
            self._advance(gen, None, live, done)
        while live:
            calls = [(g, y) for g, y in live.items() if isinstance(y, prog.Forward)]
            syncs = [(g, y) for g, y in live.items() if isinstance(y, prog.Sync)]
            replies = {}
            for g, s in syncs:
                self.host_reads += 1
                replies[g] = bool(s.flag)
            replies.update(self._forward(calls))
            for g, reply in replies.items():
                self._advance(g, reply, live, done)
        return done

    @staticmethod
    def _advance(gen, reply, live, done) -> None:
        try:
            live[gen] = gen.send(reply)
        except StopIteration as stop:
            live.pop(gen, None)
            done.append(stop.value)

    def _forward(self, calls) -> dict:
        """One model call per call shape; returns each program's logits rows."""
        by_key = collections.defaultdict(list)
        for g, f in calls:
            by_key[f.key()].append((g, f))
        replies = {}
        for (T, kv, adapter, _), group in by_key.items():
            fs = [f for _, f in group]
            dev = self.device
            tokens = torch.cat([f.tokens for f in fs])
            slots = torch.cat([f.slots for f in fs])
            modes = torch.tensor([int(m) for f in fs for m in f.modes], dtype=torch.int8, device=dev)
            q_lens = torch.tensor([q for f in fs for q in f.q_lens], dtype=torch.int32, device=dev)
            mode_args = torch.cat([f.mode_args_t.to(torch.int32) if f.mode_args_t is not None else
                                   torch.tensor(f.mode_args or [0] * len(f.q_lens), dtype=torch.int32, device=dev)
                                   for f in fs])
            positions = None if fs[0].positions is None else torch.cat([f.positions for f in fs])
            view = self.pool.view(slots)
            start = time.perf_counter()
            logits = self.model.forward(tokens, view, modes=modes, mode_args=mode_args, q_lens=q_lens,
                                        positions=positions, kv=kv, adapter=adapter, backend=self.backend)
            if self.calibrate and dev.type == "cpu":
                self.costs.observe(tokens.numel(), time.perf_counter() - start)
            if kv != "none":
                view.write_back()
            i = 0
            for g, f in group:
                n = f.tokens.shape[0]
                replies[g] = logits[i:i + n]
                i += n
        return replies

    def _read(self, readbacks: List[prog.Readback]) -> None:
        """The step's one host read: every readback tensor, flattened into one copy."""
        flat = [t.reshape(-1).to(torch.int64) for rb in readbacks for t in rb.tensors]
        host = torch.cat(flat).tolist() if flat else []
        self.host_reads += 1 if flat else 0
        i = 0
        for rb in readbacks:
            parts = []
            for t in rb.tensors:
                n, w = t.shape
                parts.append([host[i + j * w:i + (j + 1) * w] for j in range(n)])
                i += n * w
            rb.apply(parts)

    def _output(self, r: Request, fresh: List[int]) -> RequestOutput:
        r.streamed += len(fresh)
        out = RequestOutput(request_id=r.id, new_tokens=fresh, finished=r.finish_reason is not None,
                            finish_reason=r.finish_reason, strategy=r.strategy)
        if out.finished:
            toks = r.visible()
            out.tokens = toks
            out.nfe = r.nfe
            out.tokens_per_forward = len(toks) / r.nfe if r.nfe else 0.0
            out.mean_accepted = r.mean_accepted()
            out.accepted_lengths = list(r.accepted_lengths)
            out.strategies_run = dict(self._ran.pop(r.id, {}))
        return out
