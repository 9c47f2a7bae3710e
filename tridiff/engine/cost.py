"""Strategy "auto": which running requests take linear self-speculation this step, and which AR.

The rule. A step's cost is the sum of its model calls, and a call's cost is a function
C(rows) of the token rows it carries (its forward-cost table). AR rows share one call
of T = 1 (1 row each); linear rows share a draft call and a verify call of T = L (L rows
each in both). A request is expected to emit 1 token per step by AR and a_r by linear
(a_r: the mean accepted per verify it has seen, a prior until it has one). Among the
assignments that give linear to the k requests with the highest a_r (k = 0..n: for a
fixed k those are the best ones to give it), take the one with the most expected tokens
per unit of cost for the whole step. Requests with a fixed strategy are in the sum too:
their rows sit in the calls first (an auto row joining a call pays only its growth) and
their tokens count.

The forward-cost table: relative cost against rows, per device kind. Shipped defaults
(cost_tables.json): "cpu" measured by bench/bench_engine.py on this project's CPU
machine with the bundled model; "cuda" from the H100 predictions in bench/NOTES.md
(memory-bound: flat until the rows' FLOPs reach the weight bytes' time). A bench run on
a machine writes its own table (Engine(cost_table=...) or TRIDIFF_ENGINE_COSTS=path).
With the default table the engine also times its own calls (CPU only: a CUDA call would
need a sync) and keeps an average per row bucket; the table's shape, scaled to the
nearest measured bucket, then gives the cost (Engine(calibrate=...)).
"""
from __future__ import annotations

import bisect
import json
import math
import os
from importlib import resources
from typing import Dict, List, Optional, Sequence

PRIOR_ACCEPTED = 2.0     # mean accepted per verify before a request has one of its own
EMA = 0.2                # weight of a new timing in a bucket's average


def load_table(spec, device_type: str) -> Dict[int, float]:
    """{rows: relative cost} from a dict, a JSON file path, or None (env var, then the default)."""
    if spec is None:
        spec = os.environ.get("TRIDIFF_ENGINE_COSTS") or None
    if spec is None:
        text = resources.files("tridiff.engine").joinpath("cost_tables.json").read_text()
        spec = json.loads(text)["cuda" if device_type == "cuda" else "cpu"]
    elif isinstance(spec, (str, os.PathLike)):
        with open(spec) as f:
            spec = json.load(f)
    rows = spec.get("rows") if isinstance(spec, dict) else None
    cost = spec.get("cost") if isinstance(spec, dict) else None
    if not rows or not cost or len(rows) != len(cost) or any(r < 1 for r in rows) or any(c <= 0 for c in cost):
        raise ValueError("cost_table: expected {'rows': [r >= 1 ...], 'cost': [c > 0 ...]} of equal length")
    return dict(sorted(zip((int(r) for r in rows), (float(c) for c in cost))))


class CostModel:
    def __init__(self, table: Dict[int, float]):
        self.rows = sorted(table)
        self.table = [table[r] for r in self.rows]
        self.measured: Dict[int, float] = {}   # bucket (power of two) -> seconds

    def observe(self, rows: int, seconds: float) -> None:
        b = _bucket(rows)
        old = self.measured.get(b)
        self.measured[b] = seconds if old is None else (1 - EMA) * old + EMA * seconds

    def cost(self, rows: int) -> float:
        """Relative cost of one call of `rows` token rows (0 for none)."""
        if rows <= 0:
            return 0.0
        base = self._table(rows)
        if not self.measured:
            return base
        # the table's shape, scaled to the nearest measured bucket
        b = min(self.measured, key=lambda m: abs(math.log2(m) - math.log2(_bucket(rows))))
        return base * self.measured[b] / self._table(b)

    def _table(self, rows: int) -> float:
        r, c = self.rows, self.table
        if rows <= r[0]:
            return c[0]
        if rows >= r[-1]:   # past the table: linear in rows (compute-bound)
            return c[-1] * rows / r[-1]
        i = bisect.bisect_left(r, rows)
        t = (math.log(rows) - math.log(r[i - 1])) / (math.log(r[i]) - math.log(r[i - 1]))
        return math.exp((1 - t) * math.log(c[i - 1]) + t * math.log(c[i]))

    def choose(self, accepted: Sequence[float], L: Sequence[int], fixed_rows: Dict[tuple, int],
               fixed_tokens: float = 0.0) -> List[bool]:
        """For auto requests with mean accepted[i] and block length L[i]: True where linear.
        fixed_rows: rows the fixed-strategy requests put in each call, keyed ("ar",) or
        ("draft"/"verify", L); fixed_tokens: the tokens they are expected to emit."""
        order = sorted(range(len(accepted)), key=lambda i: -accepted[i])
        best, best_k = -1.0, 0
        for k in range(len(order) + 1):
            rows = dict(fixed_rows)
            tokens = fixed_tokens
            for j, i in enumerate(order):
                if j < k:
                    for kind in ("draft", "verify"):
                        rows[(kind, L[i])] = rows.get((kind, L[i]), 0) + L[i]
                    tokens += accepted[i]
                else:
                    rows[("ar",)] = rows.get(("ar",), 0) + 1
                    tokens += 1.0
            rate = tokens / max(sum(self.cost(n) for n in rows.values()), 1e-12)
            if rate > best * (1 + 1e-9):
                best, best_k = rate, k
        use = [False] * len(accepted)
        for i in order[:best_k]:
            use[i] = True
        return use


def _bucket(rows: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(rows, 1))))
