"""`tridiff demo`: held-out Python prompts completed by a trained model in all four
decoding modes, with the completions and a table of forwards, acceptance and speed.
Linear self-speculation and diffusion also run without the drafter adapter
(linear_spec_lora, draft forwards only; the "/no-adapter" rows), and one row samples
by linear self-speculation at temperature 0.8 with the lossless rule (distributed
exactly as AR sampling), its completions printed.

The prompts come from demo_prompts.json beside the checkpoint (the bundled model
ships held-out snippets of the standard library it was not trained on).
"""
from __future__ import annotations

import json
import os
import time

import torch

from tridiff.generate import generate
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer

SPEC_MODES = ("linear-spec", "quadratic-spec")
SAMPLED_T = 0.8
SAMPLED = f"linear-spec/T{SAMPLED_T}"


def _prompts(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "demo_prompts.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the demo needs held-out prompts beside the checkpoint")
    with open(path) as fh:
        return json.load(fh)


def _tail(text: str, lines: int = 4) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


def run_demo(model_dir: str, max_new_tokens: int = 64, adapter: bool = True) -> int:
    torch.manual_seed(0)
    model = Model.from_pretrained(model_dir, dtype=torch.float32, adapter="auto" if adapter else False)
    tok = Tokenizer.from_pretrained(model_dir)
    prompts = _prompts(model_dir)
    L = model.config.block_length
    if max_new_tokens % L:
        raise ValueError(f"--max-new-tokens: expected a multiple of the block size {L}, got {max_new_tokens}")
    ids = [tok.encode(p["text"], add_bos=False) for p in prompts]
    generate(model, [ids[0]], mode="ar", max_new_tokens=2)  # warm-up: imports, allocator
    runs = {"ar": dict(mode="ar", max_new_tokens=max_new_tokens + L - 1),
            "diffusion": dict(mode="diffusion", max_new_tokens=max_new_tokens, threshold=0.9),
            "linear-spec": dict(mode="linear-spec", max_new_tokens=max_new_tokens, threshold=0.0),
            "quadratic-spec": dict(mode="quadratic-spec", max_new_tokens=max_new_tokens)}
    if model.has_adapter:
        runs["diffusion/no-adapter"] = dict(runs["diffusion"], adapter=False)
        runs["linear-spec/no-adapter"] = dict(runs["linear-spec"], adapter=False)
    runs[SAMPLED] = dict(runs["linear-spec"], temperature=SAMPLED_T, rule="lossless", seed=0)
    device = f"cpu ({torch.get_num_threads()} threads)"
    lora = model.config.lora
    print(f"model {os.path.basename(os.path.normpath(model_dir))} on {device}, float32, greedy (and one sampled "
          f"row), block {L}, {len(prompts)} held-out prompts, {max_new_tokens} new tokens each; drafter adapter: "
          + (f"linear_spec_lora r={lora.rank} alpha={lora.alpha:g} (draft forwards only)" if lora else "none"))
    # Batch 1 (the latency a single user sees); the modes take turns per prompt so a
    # change of machine load falls on all of them alike.
    texts = {name: [] for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    for p in ids:
        for name, kw in runs.items():
            t0 = time.perf_counter()
            texts[name].append(generate(model, [p], block_length=L, **kw).results[0])
            seconds[name] += time.perf_counter() - t0
    text, ok = report(prompts, texts, seconds, block=L, max_new_tokens=max_new_tokens, decode=tok.decode)
    print(text)
    return 0 if ok else 1


def _matches_ar(result, ar) -> bool:
    return result.tokens == ar.tokens[:len(result.tokens)]


def report(prompts: list[dict], results: dict, seconds: dict, *, block: int, max_new_tokens: int,
           decode) -> tuple[str, bool]:
    """The completions and the table, from each mode's per-prompt results (tokens, nfe,
    iterations, mean_accepted) and total seconds. ok: every self-speculation completion
    is AR's (the lossless property at greedy); a completion that differs is printed on
    its own and its mode's row marked != AR."""
    L = block
    lines = []
    for i, p in enumerate(prompts):
        ar = results["ar"][i]
        same = [m for m in SPEC_MODES if _matches_ar(results[m][i], ar)]
        label = f" (and {'/'.join(m.split('-')[0] for m in same)} self-speculation, identical)" if same else ""
        lines.append(f"\n=== prompt {i + 1}: {p['source']}\n{_tail(p['text'])}")
        lines.append(f"--- AR{label}:\n{decode(ar.tokens[:max_new_tokens])}")
        for m in SPEC_MODES:
            if m not in same:
                lines.append(f"--- {m.split('-')[0]} self-speculation (differs from AR):\n"
                             f"{decode(results[m][i].tokens)}")
        lines.append(f"--- diffusion (threshold 0.9):\n{decode(results['diffusion'][i].tokens)}")
        if SAMPLED in results:
            lines.append(f"--- sampled, T={SAMPLED_T}: linear self-speculation, lossless rule (distributed as AR "
                         f"sampling):\n{decode(results[SAMPLED][i].tokens[:max_new_tokens])}")
    table = {}
    for name, rows in results.items():
        toks = sum(len(r.tokens) for r in rows)
        nfe = sum(r.nfe for r in rows)
        verifies = sum(r.iterations for r in rows)
        spec = name.split("/")[0] in SPEC_MODES
        accepted = (sum(r.mean_accepted * r.iterations for r in rows) / verifies
                    if spec and verifies else None)
        greedy_spec = spec and name != SAMPLED   # greedy: must be AR greedy's completion
        same = all(_matches_ar(r, a) for r, a in zip(rows, results["ar"])) if greedy_spec else None
        table[name] = (toks, nfe, accepted, toks / seconds[name], same)
    ar_rate = table["ar"][3]
    lines.append(f"\n{'mode':<24}{'tokens':>7}{'NFE':>6}{'tok/fwd':>9}{'accepted':>10}{'tok/s':>8}{'vs AR':>8}{'':>3}")
    for name, (toks, nfe, accepted, rate, same) in table.items():
        acc = "" if accepted is None else f"{accepted:.2f}"
        mark = "" if same is None else ("== AR" if same else "!= AR")
        lines.append(f"{name:<24}{toks:>7}{nfe:>6}{toks / nfe:>9.2f}{acc:>10}{rate:>8.1f}"
                     f"{rate / ar_rate:>7.2f}x  {mark}")
    lines.append(f"\ntok/fwd: generated tokens per model forward (NFE), the figure that carries over to a GPU, "
                 f"where a memory-bound {L}-row forward (one block) costs about one AR step. On a CPU tok/s "
                 f"depends on the machine's load and on rows per forward (quadratic: L(L+1) = {L * (L + 1)} at "
                 f"block {L}).")
    return "\n".join(lines), all(row[4] in (None, True) for row in table.values())
