"""CPU attention per shape: the torch reference, the C++ kernel ("cpp") and SDPA with the
mode mask ("sdpa", tridiff/sdpa.py) at the shapes the decoding runs of bench_cpu_e2e
meet. These rows decide the CPU "auto" order of attention in tridiff._dispatch.

    python -m bench.bench_cpu_attention [--quick] [--out DIR] [--threads N] [--backends torch,cpp,sdpa]

Shapes (B = 1, fp32, cache capacity 192 as in a 32 + 128 token decoding run):
  heads   8/2 x 32 (the "small" model, 4 layers) and 16/4 x 64 ("mid", 8 layers)
  rows    1 CAUSAL (AR step), 16 CAUSAL (linear verify), 16 BIDIR_BLOCK (linear draft,
          diffusion step), 20 QUADRATIC(4), 32 CAUSAL (prefill)
  P       32, 96, 160 committed keys
What is timed is one layer's attention as a forward pays it, through the same path
tridiff.ops.attention_plan takes: the backend function itself, and for a backend with
`attention_prepare` (sdpa) its per-layer function plus the once-per-forward preparation
divided by the model's layers. CAUSAL rows write their K/V (write_kv=True, the same slots
every call), BIDIR_BLOCK rows do not, as in decoding. Before timing, every backend's
output is compared with the reference (max abs error <= 1e-5). Backends run in
interleaved rounds (the first to go rotates) and keep their lowest round median.

Rows: torch is the baseline; ratio = torch ms / backend ms (> 1: faster than the
reference); extra.auto says which backend the measurement picks for the shape.
"""
from __future__ import annotations

import os

import torch

from bench.common import Timing, bench_main, start_run, time_fn

NAMES = ("torch", "cpp", "sdpa")
HEADS = {"small": (8, 2, 32, 4), "mid": (16, 4, 64, 8)}   # Hq, Hkv, D, layers
KINDS = (("CAUSAL", 0, 1), ("CAUSAL", 0, 16), ("BIDIR_BLOCK", 0, 16), ("QUADRATIC", 4, 20), ("CAUSAL", 0, 32))


def plan(device: torch.device, quick: bool) -> dict:
    p = dict(models=list(HEADS), kinds=list(KINDS), Ps=[32, 96, 160], capacity=192, rounds=3, rep_ms=60,
             warmup_ms=10)
    if quick:
        p.update(models=["small"], kinds=[KINDS[0], KINDS[3]], Ps=[32], rounds=1, rep_ms=10)
    return p


def _case(model, kind, P, capacity, seed=0):
    from tridiff import Mode
    from tridiff.ops.attention import normalize_attention_args

    Hq, Hkv, D, layers = HEADS[model]
    mode, arg, Tq = kind
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v = r(1, Tq, Hq, D), r(1, Tq, Hkv, D), r(1, Tq, Hkv, D)
    kc, vc = r(1, capacity, Hkv, D), r(1, capacity, Hkv, D)
    write = mode != "BIDIR_BLOCK"
    args = normalize_attention_args(q, k, v, kc, vc, torch.tensor([P], dtype=torch.int32), Mode[mode],
                                    arg or None, None, None, None, write)
    shape = dict(model=model, heads=f"{Hq}/{Hkv}x{D}", rows=Tq, mode=mode + (f"({arg})" if arg else ""), P=P)
    return args, layers, shape


def _layer_call(name, args, layers):
    """(fn, calls): fn runs `calls` layers' attention as a planned forward runs them on
    backend `name` (one call, or `layers` calls sharing one preparation)."""
    from tridiff import _dispatch

    impl = _dispatch.implementation("attention", name)
    prepare = getattr(_dispatch.backend_module(name), "attention_prepare", None)
    if prepare is None:
        return (lambda: impl(*args)), 1
    tensors = args[:5]

    def call():   # one preparation, shared by the model's layers
        run = prepare(*args)
        for _ in range(layers):
            run(*tensors)

    return call, layers


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True, threads=None):
    from tridiff import _dispatch

    device, p, rec = start_run("cpu_attention", plan, quick, device or "cpu", out_dir, budget_s, overrides)
    if device.type != "cpu":
        raise SystemExit("bench_cpu_attention is a CPU benchmark (--device cpu)")
    if threads:
        torch.set_num_threads(int(threads))
    names = [n for n in (backends.split(",") if backends else NAMES)]
    for n in list(names):
        reason = _dispatch.backend_unavailable(n)
        if reason:
            rec.skip("attention", n, {}, reason)
            names.remove(n)
    k = 0
    for model in p["models"]:
        for kind in p["kinds"]:
            for P in p["Ps"]:
                if rec.out_of_time():
                    rec.skip("attention", "*", dict(model=model, P=P), "time budget spent")
                    continue
                args, layers, shape = _case(model, kind, P, p["capacity"])
                want = _dispatch.implementation("attention", "torch")(*args)
                calls = {}
                for n in names:
                    reason = _dispatch.why_not(n, "attention", args, {})
                    if reason:
                        rec.skip("attention", n, shape, reason)
                        continue
                    got = _dispatch.implementation("attention", n)(*args)
                    err = float((got - want).abs().max())
                    if not err <= 1e-5:
                        raise AssertionError(f"attention {shape}: {n} differs from torch by {err}")
                    calls[n] = _layer_call(n, args, layers)
                medians = {n: [] for n in calls}
                order = list(calls)
                for r in range(p["rounds"]):
                    k += 1
                    for n in order[k % len(order):] + order[:k % len(order)]:
                        fn, per = calls[n]
                        t = time_fn(fn, device, rep_ms=p["rep_ms"], warmup_ms=p["warmup_ms"], flush=False)
                        medians[n].append(t.median_ms / per)
                best = {n: min(m) for n, m in medians.items()}
                auto = min(best, key=best.get)
                load = os.getloadavg()[0]
                for n, ms in best.items():
                    timing = Timing(ms, min(medians[n]), max(medians[n]), len(medians[n]), "perf_counter")
                    rec.add("attention", n, shape, torch.float32, timing,
                            role="baseline" if n == "torch" else "tridiff",
                            group=f"{model} {shape['rows']} {shape['mode']} P={P}", rounds=medians[n],
                            auto=auto, layers=layers, threads=torch.get_num_threads(), loadavg_1min=load,
                            per_layer_with_prepare=n == "sdpa")
    recs = rec.finish(print_table=False)
    if print_table:
        print(summary(recs))
    return recs


def summary(recs) -> str:
    """One line per shape: ms per layer of each backend and the pick."""
    by = {}
    for r in recs:
        by.setdefault(r["group"], {})[r["backend"]] = r
    names = [n for n in NAMES if any(n in g for g in by.values())]
    lines = [f"{'model':<6} {'rows':>4} {'mode':<13} {'P':>4} " + " ".join(f"{n + ' us':>10}" for n in names)
             + "  pick"]
    for group, rows in by.items():
        any_row = next(iter(rows.values()))
        s = any_row["shape"]
        cells = " ".join(f"{1e3 * rows[n]['median_ms']:>10.1f}" if n in rows else f"{'-':>10}" for n in names)
        lines.append(f"{s['model']:<6} {s['rows']:>4} {s['mode']:<13} {s['P']:>4} {cells}  "
                     f"{any_row['extra']['auto']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv, threads="torch threads (default: torch's)")


if __name__ == "__main__":
    raise SystemExit(main())
