"""One request of the engine: its settings (checked once, at add_request) and its host state.

Everything a step needs to plan is on the host: the tokens emitted so far, the committed
cache length, the forwards done (the row's random offset), the phase. The step's one
host read (tridiff.engine.engine) brings back what the device decided (accepted
lengths, tokens), and the programs (tridiff.engine.programs) write it here.
"""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from tridiff._checks import TridiffInputError
from tridiff.decode.api import check_anchors, is_token_id
from tridiff.decode.strategies import strategy_for

STRATEGIES = ("auto", "ar", "diffusion", "linear-spec", "quadratic-spec")
# What "auto" may run: the strategies whose greedy output is AR's and whose state between
# iterations is the same (the last token emitted, not yet in the cache), so that the
# choice can change at every step without a forward to switch.
AUTO_CHOICES = ("ar", "linear-spec")
RULES = ("lossless", "reference")


class Phase(enum.Enum):
    WAITING = "waiting"      # queued, no row, no pages
    PREFILL = "prefill"      # prompt chunks still to commit before the last one
    START = "start"          # the last prompt chunk: the strategy's first forward
    DECODE = "decode"        # iterations
    FINISHED = "finished"


@dataclass(frozen=True)
class Settings:
    """A request's decoding settings, checked. strategy "auto" is resolved per step."""
    strategy: str
    max_new_tokens: int
    temperature: float
    threshold: Optional[float]
    block_length: int
    anchors: Union[None, int, Tuple[int, ...]]
    rule: str
    seed: int
    adapter: bool
    eos_id: int
    stop_ids: Tuple[int, ...]

    def key(self, strategy: str) -> tuple:
        """Requests with equal keys are processed as one cohort (same scalars in every op)."""
        return (strategy, self.block_length, self.temperature, self.threshold, self.anchors, self.rule,
                self.adapter, self.eos_id)


@dataclass
class Request:
    """Host state of one request. `tokens` holds every emitted id (before trimming);
    `visible()` is what the caller sees."""
    id: int
    prompt: List[int]
    settings: Settings
    pages_needed: int                      # worst-case pages, reserved at admission
    phase: Phase = Phase.WAITING
    slot: int = -1                         # the row of the pool's block table
    prefilled: int = 0                     # prompt tokens committed
    lens: int = 0                          # committed cache length (host mirror)
    tokens: List[int] = field(default_factory=list)
    nfe: int = 0                           # forwards counted as docs/spec.md section 3 counts them
    rng_offset: int = 0                    # forwards done incl. uncounted: the noise stream position
    accepted: int = 0
    iterations: int = 0
    accepted_lengths: List[int] = field(default_factory=list)
    forced_fills: int = 0
    state: dict = field(default_factory=dict)   # strategy state between steps (tokens, device rows)
    finish_reason: Optional[str] = None
    streamed: int = 0                      # visible tokens already returned by step()

    @property
    def strategy(self) -> str:
        return self.settings.strategy

    def emit(self, toks) -> None:
        self.tokens.extend(toks)

    def visible(self) -> List[int]:
        """The output as generate returns it for this strategy: cut to max_new_tokens where
        generate cuts (quadratic; auto, whose answer is AR's), then after the first eos or
        stop id (included)."""
        s = self.settings
        toks = self.tokens
        if self.strategy in ("quadratic-spec", "auto", "ar"):
            toks = toks[:s.max_new_tokens]
        stops = set(s.stop_ids)
        if s.eos_id >= 0:
            stops.add(s.eos_id)
        for i, t in enumerate(toks):
            if t in stops:
                return toks[:i + 1]
        return list(toks)

    def hit_stop(self) -> bool:
        """An eos or stop id among the visible tokens."""
        v = self.visible()
        s = self.settings
        return bool(v) and (v[-1] in s.stop_ids or v[-1] == s.eos_id)

    def mean_accepted(self) -> Optional[float]:
        if not self.accepted_lengths:
            return None if self.strategy in ("ar", "diffusion") else 0.0
        return sum(self.accepted_lengths) / len(self.accepted_lengths)


def check_settings(cfg, prompt, *, strategy, max_new_tokens, temperature, threshold, block_length, anchors,
                   stop_ids, seed, rule, adapter, max_context) -> Tuple[List[int], Settings]:
    """add_request's argument checks (before anything is queued). Returns (prompt, Settings)."""
    def bad(arg, expected, got):
        raise TridiffInputError(f"{arg}: expected {expected}, got {got}")

    if strategy not in STRATEGIES:
        bad("strategy", "one of " + ", ".join(STRATEGIES), repr(strategy))
    if isinstance(prompt, (str, bytes)) or not hasattr(prompt, "__len__") or len(prompt) == 0:
        bad("prompt_ids", "a non-empty list of token ids", repr(prompt)[:40])
    if not all(is_token_id(t, cfg.vocab_size) for t in prompt):
        bad("prompt_ids", f"token ids in [0, {cfg.vocab_size})", list(prompt)[:8])
    ids = [operator.index(t) for t in prompt]
    L = block_length if block_length is not None else int(getattr(cfg, "block_length", 32))
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        bad("block_length", "a positive int", repr(block_length))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        bad("max_new_tokens", "a positive int", repr(max_new_tokens))
    if strategy in ("diffusion", "quadratic-spec") and max_new_tokens % L:
        bad("max_new_tokens", f"a multiple of the block length {L} for {strategy}", max_new_tokens)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        bad("temperature", "a number >= 0", repr(temperature))
    if strategy == "quadratic-spec" and temperature > 0:
        bad("temperature", "0 for quadratic-spec (its acceptance rule is greedy only)", temperature)
    if threshold is not None:
        if strategy not in ("diffusion", "linear-spec"):
            bad("threshold", f"None for {strategy} (diffusion and linear-spec take a threshold)", threshold)
        low_ok = strategy == "linear-spec"
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not (0 <= threshold <= 1 if low_ok else 0 < threshold <= 1):
            bad("threshold", "a number in [0, 1]" if low_ok else "a number in (0, 1]", repr(threshold))
        threshold = float(threshold)
    anchors = check_anchors(anchors, strategy, L)
    if rule not in RULES:
        bad("rule", "one of " + ", ".join(RULES), repr(rule))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        bad("seed", "an int in [0, 2**63)", repr(seed))
    stops = []
    for t in stop_ids or ():
        if not is_token_id(t, cfg.vocab_size):
            bad("stop_ids", f"token ids in [0, {cfg.vocab_size})", repr(t))
        stops.append(operator.index(t))
    extra = extra_len(strategy, max_new_tokens, L, anchors)
    if extra >= max_context:
        bad("max_new_tokens", f"a generation that fits the engine's context of {max_context} positions",
            f"{max_new_tokens} ({extra} positions for {strategy} before any prompt)")
    need = len(ids) + extra
    if need > max_context:
        bad("prompt_ids", f"prompt + generation within the engine's context of {max_context} positions",
            f"{need} positions (prompt {len(ids)}, {strategy}, max_new_tokens {max_new_tokens})")
    settings = Settings(strategy=strategy, max_new_tokens=max_new_tokens, temperature=float(temperature),
                        threshold=threshold, block_length=L, anchors=anchors, rule=rule, seed=seed,
                        adapter=bool(adapter), eos_id=int(cfg.eos_token_id), stop_ids=tuple(stops))
    return ids, settings


def extra_len(strategy: str, max_new: int, L: int, anchors) -> int:
    """Cache positions a request may touch beyond its prompt (its worst case): generate's
    own bound for the strategy ("auto" runs linear-spec at worst), plus for quadratic-spec
    a margin of L for the last prompt chunk's L mask slots."""
    mode = "linear-spec" if strategy == "auto" else strategy
    n = strategy_for(mode, anchors).extra_len(max_new, L, anchors)
    return n + L if mode == "quadratic-spec" else n
