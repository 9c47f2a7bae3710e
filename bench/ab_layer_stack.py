"""The C++ layer stack's forward time in two checkouts of tridiff, in one interleaved run.

    python -m bench.ab_layer_stack --a PATH_A --b PATH_B [--rounds 5] [--rows 1,4,16,24]

Each checkout needs its extension built in place (`python setup.py build_ext --inplace`
in it). Every round runs one fresh process per checkout, alternating A, B, B, A, ... so
that drift and contention hit both alike; each process times one forward of r token rows
(after a 96-token prompt, kv="write", TRIDIFF_CPU_LAYER_STACK=1) of the small and mid
random checkpoints of bench.bench_cpu_e2e, median of 20. Reported: the median over
rounds per checkout and the ratio B / A (< 1: B faster). Rows: bench/results/ab_layer_stack.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.machine import environment
from bench.record import DEFAULT_OUT

CHILD = r"""
import json, os, statistics, sys, tempfile, time
import torch
from bench.bench_cpu_e2e import config_for
from tridiff.checkpoint import write_random_checkpoint
from tridiff.model import Model
os.environ["TRIDIFF_CPU_LAYER_STACK"] = "1"
out = {}
for shape in sys.argv[1].split(","):
    cfg = config_for(shape)
    with tempfile.TemporaryDirectory() as d:
        write_random_checkpoint(d, cfg, seed=0, dtype=torch.float32, with_tokenizer=False)
        model = Model.from_pretrained(d, device="cpu", dtype=torch.float32)
    rows = [int(r) for r in sys.argv[2].split(",")]
    cache = model.new_cache(1, 96 + max(rows) + 1)
    g = torch.Generator().manual_seed(0)
    model.forward(torch.randint(200, cfg.vocab_size, (1, 96), generator=g), cache, kv="commit")
    for r in rows:
        tok = torch.randint(200, cfg.vocab_size, (1, r), generator=g)
        for _ in range(3):
            model.forward(tok, cache, kv="write")
        t = []
        for _ in range(20):
            t0 = time.perf_counter()
            model.forward(tok, cache, kv="write")
            t.append(time.perf_counter() - t0)
        out[f"{shape}-{r}"] = statistics.median(t) * 1e3
print(json.dumps(out))
"""


def one(tree: str, shapes: str, rows: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, str(Path(__file__).resolve().parents[1])]))
    res = subprocess.run([sys.executable, "-c", CHILD, shapes, rows], env=env, cwd=tree, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", default="small,mid")
    ap.add_argument("--rows", default="1,4,16,24")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    got = {"a": [], "b": []}
    for i in range(args.rounds):
        for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
            got[side].append(one(getattr(args, side), args.shapes, args.rows))
    env = environment(__import__("torch").device("cpu"))
    rows = []
    for key in got["a"][0]:
        a = statistics.median(r[key] for r in got["a"])
        b = statistics.median(r[key] for r in got["b"])
        row = {"bench": "ab_layer_stack", "case": key, "a_ms": a, "b_ms": b, "b_over_a": b / a,
               "a_rounds": [r[key] for r in got["a"]], "b_rounds": [r[key] for r in got["b"]],
               "device": env["device"], "timestamp": env["timestamp"]}
        rows.append(row)
        print(f"{key:10s} A {a:8.3f} ms  B {b:8.3f} ms  B/A {b / a:5.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "ab_layer_stack.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
