"""bench.bench_quant runs end to end at its quick settings: a speed row per format and
forward kind with the weight bytes each format streams, and the accuracy record of the
bundled model (held-out loss, greedy agreement, linear self-speculation still lossless)."""
import json
import math

from bench import bench_quant


def test_weight_bytes_per_format():
    c = bench_quant.config_for("tiny")   # hidden 128, intermediate 256, q 128, kv 64, 2 layers, V 512
    proj = 2 * (128 * (2 * 128 + 2 * 64) + 3 * 128 * 256)
    head = 512 * 128
    assert bench_quant.weight_bytes(c, "fp32") == 4 * (proj + head)
    assert bench_quant.weight_bytes(c, "bf16") == 2 * (proj + head)
    assert bench_quant.weight_bytes(c, "int4-g128") == math.ceil(proj * (0.5 + 2.5 / 128)) + 2 * head


def test_bench_quant_speed_smoke(tmp_path, capsys):
    assert bench_quant.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [json.loads(r) for r in (tmp_path / "quant.jsonl").read_text().splitlines()]
    assert {(r["backend"], r["extra"]["kind"]) for r in rows} == {(f, k) for f in bench_quant.FORMATS
                                                                  for k in ("ar", "verify")}
    by = {r["backend"]: r["bytes"] for r in rows}
    assert by["fp32"] == 2 * by["bf16"] > by["bf16"] > by["int4-g128"]
    assert all(r["median_ms"] > 0 and r["floor_ms"] > 0 for r in rows)
    # the tiny shape's forwards run the one-call C++ stack in every format where it is built
    assert all(r["extra"]["path"] == ("op-by-op" if r["extra"]["cpu_gemm"].startswith("none") else "stack")
               for r in rows)
    assert "of floor" in capsys.readouterr().out


def test_bench_quant_quality_smoke(tmp_path, capsys):
    assert bench_quant.main(["--quality", "--quick", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "quant_quality.jsonl").read_text().splitlines()[-1])
    v = rec["variants"]
    assert [v[n]["weight_format"] for n in ("full", "bf16", "int4-g128")] == ["full", "bf16", "int4-g128"]
    assert all(math.isfinite(x["heldout_ar_loss"]) and x["linear_equals_ar"] for x in v.values())
    assert v["int4-g128"]["greedy_vs_full"]["of"] == rec["prompts"]
    assert "greedy same" in capsys.readouterr().out
