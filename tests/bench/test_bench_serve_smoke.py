"""bench.bench_serve end to end at a tiny size (a few seconds of load, 4 clients): every
request answered and equal to its solo generate, pages free, a row with the latency and
throughput fields and the overhead ratio. Checks the bench's wiring, not its numbers."""
import json

import pytest

for _mod in ("starlette", "uvicorn", "httpx"):
    pytest.importorskip(_mod, reason=f"bench_serve needs {_mod} (pip install tridiff[serve] httpx)")

from bench import bench_serve  # noqa: E402


def test_bench_serve_smoke(tmp_path, capsys):
    argv = ["--seconds", "1", "--clients", "4", "--max-rows", "2", "--max-queue", "2", "--max-tokens", "8,12",
            "--prompts", "3", "--overhead-requests", "4", "--overhead-clients", "2", "--overhead-reps", "1",
            "--out", str(tmp_path)]
    assert bench_serve.main(argv) == 0
    (row,) = [json.loads(r) for r in (tmp_path / "serve.jsonl").read_text().splitlines()]
    assert row["requests"] == row["answered"] >= 4 and row["failed"] == 0
    assert row["all_equal_solo"] and row["mismatches"] == 0 and 1 <= row["distinct_checked"] <= 6
    assert row["pages_free"] and row["free_pages"] == row["total_pages"] > 0
    assert 0 < row["p50_latency_s"] <= row["p99_latency_s"]
    assert row["p50_ttft_s"] is not None and row["p50_ttft_s"] <= row["p99_latency_s"]  # half are streamed
    assert row["completion_tokens"] >= 8 * row["requests"] and row["tokens_per_s"] > 0
    over = row["overhead"]
    assert over["concurrency"] == 2 and over["http_tok_s"] > 0 and over["direct_tok_s"] > 0
    assert over["ratio"] == pytest.approx(over["http_tok_s"] / over["direct_tok_s"])
    assert "answered" in capsys.readouterr().out


def test_refuses_more_clients_than_the_server_admits():
    with pytest.raises(SystemExit):
        bench_serve.parse(["--clients", "10", "--max-rows", "2", "--max-queue", "2"])
