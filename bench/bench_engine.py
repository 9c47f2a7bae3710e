"""The engine on this machine: its forward-cost table, the "auto" crossover, and the engine
against back-to-back generate calls and one static batch.

    python -m bench.bench_engine [--quick] [--new N] [--levels 1,2,4,8,16,32] [--rounds R]

1. Forward cost against token rows on the bundled model (one call of r rows, median of
   many): written as a cost table (bench/results/engine_costs_<device>.json), the table
   the rest of the run's engines use (Engine(cost_table=...)).
2. Crossover: tokens/s of all-AR, all-linear and auto at each concurrency level (held-out
   prompts, greedy, max_new_tokens N), rounds interleaved across the three so that drift
   hits all alike; the median round is reported.
3. At concurrency 8: the engine (AR and auto) against back-to-back generate calls (batch 1
   each, AR) and one static generate batch (AR).
Rows: bench/results/engine.jsonl. Time only on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.machine import environment
from bench.record import DEFAULT_OUT
from tridiff import models
from tridiff.engine import Engine
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer
from tridiff.train import heldout

COST_ROWS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def forward_costs(model, rows, reps: int) -> dict:
    """Median ms of one forward of r token rows (one sequence, CAUSAL, KV written)."""
    ms = {}
    for r in rows:
        cache = model.new_cache(1, 512)
        tok = torch.randint(200, model.config.vocab_size, (1, r))
        times = []
        for _ in range(reps):
            cache.reset_()
            t0 = time.perf_counter()
            model.forward(tok, cache, kv="write")
            times.append(time.perf_counter() - t0)
        ms[r] = statistics.median(times) * 1e3
    return ms


def engine_run(model, prompts, strategy, new, table) -> tuple:
    """(tokens/s, tokens, steps, mean accepted) of one engine run of every prompt at once."""
    eng = Engine(model, max_rows=max(len(prompts), 1), max_context=512, cost_table=table)
    for p in prompts:
        eng.add_request(p, strategy=strategy, max_new_tokens=new)
    t0 = time.perf_counter()
    done = eng.run_until_done()
    dt = time.perf_counter() - t0
    toks = sum(len(o.tokens) for o in done.values())
    acc = [a for o in done.values() for a in (o.accepted_lengths or [])]
    ran = {}
    for o in done.values():
        for k, v in (o.strategies_run or {}).items():
            ran[k] = ran.get(k, 0) + v
    return toks / dt, toks, eng.steps, (sum(acc) / len(acc) if acc else None), ran


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few levels and tokens (a smoke run)")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.new, args.levels, args.rounds = 8, "1,2", 1
    levels = [int(x) for x in args.levels.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    directory = models.path()
    model = Model.from_pretrained(directory, dtype=torch.float32)
    tok = Tokenizer(directory)
    pool = [p["ids"] for p in heldout.code_prompts(tok, max(levels), min_tokens=32, max_tokens=96)]
    env = environment(model.device)
    rows_out = []

    def row(kind, **fields):
        r = {"bench": "engine", "kind": kind, **fields, "device": env["device"], "torch": env["torch"],
             "git_rev": env["git_rev"], "timestamp": env["timestamp"], "quick": args.quick}
        rows_out.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("torch", "git_rev", "timestamp")}))

    # 1. the cost table
    ms = forward_costs(model, COST_ROWS[:4] if args.quick else COST_ROWS, 5 if args.quick else 30)
    table = {"source": f"bench/bench_engine.py on {env['device']}, model {models.DEFAULT}, float32, "
                       f"git {env['git_rev']}", "rows": list(ms), "cost": [ms[r] / ms[1] for r in ms],
             "ms": [ms[r] for r in ms]}
    name = "engine_costs_cpu_quick.json" if args.quick else "engine_costs_cpu.json"
    (out / name).write_text(json.dumps(table, indent=1) + "\n")
    for r, v in ms.items():
        row("forward_cost", rows=r, median_ms=v, relative=v / ms[1])

    # 2. the crossover, rounds interleaved
    results = {}
    for rnd in range(args.rounds):
        for c in levels:
            for strategy in ("ar", "linear-spec", "auto"):
                results.setdefault((c, strategy), []).append(engine_run(model, pool[:c], strategy, args.new, table))
    for c in levels:
        best_fixed = 0.0
        for strategy in ("ar", "linear-spec", "auto"):
            runs = sorted(results[(c, strategy)], key=lambda x: x[0])
            tps, toks, steps, acc, ran = runs[len(runs) // 2]
            if strategy != "auto":
                best_fixed = max(best_fixed, tps)
            row("crossover", concurrency=c, strategy=strategy, tokens_per_s=tps, tokens=toks, steps=steps,
                mean_accepted=acc, strategy_steps=ran, rounds=[x[0] for x in results[(c, strategy)]],
                vs_best_fixed=(tps / best_fixed) if strategy == "auto" else None)

    # 3. engine vs back-to-back generate and one static batch, concurrency 8
    c = 8 if not args.quick else 2
    prompts = pool[:c]
    rates = {"engine-ar": [], "engine-auto": [], "back-to-back": [], "static-batch": []}
    for rnd in range(args.rounds):
        rates["engine-ar"].append(engine_run(model, prompts, "ar", args.new, table)[0])
        rates["engine-auto"].append(engine_run(model, prompts, "auto", args.new, table)[0])
        t0 = time.perf_counter()
        n = sum(len(generate(model, [p], mode="ar", max_new_tokens=args.new).results[0].tokens) for p in prompts)
        rates["back-to-back"].append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        res = generate(model, prompts, mode="ar", max_new_tokens=args.new)
        rates["static-batch"].append(res.total_tokens / (time.perf_counter() - t0))
    base = statistics.median(rates["back-to-back"])
    for k, v in rates.items():
        m = statistics.median(v)
        row("vs_generate", concurrency=c, runner=k, tokens_per_s=m, vs_back_to_back=m / base, rounds=v)

    name = "engine_quick.jsonl" if args.quick else "engine.jsonl"
    with open(out / name, "a") as f:
        for r in rows_out:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
