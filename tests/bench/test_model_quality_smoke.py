"""bench.bench_model_quality runs end to end at a tiny size and writes one row whose
lossless flags hold (self-speculation on the bundled model equals AR greedy)."""
import json

from bench import bench_model_quality


def test_model_quality_bench_smoke(tmp_path, capsys):
    assert bench_model_quality.main(["--prompts", "2", "--prefixes", "4", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "model_quality.jsonl").read_text().splitlines()
    assert len(rows) == 1
    row = json.loads(rows[0])
    assert row["lossless"] == {"linear-spec": True, "quadratic-spec": True}
    assert set(row["completions"]) == {"ar", "linear-spec", "quadratic-spec", "diffusion"}
    assert row["real_prefixes"]["linear_L16_accepted"] >= 1.0 and row["prefixes"] == 4
    assert row["completions"]["ar"]["tokens_per_forward"] == 1.0
    assert "readability gate" in capsys.readouterr().out


def test_gate_stats_counts_distinct_and_repeats():
    assert bench_model_quality.gate_stats([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]) == (4 / 12, 3)
    assert bench_model_quality.gate_stats(list(range(10))) == (1.0, 1)
