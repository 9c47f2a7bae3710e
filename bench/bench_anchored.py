"""Pruned (anchored) quadratic self-speculation against full quadratic, linear
self-speculation and AR, on the bundled trained model (CPU, float32, greedy, batch 1).

    python -m bench.bench_anchored [--model DIR] [--prompts 8] [--new-tokens 64]
                                   [--blocks 16,32] [--ks 1,2,4,8] [--out DIR]

For each block length L, every contender decodes the same held-out prompts (whole lines
of held-out stdlib files, tridiff.train.heldout.code_prompts), one prompt at a time, the
contenders taking turns per prompt so a change of machine load falls on all alike:

  ar              generate(mode="ar")
  linear          generate(mode="linear-spec", block_length=L), one draft forward
  quadratic       generate(mode="quadratic-spec", block_length=L): L(L+1) rows / forward
  anchored-k      generate(mode="quadratic-spec", block_length=L, anchors=k): L(k+1) rows
  fixed-0137      anchors=(0, 1, 3, 7): a fixed anchor set, the baseline for the choice

Every forward is timed; the first of a call (prefill, or prompt + first draft) is kept
apart, the iterations' forwards are grouped by their number of rows.
A row of the table: iterations' rows per forward, tokens per forward (NFE as the spec
counts it), mean accepted length, ms per forward, tokens/s, rows per emitted token (what
predicts GPU cost once a forward is compute bound) and "== AR": every output equals AR
greedy token for token (up to its own length). The run stops with exit status 1 if one
does not. Rows are appended to bench/results/anchored.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from bench.common import ForwardLog
from bench.machine import environment
from bench.record import DEFAULT_OUT
from tridiff import models
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer
from tridiff.train import heldout


def contenders(L: int, ks) -> dict:
    runs = {"ar": dict(mode="ar"),
            "linear": dict(mode="linear-spec", block_length=L, threshold=0.0),
            "quadratic": dict(mode="quadratic-spec", block_length=L)}
    for k in ks:
        if k < L:
            runs[f"anchored-{k}"] = dict(mode="quadratic-spec", block_length=L, anchors=k)
    if L > 7:
        runs["fixed-0137"] = dict(mode="quadratic-spec", block_length=L, anchors=(0, 1, 3, 7))
    return runs


def decode_all(model, prompts, runs: dict, new_tokens: int) -> dict:
    """{name: dict(results, seconds, by_rows)} with the contenders interleaved per prompt."""
    out = {name: dict(results=[], seconds=0.0, by_rows={}) for name in runs}
    for p in prompts:
        for name, kw in runs.items():
            log = ForwardLog(model, first_apart=True)
            extra = kw.get("block_length", 0) if name == "ar" else 0  # linear may overshoot by L-1
            with log.installed():
                res = generate(model, [p], max_new_tokens=new_tokens + extra, **kw)
            got = out[name]
            got["results"].append(res.results[0])
            got["seconds"] += res.seconds
            got["first_rows"] = got.get("first_rows", 0) + log.first[0]
            for rows, (n, s) in log.by_rows.items():
                n0, s0 = got["by_rows"].get(rows, (0, 0.0))
                got["by_rows"][rows] = (n0 + n, s0 + s)
    return out


def summarise(name, got, ar_results) -> dict:
    res = got["results"]
    tokens = sum(len(r.tokens) for r in res)
    nfe = sum(r.nfe for r in res)
    iters = sum(r.iterations for r in res)
    step_rows = got["by_rows"]   # the iterations' forwards (the first forward holds the prompt)
    n_steps = sum(v[0] for v in step_rows.values())
    rows_total = sum(r * v[0] for r, v in step_rows.items())
    step_ms = sum(v[1] for v in step_rows.values()) * 1e3
    same = all(r.tokens == a.tokens[:len(r.tokens)] for r, a in zip(res, ar_results))
    return dict(contender=name, tokens=tokens, nfe=nfe, iterations=iters, seconds=got["seconds"],
                tokens_per_forward=tokens / max(nfe, 1),
                mean_accepted=(sum(r.mean_accepted * r.iterations for r in res if r.iterations) / iters
                               if iters and name != "ar" else None),
                rows_per_step=rows_total / n_steps if n_steps else None,
                ms_per_step=step_ms / n_steps if n_steps else None,
                tokens_per_s=tokens / got["seconds"], rows_per_token=rows_total / max(tokens, 1),
                first_forward_rows=got["first_rows"], equals_ar=same,
                forwards={str(r): [v[0], v[1] * 1e3 / v[0]] for r, v in sorted(step_rows.items())})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64, help="a multiple of every block")
    ap.add_argument("--blocks", default="16,32")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    blocks = [int(x) for x in args.blocks.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    model_dir = args.model or models.path()
    model = Model.from_pretrained(model_dir, dtype=torch.float32)
    tok = Tokenizer.from_pretrained(model_dir)
    ids = [p["ids"] for p in heldout.code_prompts(tok, args.prompts)]
    generate(model, [ids[0]], mode="ar", max_new_tokens=4)  # warm-up (imports, allocator)
    env = environment(torch.device("cpu"))
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    ok = True
    print(f"model {os.path.basename(os.path.normpath(model_dir))}, {len(ids)} held-out prompts, batch 1, "
          f"{args.new_tokens} new tokens, float32, greedy, device {env['device']}")
    for L in blocks:
        runs = contenders(L, ks)
        runs["ar"]["block_length"] = L  # AR ignores it; decode_all runs AR L tokens longer (linear overshoots)
        got = decode_all(model, ids, runs, args.new_tokens)
        ar = got["ar"]["results"]
        rows = [summarise(name, g, ar) for name, g in got.items()]
        base = {r["contender"]: r for r in rows}
        print(f"\nL = {L}")
        print(f"{'contender':<13}{'rows/fwd':>9}{'tok/fwd':>8}{'accept':>7}{'ms/fwd':>8}{'tok/s':>8}"
              f"{'vs quad':>8}{'vs lin':>7}{'rows/tok':>9}{'== AR':>6}")
        for r in rows:
            r.update(L=L, vs_quadratic_tok_s=r["tokens_per_s"] / base["quadratic"]["tokens_per_s"],
                     vs_linear_tok_s=r["tokens_per_s"] / base["linear"]["tokens_per_s"],
                     vs_quadratic_tok_fwd=r["tokens_per_forward"] / base["quadratic"]["tokens_per_forward"])
            ok &= r["equals_ar"]
            acc = r["mean_accepted"]
            print(f"{r['contender']:<13}{(r['rows_per_step'] or 0):>9.0f}{r['tokens_per_forward']:>8.2f}"
                  f"{'' if acc is None else f'{acc:.2f}':>7}{(r['ms_per_step'] or 0):>8.2f}{r['tokens_per_s']:>8.1f}"
                  f"{r['vs_quadratic_tok_s']:>7.2f}x{r['vs_linear_tok_s']:>6.2f}x{r['rows_per_token']:>9.1f}"
                  f"{'yes' if r['equals_ar'] else 'NO':>6}")
            with open(out / "anchored.jsonl", "a") as fh:
                fh.write(json.dumps({"bench": "anchored", "model": os.path.basename(os.path.normpath(model_dir)),
                                     "prompts": len(ids), "new_tokens": args.new_tokens, **r, **env}) + "\n")
    if not ok:
        print("FAILED: an output differs from AR greedy")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
