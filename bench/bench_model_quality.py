"""What the bundled trained model shows: readable greedy text, accepted drafts from
real held-out contexts, and lossless self-speculation (CPU, float32), with its drafter
adapter (linear_spec_lora, used in draft forwards only) on and off.

    python -m bench.bench_model_quality [--model DIR] [--prompts 20] [--prefixes 256]

Prints a table and appends one JSON row to bench/results/model_quality.jsonl.
  readability gate  20 held-out prompts (whole lines of held-out files), AR greedy
                    64-token completions: mean share of distinct tokens >= 0.5 and
                    no 4-gram more than 3 times in any completion
  real prefixes     one linear self-speculation iteration (draft + verify) from each
                    of N prefixes drawn across the held-out files: mean accepted
                    tokens per verify at block 16 and 32, adapter on and off;
                    quadratic self-speculation over a 16-token continuation of each:
                    accepted per verify and tokens per forward, full and pruned to
                    k = 4 anchors (the QUADRATIC forward never uses the adapter)
  completions       the four modes on the 20 prompts, batch 1: tokens per forward,
                    mean accepted, wall-clock tokens/s vs AR; linear and quadratic
                    outputs compared with AR greedy token for token; linear and
                    diffusion also with the adapter off ("no adapter" rows)
  sampled           linear self-speculation at temperature 0.8 with the lossless rule
                    (its output is distributed as AR sampling) on the 20 prompts, adapter
                    on and off: mean accepted per verify, and how many of the sampled
                    64-token completions pass the readability gate
  losses            held-out AR loss of the model and of the AR-only baseline
                    (training.json files written by python -m tridiff.train)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import torch

from bench.machine import environment
from bench.record import DEFAULT_OUT
from tridiff import models
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer
from tridiff.train import heldout

NEW_TOKENS = 64
BLOCK = 16
SAMPLED_T = 0.8
PRUNED_ANCHORS = 4
BASELINE_SUMMARY = Path(__file__).resolve().parent / "results" / "ar_only_baseline_training.json"


def gate_stats(tokens: list[int]) -> tuple[float, int]:
    """(share of distinct tokens, the most times any 4-gram occurs)."""
    grams = collections.Counter(tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3))
    return len(set(tokens)) / max(len(tokens), 1), max(grams.values(), default=0)


def passes_gate(tokens: list[int]) -> bool:
    distinct, repeats = gate_stats(tokens)
    return distinct >= 0.5 and repeats <= 3


def run_interleaved(model, prompts, runs: dict) -> dict:
    """Each prompt alone (batch 1) in every run, the runs taken in turn per prompt so a
    change of machine load falls on all of them alike: {name: (results, seconds)}."""
    out = {name: ([], 0.0) for name in runs}
    for p in prompts:
        for name, kw in runs.items():
            res = generate(model, [p], **kw)
            rows, sec = out[name]
            out[name] = (rows + [res.results[0]], sec + res.seconds)
    return out


def in_chunks(model, prompts, size, **kw):
    rows = []
    for i in range(0, len(prompts), size):
        rows += generate(model, prompts[i:i + size], **kw).results
    return rows


def real_prefix_acceptance(model, prefixes, per_prefix: dict | None = None) -> dict:
    """One linear self-speculation iteration (draft + verify) from each prefix at block
    16 and 32, adapter on and off (the same where the model has none), and quadratic
    self-speculation over a 16-token continuation of each, full and pruned to k = 4
    anchors: mean accepted per verify and tokens per forward. per_prefix, if given,
    receives each linear figure's per-prefix accepted lengths (for paired comparisons)."""
    real = {}
    for adapter, tag in ((True, ""), (False, "_no_adapter")):
        for L in (16, 32):  # prefill gives the seed (token 1); max_new_tokens 2 -> exactly one iteration
            res = in_chunks(model, prefixes, 32, mode="linear-spec", max_new_tokens=2, block_length=L, eos_id=-1,
                            adapter=adapter)
            assert all(r.iterations == 1 for r in res)
            real[f"linear_L{L}_accepted{tag}"] = sum(r.mean_accepted for r in res) / len(res)
            if per_prefix is not None:
                per_prefix[f"linear_L{L}_accepted{tag}"] = [r.mean_accepted for r in res]
    for anchors, tag in ((None, ""), (PRUNED_ANCHORS, f"_k{PRUNED_ANCHORS}")):
        res = in_chunks(model, prefixes, 16, mode="quadratic-spec", max_new_tokens=BLOCK, block_length=BLOCK,
                        eos_id=-1, anchors=anchors)
        real[f"quadratic_L16_accepted{tag}"] = (sum(r.mean_accepted * r.iterations for r in res)
                                                / sum(r.iterations for r in res))
        real[f"quadratic_L16_tokens_per_forward{tag}"] = sum(len(r.tokens) for r in res) / sum(r.nfe for r in res)
    return real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prefixes", type=int, default=256)
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--baseline", default=str(BASELINE_SUMMARY), help="training.json of the AR-only baseline")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model_dir = args.model or models.path()
    model = Model.from_pretrained(model_dir, dtype=torch.float32)
    tok = Tokenizer.from_pretrained(model_dir)
    prompts = heldout.code_prompts(tok, args.prompts)
    ids = [p["ids"] for p in prompts]
    generate(model, [ids[0]], mode="ar", max_new_tokens=4)  # warm-up (imports, allocator)

    # ---- completions, batch 1 -------------------------------------------------------------
    linear = dict(mode="linear-spec", block_length=BLOCK, threshold=0.0)
    diffusion = dict(mode="diffusion", block_length=BLOCK, threshold=0.9)
    sampled = dict(linear, temperature=SAMPLED_T, rule="lossless", seed=0)
    modes = {   # greedy rows: the first three are the adapter's default (on)
        "linear-spec": linear,
        "quadratic-spec": dict(mode="quadratic-spec", block_length=BLOCK),
        "diffusion": diffusion,
        "linear-spec no adapter": dict(linear, adapter=False),
        "diffusion no adapter": dict(diffusion, adapter=False),
        f"linear-spec T{SAMPLED_T}": sampled,
        f"linear-spec T{SAMPLED_T} no adapter": dict(sampled, adapter=False),
    }
    runs = run_interleaved(model, ids, {"ar-long": dict(mode="ar", max_new_tokens=NEW_TOKENS + BLOCK),
                                        "ar": dict(mode="ar", max_new_tokens=NEW_TOKENS),
                                        **{name: dict(max_new_tokens=NEW_TOKENS, **kw) for name, kw in modes.items()}})
    ar = runs["ar-long"][0]  # long enough to compare linear's overshoot with
    ar64 = [r.tokens[:NEW_TOKENS] for r in ar]
    gates = [gate_stats(t) for t in ar64]
    distinct = sum(g[0] for g in gates) / len(gates)
    worst_repeat = max(g[1] for g in gates)
    passing = [i for i, t in enumerate(ar64) if passes_gate(t)]
    ar_only, ar_only_s = runs["ar"]
    rows = {"ar": dict(tokens=sum(len(r.tokens) for r in ar_only), nfe=sum(r.nfe for r in ar_only),
                       seconds=ar_only_s)}
    lossless = {}
    for name in modes:
        res, sec = runs[name]
        gated = [res[i] for i in passing]
        rows[name] = dict(tokens=sum(len(r.tokens) for r in res), nfe=sum(r.nfe for r in res), seconds=sec,
                          gated_tokens_per_forward=sum(len(r.tokens) for r in gated) / max(sum(r.nfe for r in gated), 1),
                          mean_accepted=(sum(r.mean_accepted * r.iterations for r in res if r.iterations)
                                         / max(sum(r.iterations for r in res), 1))
                          if not name.startswith("diffusion") else None)
        if "temperature" in modes[name]:   # sampled: readable completions, not AR greedy's
            rows[name]["gate_passing"] = sum(passes_gate(r.tokens[:NEW_TOKENS]) for r in res)
        elif not name.startswith("diffusion"):  # lossless: every row equals AR greedy (to its length / eos)
            lossless[name] = all(r.tokens == a.tokens[:len(r.tokens)] for r, a in zip(res, ar))
        rows[name]["samples"] = [tok.decode(r.tokens) for r in res[:2]]
    for name, row in rows.items():
        row["tokens_per_forward"] = row["tokens"] / row["nfe"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["speedup_vs_ar"] = row["tokens_per_s"] / (rows["ar"]["tokens"] / rows["ar"]["seconds"])

    # ---- acceptance from real prefixes -------------------------------------------------------
    prefixes = heldout.real_prefixes(tok, args.prefixes)
    real = real_prefix_acceptance(model, prefixes)

    # ---- losses ------------------------------------------------------------------------------
    def summary(path):
        try:
            with open(path) as fh:
                return json.load(fh)
        except OSError:
            return None
    own, base = summary(os.path.join(model_dir, "training.json")), summary(args.baseline)
    losses = {"heldout_ar_loss": own and own["heldout_ar_loss"],
              "heldout_diffusion_loss": own and own["heldout_diffusion_loss"],
              "ar_only_baseline_heldout_ar_loss": base and base["heldout_ar_loss"],
              "steps": own and own["settings"]["steps"], "baseline_steps": base and base["settings"]["steps"]}

    lora = model.config.lora
    record = {"bench": "model_quality", "model": os.path.basename(os.path.normpath(model_dir)),
              "adapter": lora and {"rank": lora.rank, "alpha": lora.alpha},
              "prompts": len(ids), "prefixes": len(prefixes), "new_tokens": NEW_TOKENS, "block": BLOCK,
              "gate": {"mean_distinct": distinct, "max_4gram_repeats": worst_repeat, "passing": len(passing)},
              "real_prefixes": real, "completions": rows, "lossless": lossless, "losses": losses,
              "completions_text": [{"prompt": p["text"], "file": p["file"], "line": p["first_line"],
                                    "completion": tok.decode(t)} for p, t in zip(prompts[:3], ar64[:3])],
              "sampled_text": [tok.decode(r.tokens[:NEW_TOKENS]) for r in runs[f"linear-spec T{SAMPLED_T}"][0][:3]],
              **environment(torch.device("cpu"))}
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "model_quality.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")

    print(f"model {model_dir}  device {record['device']}  float32, greedy, block {BLOCK}")
    print(f"readability gate: mean distinct {distinct:.2f} (>= 0.50), worst 4-gram repeats {worst_repeat} (<= 3), "
          f"{len(passing)}/{len(ids)} completions pass")
    print(f"adapter: {record['adapter'] or 'none'}")
    print(f"real prefixes ({len(prefixes)}): linear accepted/verify L16 {real['linear_L16_accepted']:.2f} "
          f"(no adapter {real['linear_L16_accepted_no_adapter']:.2f}) L32 {real['linear_L32_accepted']:.2f} "
          f"(no adapter {real['linear_L32_accepted_no_adapter']:.2f}); quadratic L16 accepted/verify "
          f"{real['quadratic_L16_accepted']:.2f} (tokens/forward {real['quadratic_L16_tokens_per_forward']:.2f}, "
          f"k={PRUNED_ANCHORS} {real[f'quadratic_L16_tokens_per_forward_k{PRUNED_ANCHORS}']:.2f})")
    print(f"{'mode':<30}{'tokens':>7}{'NFE':>6}{'tok/fwd':>9}{'gated':>7}{'accepted':>10}{'tok/s':>8}"
          f"{'vs AR':>7}{'== AR':>7}{'gate':>6}")
    for name, row in rows.items():
        acc = row.get("mean_accepted")
        same = {True: "yes", False: "NO"}.get(lossless.get(name), "-")
        gated = row.get("gated_tokens_per_forward")
        gate = row.get("gate_passing")
        print(f"{name:<30}{row['tokens']:>7}{row['nfe']:>6}{row['tokens_per_forward']:>9.2f}"
              f"{'' if gated is None else f'{gated:.2f}':>7}{'' if acc is None else f'{acc:.2f}':>10}"
              f"{row['tokens_per_s']:>8.1f}{row['speedup_vs_ar']:>6.2f}x{same:>7}"
              f"{'' if gate is None else f'{gate}/{len(ids)}':>6}")
    print(f"held-out AR loss {losses['heldout_ar_loss']}, AR-only baseline {losses['ar_only_baseline_heldout_ar_loss']}")
    for c in record["completions_text"]:
        print(f"--- {c['file']}:{c['line']}\n{c['prompt']}>>>{c['completion']}")
    for c, text in zip(record["completions_text"], record["sampled_text"]):
        print(f"--- sampled (T={SAMPLED_T}, lossless linear self-speculation) {c['file']}:{c['line']}\n>>>{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
