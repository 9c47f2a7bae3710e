"""bench.bench_engine runs end to end in its quick mode and writes its rows and cost table."""
import json

from bench import bench_engine


def test_quick_run_writes_rows_and_a_loadable_table(tmp_path):
    assert bench_engine.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "engine_quick.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"forward_cost", "crossover", "vs_generate"}
    assert all(r["tokens_per_s"] > 0 for r in rows if r["kind"] != "forward_cost")
    from tridiff.engine.cost import load_table
    table = load_table(str(tmp_path / "engine_costs_cpu_quick.json"), "cpu")
    assert table[1] == 1.0 and len(table) == 4
