"""bench.bench_cpu_layer_stack runs end to end at the tiny shape: a row per path and row
count, both paths' logits within fp32 rounding of each other, the table printed."""
import json

import pytest

from bench import bench_cpu_layer_stack
from tridiff import _dispatch


def test_layer_stack_bench_smoke(tmp_path, capsys):
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    assert bench_cpu_layer_stack.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [json.loads(r) for r in (tmp_path / "cpu_layer_stack.jsonl").read_text().splitlines()]
    assert {(r["backend"], r["extra"]["rows"]) for r in rows} == {(p, n) for p in ("stack", "layers") for n in (1, 4)}
    assert all(r["extra"]["max_abs_diff"] < 1e-4 and r["median_ms"] > 0 for r in rows)
    assert "stack vs layers" in capsys.readouterr().out
