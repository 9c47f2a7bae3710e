"""Drafts from real held-out prefixes, for comparing checkpoints of the bundled model's
family (drafter options of issue 24): the real-prefix part of bench.bench_model_quality
alone (a few minutes instead of ~40), plus the held-out losses each checkpoint's
training.json reports. No timing: accepted lengths and forwards only.

    python -m bench.bench_drafts DIR [DIR ...] [--prefixes 256] [--threads 1] [--out DIR]

Every checkpoint sees the same prefixes (tridiff.train.heldout.real_prefixes of the
first checkpoint's tokenizer; all must share it), so per-prefix differences are paired:
the row of each checkpoint after the first carries the paired mean difference of its
linear accepted lengths against the first and that difference's standard error.
Appends one JSON row per checkpoint to bench/results/drafts.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from bench.bench_model_quality import real_prefix_acceptance
from bench.machine import environment
from bench.record import DEFAULT_OUT
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer
from tridiff.train import heldout


def paired(a: list, b: list) -> tuple:
    """(mean of b - a, its standard error)."""
    d = [y - x for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1)
    return mean, math.sqrt(var / len(d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="checkpoint directories (the first is the reference)")
    ap.add_argument("--prefixes", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(args.models[0])
    prefixes = heldout.real_prefixes(tok, args.prefixes)
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    first = None
    for d in args.models:
        with open(os.path.join(d, "tokenizer.json"), "rb") as a, open(os.path.join(args.models[0], "tokenizer.json"),
                                                                      "rb") as b:
            if a.read() != b.read():
                raise SystemExit(f"models: {d} has another tokenizer than {args.models[0]}")
        model = Model.from_pretrained(d, dtype=torch.float32)
        per = {}
        real = real_prefix_acceptance(model, prefixes, per)
        summary = {}
        if os.path.exists(os.path.join(d, "training.json")):
            with open(os.path.join(d, "training.json")) as fh:
                t = json.load(fh)
            summary = {k: t.get(k) for k in ("heldout_ar_loss", "heldout_diffusion_loss", "init_heldout")}
            summary["settings"] = t.get("settings")
        vs_first = {}
        if first is None:
            first = per
        else:
            for k, v in per.items():
                mean, se = paired(first[k], v)
                vs_first[k] = {"diff": mean, "stderr": se}
        lora = model.config.lora
        row = {"bench": "drafts", "model": os.path.basename(os.path.normpath(d)),
               "adapter": lora and {"rank": lora.rank, "alpha": lora.alpha}, "prefixes": len(prefixes),
               "real_prefixes": real, "vs_first": vs_first, "training": summary,
               **environment(torch.device("cpu"))}
        with open(out / "drafts.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        diffs = "  ".join(f"{k.replace('linear_', '').replace('_accepted', '')} {v['diff']:+.3f}±{v['stderr']:.3f}"
                          for k, v in vs_first.items())
        print(f"{row['model']}: " + ", ".join(f"{k} {v:.3f}" for k, v in real.items())
              + (f"\n  paired vs {os.path.basename(os.path.normpath(args.models[0]))}: {diffs}" if diffs else ""),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
