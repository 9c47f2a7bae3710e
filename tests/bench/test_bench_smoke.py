"""Smoke tests of bench/: each benchmark's CPU path runs in-process on tiny shapes and
writes rows with every required key and self-consistent values; the byte/FLOP formulas
agree with the reference mask; the timing and oracle helpers do what they say.
No speed is asserted anywhere (speed claims live in bench/ results only).
"""
import json
import math
import time
from pathlib import Path

import pytest
import torch

from bench import common
from bench.attention_shapes import CPU_DIMS, attention_bytes, make_case, new_visible_pairs, visible_pairs

TINY = {
    "attention": dict(Bs=[1, 2], Ps=[8], prefill=[16], rep_ms=1),
    "kv_cache": dict(append=[(2, 4, 8)], compact=[(2, 2, 3)], rollback_P=[8, 64], rep_ms=1),
    "accept": dict(Bs=[2], V=256, quad_L=2, rep_ms=1),
    "e2e": dict(Ps=[8], L=4, quad_L=2, gen_tokens=8, prompt_len=4, oracle_iters=3, rep_ms=1),
    "cpu_backends": dict(V=512, n=4, quad_L=2, Bs=[2], logit_dtypes=[torch.float32], kv_dtypes=[torch.bfloat16],
                         Hkv=2, D=64, P=16, compact_P=8, layers=2, page=4, sample_T1_block_Bs=[2], rounds=2,
                         rep_ms=1, warmup_ms=0),
}


def _module(name):
    import importlib

    return importlib.import_module(f"bench.bench_{name}")


def _check_rows(path: Path):
    lines = path.read_text().splitlines()
    assert lines, f"{path.name} is empty"
    rows = [json.loads(line) for line in lines]
    for r in rows:
        missing = [k for k in common.REQUIRED_KEYS if k not in r]
        assert not missing, f"{r['op']}/{r.get('backend')}: missing {missing}"
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0
        assert r["device"].startswith("cpu") and r["torch"] == torch.__version__
        assert r["git_rev"] and r["timestamp"]
        if r["baseline_ms"] is not None:
            assert r["baseline"] and r["ratio"] == pytest.approx(r["baseline_ms"] / r["median_ms"], rel=1e-9)
        else:
            assert r["ratio"] is None
        if r["bytes"]:
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] * 1e-3) / 1e9, rel=1e-9)
            assert r["peak_fraction"] > 0
        if r["flops"]:
            assert r["tflops"] == pytest.approx(r["flops"] / (r["median_ms"] * 1e-3) / 1e12, rel=1e-9)
    return rows


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch")])
@pytest.mark.parametrize("name", ["attention", "kv_cache", "accept", "e2e"])
def test_bench_quick_cpu_rows(name, backend, tmp_path):
    _module(name).run(quick=True, out_dir=tmp_path, device="cpu", backends=backend, overrides=TINY[name],
                      print_table=False)
    rows = _check_rows(tmp_path / f"{name}.jsonl")
    roles = {r["role"] for r in rows}
    assert roles == {"tridiff", "baseline"}, roles
    # every tridiff row was compared with a baseline measured in the same run
    assert all(r["baseline_ms"] is not None for r in rows if r["role"] == "tridiff")
    if name == "e2e":
        ops = {r["op"] for r in rows}
        assert {"generate:ar", "generate:linear-spec", "ORACLE:linear-spec", "step:ar_step"} <= ops
        oracle = next(r for r in rows if r["op"] == "ORACLE:linear-spec")["extra"]
        assert oracle["oracle"] is True and 1 <= oracle["achieved_mean"] <= TINY["e2e"]["L"]
        # the token after each drawn run is surely wrong: the verifier can accept no more
        assert oracle["achieved_mean"] <= oracle["drawn_mean"]
        t = json.loads((tmp_path / "e2e_targets.jsonl").read_text().splitlines()[-1])
        assert t["targets"] and all("n/a" in row[3] or row[3] == "info" for row in t["targets"])


def _cpp_reason():
    from tridiff import _ext

    return _ext.reason("cpp")


CPP = [pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(_cpp_reason() is not None, reason=str(_cpp_reason())))]


@pytest.mark.parametrize("backend", CPP)
def test_bench_cpu_backends_rows(backend, tmp_path):
    """Every op the C++ build serves (attention aside) gets a torch row and a cpp row on the
    same shape and dtype, the cpp row compared with the torch one, and says what "auto" picks."""
    from bench import bench_cpu_backends as bench

    bench.run(quick=True, out_dir=tmp_path, device="cpu", backends=f"torch,{backend}",
              overrides=TINY["cpu_backends"], print_table=False)
    rows = _check_rows(tmp_path / "cpu_backends.jsonl")
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group"], {})[r["backend"]] = r
    assert {r["op"] for r in rows} == set(bench.OPS)
    for group, pair in by_group.items():
        assert set(pair) == {"torch", backend}, group
        torch_row, cpp_row = pair["torch"], pair[backend]
        assert torch_row["role"] == "baseline" and cpp_row["role"] == "tridiff"
        assert cpp_row["baseline"] == "torch" and cpp_row["baseline_ms"] == torch_row["median_ms"]
        assert cpp_row["shape"] == torch_row["shape"] and cpp_row["dtype"] == torch_row["dtype"]
        assert cpp_row["extra"]["auto"] in ("torch", backend) and len(cpp_row["extra"]["rounds"]) >= 1
    table = bench.summary(rows).splitlines()
    assert len(table) == 1 + len(by_group) and all(line.split()[-1] in ("torch", backend) for line in table[1:])
    picks = {op: {r["extra"]["auto"] for r in rows if r["op"] == op} for op in ("sample", "accept_quadratic")}
    assert picks == {"sample": {backend}, "accept_quadratic": {"torch"}}  # the CPU orders tridiff._dispatch states


@pytest.mark.parametrize("backend", CPP)
def test_bench_cpu_backends_refuses_disagreeing_backends(backend, tmp_path, monkeypatch):
    """A backend whose result differs from torch's stops the run instead of being timed."""
    import importlib

    from bench import bench_cpu_backends as bench

    mod = importlib.import_module(f"tridiff.{backend}")
    monkeypatch.setattr(mod, "kv_write_", lambda *args: None)  # writes nothing
    with pytest.raises(AssertionError, match="kv_write_: cpp and torch disagree"):
        bench.run(quick=True, out_dir=tmp_path, device="cpu", backends=f"torch,{backend}",
                  overrides=TINY["cpu_backends"], print_table=False)


@pytest.mark.parametrize("label", ["CAUSAL", "BIDIR_BLOCK", "QUADRATIC2", "QUADRATIC3", "MIXED"])
@pytest.mark.parametrize("P", [0, 5])
def test_visible_pairs_match_reference_mask(label, P):
    from tridiff.reference.attention import visibility

    B = 5
    case = make_case(label, B, CPU_DIMS.new)
    t = lambda x, dt: torch.tensor([int(v) for v in x], dtype=dt)  # noqa: E731
    mask = visibility(torch.full((B,), P, dtype=torch.int32), t(case.modes, torch.int8),
                      t(case.mode_args, torch.int32), t(case.q_lens, torch.int32), case.Tq, P)
    assert visible_pairs(case, P) == int(mask.sum())
    for b in range(B):
        new = int(mask[b, :, P:].sum())
        assert new_visible_pairs(case.modes[b], case.mode_args[b], case.q_lens[b]) == new


def test_attention_bytes_kv_term_is_linear_in_cache():
    from bench.attention_shapes import GPU_DIMS

    case = make_case("CAUSAL", 3, GPU_DIMS.new)
    d = GPU_DIMS
    grow = attention_bytes(case, 3, 4096, d, 2) - attention_bytes(case, 3, 0, d, 2)
    assert grow == 2 * 3 * 4096 * d.Hkv * d.D * 2  # K and V of every cached position, read once


def test_time_fn_measures_at_least_the_work():
    t = common.time_fn(lambda: time.sleep(0.002), torch.device("cpu"), rep_ms=10, min_reps=3)
    assert t.method == "perf_counter" and t.reps >= 3
    assert 2.0 <= t.median_ms and t.p20_ms <= t.median_ms <= t.p80_ms


def test_recorder_compares_with_best_baseline(tmp_path):
    peaks = common.Peaks(copy_gbps=10.0, matmul_tflops=1.0, matmul_dtype="float32", copy_bytes=1, matmul_n=1)
    rec = common.Recorder("unit", torch.device("cpu"), tmp_path, peaks=peaks)
    mk = lambda ms: common.Timing(ms, ms, ms, 1, "perf_counter")  # noqa: E731
    rec.add("op", "mine", {"B": 1}, torch.float32, mk(2.0), bytes=1e7)
    rec.add("op", "slow_base", {"B": 1}, torch.float32, mk(8.0), role="baseline")
    rec.add("op", "fast_base", {"B": 1}, torch.float32, mk(4.0), role="baseline")
    rec.add("op", "other_shape", {"B": 2}, torch.float32, mk(1.0))
    recs = {r["backend"]: r for r in rec.finish(print_table=False)}
    assert recs["mine"]["baseline"] == "fast_base" and recs["mine"]["ratio"] == pytest.approx(2.0)
    assert recs["mine"]["gbps"] == pytest.approx(5.0) and recs["mine"]["peak_fraction"] == pytest.approx(0.5)
    assert recs["other_shape"]["baseline"] is None
    assert len((tmp_path / "unit.jsonl").read_text().splitlines()) == 4


def test_oracle_lengths_have_the_requested_mean():
    from bench.e2e_steps import draw_accept_lengths

    draws = draw_accept_lengths(40000, 6.82, 32, seed=3)
    assert min(draws) >= 1 and max(draws) <= 32
    assert sum(draws) / len(draws) == pytest.approx(6.82, abs=0.1)


@pytest.mark.parametrize("label", ["CAUSAL", "BIDIR_BLOCK", "QUADRATIC2", "QUADRATIC3", "MIXED"])
@pytest.mark.parametrize("which", ["math", "flash"])
def test_sdpa_baseline_computes_tridiff_attention(label, which):
    """The baseline must compute the same function, or the comparison means nothing."""
    from bench import attention_baselines as bl
    from bench.bench_attention import make_inputs
    from tridiff.reference.attention import attention as ref

    if which not in bl.sdpa_backends():
        pytest.skip(f"this torch has no SDPA backend {which}")
    B, P = 3, 5
    case = make_case(label, B, CPU_DIMS.new)
    x = make_inputs(case, B, P, CPU_DIMS, torch.float64, torch.device("cpu"), seed=1)
    scale = CPU_DIMS.D ** -0.5
    try:
        out = bl.build_sdpa(which, case, P, x["q"], x["kbuf"], x["vbuf"], scale)().transpose(1, 2)
    except bl.Unsupported as exc:
        pytest.skip(str(exc))
    want = ref(x["q"], x["k"], x["v"], x["kbuf"], x["vbuf"], x["cache_lens"], x["modes"], x["mode_args"],
               x["q_lens"], None, scale, False)
    for b in range(B):  # rows past q_len are padding (tridiff writes zeros there)
        n = case.q_lens[b]
        torch.testing.assert_close(out[b, :n], want[b, :n], rtol=1e-9, atol=1e-9)
