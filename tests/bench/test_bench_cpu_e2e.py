"""Smoke tests of the CPU end-to-end benchmark (tridiff vs transformers) and of the CPU
attention-per-shape benchmark, on tiny shapes: rows carry every required key and
self-consistent numbers, the AR parity check stops a run whose tokens differ. No speed
is asserted (speed claims live in bench/ results only)."""
import pytest
import torch

from tests.bench.test_bench_smoke import _check_rows

pytest.importorskip("transformers", reason="the baseline is transformers' Ministral3ForCausalLM")

TINY = dict(shapes=["tiny"], new_tokens=16, prompt_len=6, rounds=1, hf_attn=["sdpa"], adapter_rank=4)


def test_cpu_e2e_rows(tmp_path):
    from bench import bench_cpu_e2e as bench

    recs = bench.run(quick=True, out_dir=tmp_path, overrides=TINY, print_table=False)
    rows = _check_rows(tmp_path / "cpu_e2e.jsonl")
    assert len(rows) == len(recs) == 1 + len(bench.MODES)
    base = [r for r in rows if r["role"] == "baseline"]
    assert [r["backend"] for r in base] == ["transformers[sdpa]"]
    N, prompt = TINY["new_tokens"], TINY["prompt_len"]
    for r in rows:
        x = r["extra"]
        assert x["tok_s"] == pytest.approx(N / (r["median_ms"] / 1e3))
        assert x["floor_fraction"] == pytest.approx(x["floor_ms"] / r["median_ms"])
        if r["role"] == "baseline":
            continue
        assert r["baseline"] == "transformers[sdpa]" and r["ratio"] > 0
        assert x["tokens"] == N
        fwd = {int(k): v for k, v in x["forwards"].items()}
        assert sum(v[0] for v in fwd.values()) == x["n_forwards"] and all(v[1] > 0 for v in fwd.values())
        wb = x["weight_bytes"]
        assert r["flops"] == pytest.approx(2 * wb / 4 * sum(rows * v[0] for rows, v in fwd.items()))
        assert r["bytes"] == x["n_forwards"] * wb + x["adapter_forwards"] * x["adapter_bytes"]
        assert x["floor_ms"] == pytest.approx(1e3 * r["bytes"] / (r["peak_copy_gbps"] * 1e9))
    by_mode = {r["op"].split(":")[1]: {int(k): v[0] for k, v in r["extra"]["forwards"].items()}
               for r in rows if r["role"] == "tridiff"}
    assert by_mode["ar"] == {prompt: 1, 1: N - 1}   # prefill, then one row per forward
    assert set(by_mode["linear-spec"]) == {prompt, 16}
    assert set(by_mode["quadratic-spec"]) == {prompt + 4, 20}
    assert set(by_mode["diffusion"]) == {prompt, 16}
    assert by_mode["linear-spec"][16] % 2 == 0   # draft + verify per iteration
    assert "ms per forward" in bench.table(recs).splitlines()[0]


def test_cpu_e2e_stops_when_ar_tokens_differ(tmp_path, monkeypatch):
    from bench import bench_cpu_e2e as bench

    real = bench.hf_generate
    monkeypatch.setattr(bench, "hf_generate", lambda *a: [t + 1 for t in real(*a)])
    with pytest.raises(AssertionError, match="tokens differ at position 0"):
        bench.run(quick=True, out_dir=tmp_path, overrides=TINY, print_table=False)
    assert not (tmp_path / "cpu_e2e.jsonl").exists()


def test_cpu_attention_rows(tmp_path):
    from bench import bench_cpu_attention as bench
    from tridiff import _dispatch

    overrides = dict(models=["small"], kinds=[("CAUSAL", 0, 1), ("QUADRATIC", 2, 6)], Ps=[8], rounds=2,
                     rep_ms=1, warmup_ms=0)
    bench.run(quick=True, out_dir=tmp_path, overrides=overrides, print_table=False)
    rows = _check_rows(tmp_path / "cpu_attention.jsonl")
    present = [n for n in bench.NAMES if not _dispatch.backend_unavailable(n)]
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["backend"]] = r
    assert len(groups) == 2
    for group in groups.values():
        assert set(group) == set(present)
        assert group["torch"]["role"] == "baseline"
        picks = {r["extra"]["auto"] for r in group.values()}
        fastest = min(group.values(), key=lambda r: r["median_ms"])["backend"]
        assert picks == {fastest}
        assert all(r["ratio"] == pytest.approx(group["torch"]["median_ms"] / r["median_ms"]) for r in group.values())
    lines = bench.summary(rows).splitlines()
    assert len(lines) == 3 and all(line.split()[-1] in present for line in lines[1:])


def test_cpu_attention_refuses_a_backend_that_disagrees(tmp_path, monkeypatch):
    from bench import bench_cpu_attention as bench
    from tridiff import sdpa

    real = sdpa.attention
    monkeypatch.setattr(sdpa, "attention", lambda *a: real(*a) + 1e-3)
    with pytest.raises(AssertionError, match="sdpa differs from torch"):
        bench.run(quick=True, out_dir=tmp_path, backends="torch,sdpa", print_table=False,
                  overrides=dict(models=["small"], kinds=[("CAUSAL", 0, 1)], Ps=[8], rounds=1, rep_ms=1))
    assert not (tmp_path / "cpu_attention.jsonl").exists()
