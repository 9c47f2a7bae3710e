"""Attention benchmark: verify/draft shapes for every tridiff backend vs the baselines.

    python -m bench.bench_attention [--quick] [--out DIR] [--device cuda|cpu]

Shapes (GPU): 32 new tokens per row, Hq 32, Hkv 8, D 128, bf16, B 1..64, cache P
4k..32k; modes CAUSAL (AR verify), BIDIR_BLOCK (diffusion draft), QUADRATIC(16/32)
(one-forward self-speculation, L*(L+1) tokens per row) and a MIXED batch. Plus causal
prefill (B 1, 4k..16k tokens) in TFLOP/s. Baselines in the same run when importable:
torch SDPA per SDPA backend, FlexAttention, flash_attn_with_kvcache, FlashInfer.
Bytes/FLOPs: bench/attention_shapes.py. CPU (or --quick on CPU): tiny dims, fp32.
"""
from __future__ import annotations

import sys
import time

import torch

from bench import attention_baselines as bl
from bench.attention_shapes import CPU_DIMS, GPU_DIMS, Case, Dims, attention_bytes, attention_flops, make_case
from bench.common import (Recorder, Rotator, backends_per_op, bench_main, checks_off_on_cuda, shape_str, start_run,
                          sync, time_fn, time_graph)

GRAPH_BELOW_MS = 0.1  # event-timed calls faster than this are launch-bound: also time a CUDA graph


def plan(device: torch.device, quick: bool) -> dict:
    if device.type == "cpu":
        return dict(dims=CPU_DIMS, dtype=torch.float32, Bs=[1, 2], Ps=[64], prefill=[128],
                    cases=["CAUSAL", "BIDIR_BLOCK", "QUADRATIC2", "QUADRATIC3", "MIXED"], rep_ms=20, flex=False)
    full = dict(dims=GPU_DIMS, dtype=torch.bfloat16, Bs=[1, 2, 4, 8, 16, 32, 64], Ps=[4096, 8192, 16384, 32768],
                prefill=[4096, 8192, 16384],
                cases=["CAUSAL", "BIDIR_BLOCK", "QUADRATIC16", "QUADRATIC32", "MIXED"], rep_ms=100, flex=True)
    if quick:
        full.update(Bs=[1, 64], Ps=[4096, 32768], prefill=[4096, 16384], rep_ms=30)
    return full


def make_inputs(case: Case, B: int, P: int, dims: Dims, dtype, device, seed: int):
    """One input set: q, new k/v, and a KV buffer [B, P+Tq, Hkv, D] whose slots P.. hold k/v."""
    g = torch.Generator(device=device).manual_seed(seed)
    Tq = case.Tq
    r = lambda *s: torch.randn(*s, device=device, dtype=torch.float32, generator=g).to(dtype)  # noqa: E731
    q = r(B, Tq, dims.Hq, dims.D)
    kbuf = r(B, P + Tq, dims.Hkv, dims.D)
    vbuf = r(B, P + Tq, dims.Hkv, dims.D)
    k, v = kbuf[:, P:].clone(), vbuf[:, P:].clone()
    t = lambda x, dt: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    meta = dict(cache_lens=torch.full((B,), P, dtype=torch.int32, device=device),
                modes=t([int(m) for m in case.modes], torch.int8), mode_args=t(case.mode_args, torch.int32),
                q_lens=t(case.q_lens, torch.int32))
    return dict(q=q, k=k, v=v, kbuf=kbuf, vbuf=vbuf, **meta)


def tridiff_call(backend: str, x: dict, scale: float, write_kv: bool = False):
    import tridiff.ops as ops

    def call():
        return ops.attention(x["q"], x["k"], x["v"], x["kbuf"], x["vbuf"], x["cache_lens"], x["modes"],
                             mode_args=x["mode_args"], q_lens=x["q_lens"], softmax_scale=scale,
                             write_kv=write_kv, backend=backend)
    return call


def reference_too_big(B: int, Tq: int, Tk: int, Hq: int, limit: float = 4e9) -> bool:
    """The torch reference materialises fp32 scores [B, Hq, Tq, Tk] (several copies)."""
    return B * Hq * Tq * Tk * 4 * 3 > limit


def _call(c):
    return c()


def _time(rec: Recorder, fn, device, rep_ms):
    t = time_fn(fn, device, rep_ms=rep_ms)
    tg = None
    if device.type == "cuda" and t.median_ms < GRAPH_BELOW_MS:
        try:
            tg = time_graph(fn, device, rep_ms=rep_ms)
        except Exception as exc:  # noqa: BLE001 - some baselines cannot be captured
            sync(device)
            rec.skip("graph", getattr(fn, "label", ""), {}, f"graph capture: {type(exc).__name__}: {exc}"[:200])
    return t, tg


def _measure(rec, p, device, op, name, shape, dtype, role, nbytes, flops, make_calls) -> bool:
    """Build the per-input-set calls, time them (rotating), add the rows. Any failure
    (unsupported inputs, out of memory, a backend error) becomes a skip with its reason."""
    try:
        calls = make_calls()
        fn = Rotator(_call, [(c,) for c in calls])
        fn.label = name
        t, tg = _time(rec, fn, device, p["rep_ms"])
    except Exception as exc:  # noqa: BLE001 - record why, keep benchmarking the rest
        reason = str(exc) if isinstance(exc, bl.Unsupported) else f"{type(exc).__name__}: {str(exc)[:160]}"
        rec.skip(op, name, shape, reason)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False
    extra = {"compile_s": round(calls[0].compile_s, 2)} if hasattr(calls[0], "compile_s") else {}
    _add(rec, op, name, shape, dtype, t, tg, role, nbytes, flops, **extra)
    return True


def _add(rec, op, name, shape, dtype, t, tg, role, nbytes, flops, **extra):
    # attention+write_kv shares the attention group: compared with baselines that do not
    # write (they assume the KV is already in place), a conservative comparison.
    group = "attention|" + shape_str(shape)
    rec.add(op, name, shape, dtype, t, role=role, bytes=nbytes, flops=flops, group=group, **extra)
    if tg is not None:
        rec.add(op, name + "[graph]", shape, dtype, tg, role=role, bytes=nbytes, flops=flops, group=group, **extra)


def bench_case(rec: Recorder, p: dict, label: str, B: int, P: int, backends: list, device, flex_budget: list):
    dims, dtype = p["dims"], p["dtype"]
    case = make_case(label, B, dims.new)
    elt = torch.tensor([], dtype=dtype).element_size()
    nbytes = attention_bytes(case, B, P, dims, elt)
    flops = attention_flops(case, P, dims)
    sets = [make_inputs(case, B, P, dims, dtype, device, seed=i)
            for i in range(Rotator.sets_needed(nbytes, device))]
    scale = dims.D ** -0.5
    shape = dict(B=B, P=P, Tq=case.Tq, Hq=dims.Hq, Hkv=dims.Hkv, D=dims.D, mode=label)
    op = "attention"

    for name in backends:
        if name == "torch" and device.type == "cuda" and reference_too_big(B, case.Tq, P + case.Tq, dims.Hq):
            rec.skip(op, name, shape, "reference backend would materialise > 4 GB of fp32 scores")
            continue
        if not _measure(rec, p, device, op, name, shape, dtype, "tridiff", nbytes, flops,
                        lambda: [tridiff_call(name, x, scale) for x in sets]):
            continue
        if label == "CAUSAL":  # verify forward with the fused cache write (same k/v: idempotent)
            _measure(rec, p, device, "attention+write_kv", name, shape, dtype, "tridiff",
                     attention_bytes(case, B, P, dims, elt, write_kv=True), flops,
                     lambda: [tridiff_call(name, x, scale, write_kv=True) for x in sets])

    builders = [(f"sdpa_{k}", lambda x, k=k: bl.build_sdpa(k, case, P, x["q"], x["kbuf"], x["vbuf"], scale))
                for k in bl.sdpa_backends()]
    builders += [("flash_attn", lambda x: bl.build_flash_attn(case, P, x["q"], x["kbuf"], x["vbuf"], scale)),
                 ("flashinfer", lambda x: bl.build_flashinfer(case, P, x["q"], x["kbuf"], x["vbuf"], scale))]
    if p["flex"]:
        builders.append(("flex_attention", lambda x: bl.build_flex(case, P, x["q"], x["kbuf"], x["vbuf"], scale)))
    for name, build in builders:
        if name == "flex_attention" and flex_budget[0] <= 0:
            rec.skip(op, name, shape, "FlexAttention compile budget spent")
            continue
        t0 = time.perf_counter()
        _measure(rec, p, device, op, name, shape, dtype, "baseline", nbytes, flops,
                 lambda build=build: [build(x) for x in sets])
        if name == "flex_attention":
            flex_budget[0] -= time.perf_counter() - t0
    del sets


def bench_prefill(rec: Recorder, p: dict, T: int, backends: list, device):
    """Causal prefill, B=1, P=0: compute-bound; report TFLOP/s against the measured peak."""
    dims, dtype = p["dims"], p["dtype"]
    case = Case("PREFILL", [0], [0], [T], T)
    elt = torch.tensor([], dtype=dtype).element_size()
    x = make_inputs(case, 1, 0, dims, dtype, device, seed=0)
    nbytes, flops = attention_bytes(case, 1, 0, dims, elt), attention_flops(case, 0, dims)
    shape = dict(B=1, P=0, Tq=T, Hq=dims.Hq, Hkv=dims.Hkv, D=dims.D, mode="CAUSAL")
    scale = dims.D ** -0.5
    for name in backends:
        if name == "torch" and device.type == "cuda" and reference_too_big(1, T, T, dims.Hq):
            rec.skip("prefill", name, shape, "reference backend would materialise > 4 GB of fp32 scores")
            continue
        try:
            t = time_fn(tridiff_call(name, x, scale), device, rep_ms=p["rep_ms"])
        except Exception as exc:  # noqa: BLE001
            rec.skip("prefill", name, shape, f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        rec.add("prefill", name, shape, dtype, t, bytes=nbytes, flops=flops)
    for k in bl.sdpa_backends():
        try:
            fn = bl.build_sdpa(k, case, 0, x["q"], x["kbuf"], x["vbuf"], scale)
        except bl.Unsupported as exc:
            rec.skip("prefill", f"sdpa_{k}", shape, str(exc))
            continue
        rec.add("prefill", f"sdpa_{k}", shape, dtype, time_fn(fn, device, rep_ms=p["rep_ms"]), role="baseline",
                bytes=nbytes, flops=flops)


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True) -> list:
    device, p, rec = start_run("attention", plan, quick, device, out_dir, budget_s, overrides)
    ok = backends_per_op(rec, ("attention",), device, backends)["attention"]
    flex_budget = [45.0 if quick else 600.0]  # seconds of FlexAttention compiles (one per shape)
    with checks_off_on_cuda(device):
        for P in p["Ps"]:
            for B in p["Bs"]:
                for label in p["cases"]:
                    if rec.out_of_time():
                        rec.skip("attention", "*", dict(B=B, P=P, mode=label), "time budget spent")
                        continue
                    bench_case(rec, p, label, B, P, ok, device, flex_budget)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        for T in p["prefill"]:
            if not rec.out_of_time():
                bench_prefill(rec, p, T, ok, device)
    return rec.finish(print_table=print_table)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
