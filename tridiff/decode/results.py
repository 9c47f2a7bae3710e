"""What generate returns, and the one host copy of a run's outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RowResult:
    """One prompt's result. tokens: generated ids only (eos included when hit)."""
    prompt_ids: List[int]
    tokens: List[int]
    nfe: int                       # forwards counted as docs/spec.md section 3 counts them
    tokens_per_forward: float      # len(tokens) / nfe
    mean_accepted: Optional[float]  # self-speculation: mean accepted length per verify
    iterations: int = 0            # verify forwards (self-spec) or blocks (diffusion)
    forced_fills: int = 0          # linear drafts finished by the no-hang rule


@dataclass
class GenerateOutput:
    mode: str                      # the decoding strategy, as generate(mode=...) named it
    results: List[RowResult]
    seconds: float
    total_tokens: int = field(init=False)
    total_nfe: int = field(init=False)
    tokens_per_forward: float = field(init=False)

    def __post_init__(self):
        self.total_tokens = sum(len(r.tokens) for r in self.results)
        self.total_nfe = sum(r.nfe for r in self.results)
        self.tokens_per_forward = self.total_tokens / max(self.total_nfe, 1)


def collect(run) -> List[RowResult]:
    """Copy a finished run's outputs and counters to the host (synchronises)."""
    out = run.out[:, :run.cap].tolist()
    n_out, nfe = run.n_out.tolist(), run.nfe.tolist()
    acc, iters, forced = run.accepted.tolist(), run.iterations.tolist(), run.forced_fills.tolist()
    rows = []
    for b in range(run.batch):
        toks = run.trim(out[b][:n_out[b]])
        rows.append(RowResult(
            prompt_ids=run.prompts[b], tokens=toks, nfe=nfe[b],
            tokens_per_forward=len(toks) / nfe[b] if nfe[b] else 0.0,
            mean_accepted=(acc[b] / iters[b] if iters[b] else 0.0) if run.speculative else None,
            iterations=iters[b], forced_fills=forced[b]))
    return rows
