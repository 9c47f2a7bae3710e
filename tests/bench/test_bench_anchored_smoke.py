"""bench.bench_anchored runs end to end at a tiny size on the bundled model: one row per
contender, every output equal to AR greedy, the row counts the layouts imply."""
import json

from bench import bench_anchored


def test_anchored_bench_smoke(tmp_path, capsys):
    argv = ["--prompts", "1", "--new-tokens", "16", "--blocks", "8", "--ks", "2", "--out", str(tmp_path)]
    assert bench_anchored.main(argv) == 0
    rows = [json.loads(r) for r in (tmp_path / "anchored.jsonl").read_text().splitlines()]
    by = {r["contender"]: r for r in rows}
    assert set(by) == {"ar", "linear", "quadratic", "anchored-2", "fixed-0137"}
    assert all(r["equals_ar"] and r["L"] == 8 for r in rows)
    # rows per iteration forward: L(L+1) full, L(k+1) pruned, L for a linear forward, 1 for AR
    assert by["quadratic"]["rows_per_step"] == 72 and by["anchored-2"]["rows_per_step"] == 24
    assert by["fixed-0137"]["rows_per_step"] == 40 and by["ar"]["rows_per_step"] == 1
    assert by["linear"]["rows_per_step"] == 8
    assert by["ar"]["tokens_per_forward"] == 1.0 and by["quadratic"]["vs_quadratic_tok_s"] == 1.0
    assert "== AR" in capsys.readouterr().out
