"""bench.bench_model_quality runs end to end at a tiny size and writes one row whose
lossless flags hold (greedy self-speculation on the bundled model equals AR greedy,
adapter on and off), with the sampled and pruned-quadratic figures."""
import json

from bench import bench_model_quality


def test_model_quality_bench_smoke(tmp_path, capsys):
    assert bench_model_quality.main(["--prompts", "2", "--prefixes", "4", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "model_quality.jsonl").read_text().splitlines()
    assert len(rows) == 1
    row = json.loads(rows[0])
    assert row["lossless"] == {"linear-spec": True, "quadratic-spec": True, "linear-spec no adapter": True}
    sampled = f"linear-spec T{bench_model_quality.SAMPLED_T}"
    assert set(row["completions"]) == {"ar", "linear-spec", "quadratic-spec", "diffusion", "linear-spec no adapter",
                                       "diffusion no adapter", sampled, sampled + " no adapter"}
    assert 0 <= row["completions"][sampled]["gate_passing"] <= 2 and row["completions"][sampled]["mean_accepted"] > 0
    assert row["adapter"] is not None   # the bundled model ships its drafter LoRA
    real = row["real_prefixes"]
    assert real["linear_L16_accepted"] >= 1.0 and real["linear_L16_accepted_no_adapter"] >= 1.0
    assert real["quadratic_L16_tokens_per_forward_k4"] >= 1.0 and row["prefixes"] == 4
    assert row["completions"]["ar"]["tokens_per_forward"] == 1.0
    assert "readability gate" in capsys.readouterr().out


def test_gate_stats_counts_distinct_and_repeats():
    assert bench_model_quality.gate_stats([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]) == (4 / 12, 3)
    assert bench_model_quality.gate_stats(list(range(10))) == (1.0, 1)
