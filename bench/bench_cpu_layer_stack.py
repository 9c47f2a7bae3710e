"""One model forward on CPU: the layer stack as one ops.decoder_layers_ call (C++) vs op by op.

    python -m bench.bench_cpu_layer_stack [--quick] [--out DIR] [--shapes small,mid] [--rows 1,4,16]

For each shape of bench.bench_cpu_e2e (random float32 checkpoint) and each number of
token rows, one forward of that many rows after a 96-token prompt (kv="write": the cache
is the same for every repetition) is timed with TRIDIFF_CPU_LAYER_STACK=1 (the C++ stack)
and =0 (the op-by-op layers), interleaved, median of the repetitions. The crossover
(rows x weights per layer) is what tridiff.layer_stack.MAX_ROW_WEIGHTS is set below.

Rows (bench/results/cpu_layer_stack.jsonl): one per shape, rows and path; extra.rows,
extra.row_weights (rows x projection weights per layer), extra.max_abs_diff (logits of
the two paths), ratio = op-by-op ms / this ms for the stack rows.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from bench.bench_cpu_e2e import config_for
from bench.common import bench_main, start_run
from bench.timing import Timing
from tridiff import layer_stack

PATHS = {"stack": "1", "layers": "0"}


def plan(device: torch.device, quick: bool) -> dict:
    p = dict(shapes=["small", "mid"], rows=[1, 4, 8, 16, 20, 24, 32], reps=20, prompt=96)
    if quick:
        p.update(shapes=["tiny"], rows=[1, 4], reps=3, prompt=8)
    return p


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        shapes=None, rows=None):
    from tridiff.checkpoint import write_random_checkpoint
    from tridiff.model import Model

    device, p, rec = start_run("cpu_layer_stack", plan, quick, device or "cpu", out_dir, budget_s, overrides)
    if device.type != "cpu":
        raise SystemExit("bench_cpu_layer_stack is a CPU benchmark (--device cpu)")
    if shapes:
        p["shapes"] = shapes.split(",") if isinstance(shapes, str) else list(shapes)
    if rows:
        p["rows"] = [int(r) for r in rows.split(",")] if isinstance(rows, str) else list(rows)
    saved = os.environ.get(layer_stack.ENV)
    try:
        for shape_name in p["shapes"]:
            cfg = config_for(shape_name)
            with tempfile.TemporaryDirectory() as d:
                write_random_checkpoint(d, cfg, seed=0, dtype=torch.float32, with_tokenizer=False)
                model = Model.from_pretrained(d, device="cpu", dtype=torch.float32)
            per_layer = cfg.hidden_size * (2 * cfg.q_size + 2 * cfg.kv_size + 3 * cfg.intermediate_size)
            g = torch.Generator().manual_seed(0)
            cache = model.new_cache(1, p["prompt"] + max(p["rows"]) + 1)
            model(torch.randint(0, cfg.vocab_size, (1, p["prompt"]), generator=g), cache, kv="commit")
            for n in p["rows"]:
                if rec.out_of_time():
                    rec.skip("forward", "*", dict(shape=shape_name, rows=n), "time budget spent")
                    continue
                tokens = torch.randint(0, cfg.vocab_size, (1, n), generator=g)
                times = {path: [] for path in PATHS}
                logits = {}
                for path, env in PATHS.items():   # warm-up (projection path measurement, allocator)
                    os.environ[layer_stack.ENV] = env
                    for _ in range(2):
                        logits[path] = model(tokens, cache, kv="write")
                for _ in range(p["reps"]):
                    for path, env in PATHS.items():
                        os.environ[layer_stack.ENV] = env
                        t0 = time.perf_counter()
                        model(tokens, cache, kv="write")
                        times[path].append(1e3 * (time.perf_counter() - t0))
                diff = (logits["stack"] - logits["layers"]).abs().max().item()
                shape = dict(shape=shape_name, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, rows=n)
                for path, ts in times.items():
                    s = sorted(ts)
                    timing = Timing(statistics.median(s), s[len(s) // 5], s[(4 * len(s)) // 5], len(s),
                                    "perf_counter (one forward)")
                    rec.add("forward", path, shape, torch.float32, timing, role="baseline" if path == "layers"
                            else "tridiff", group=f"{shape_name}-{n}", rows=n, row_weights=n * per_layer,
                            max_abs_diff=diff)
    finally:
        if saved is None:
            os.environ.pop(layer_stack.ENV, None)
        else:
            os.environ[layer_stack.ENV] = saved
    recs = rec.finish(print_table=False)
    print(table(recs))
    return recs


def table(recs) -> str:
    lines = [f"{'shape':<6} {'rows':>5} {'rows x W/layer':>15} {'layers ms':>10} {'stack ms':>9} {'stack vs layers':>16}"]
    by = {}
    for r in recs:
        by.setdefault((r["shape"]["shape"], r["extra"]["rows"]), {})[r["backend"]] = r
    for (shape, n), pair in by.items():
        s, lay = pair.get("stack"), pair.get("layers")
        if s is None or lay is None:
            continue
        lines.append(f"{shape:<6} {n:>5} {s['extra']['row_weights'] / 1e6:>14.1f}M {lay['median_ms']:>10.3f} "
                     f"{s['median_ms']:>9.3f} {lay['median_ms'] / s['median_ms']:>15.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv, shapes="comma list of shapes (small, mid)",
                      rows="comma list of token rows per forward")


if __name__ == "__main__":
    raise SystemExit(main())
