"""bench.bench_llamacpp at its quick settings (a tiny network, 16 tokens): one row per
contender with the weight bytes it streams, tridiff's formats built from the same
weights, and, where llama-cpp-python imports, llama.cpp's rows on the exported GGUF
files with its F16 greedy tokens equal to tridiff's fp32 ones."""
import importlib.util
import json

import pytest
import torch

pytest.importorskip("gguf", reason="needs the gguf package (requirements-cpu.txt / tridiff[bench])")

from bench import bench_llamacpp as bl  # noqa: E402
from bench.bench_quant import weight_bytes  # noqa: E402

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def test_random_weight_is_reproducible_and_fp16_exact():
    cfg = bl.config_for("tiny")
    a, b = bl.random_weight(cfg, 1), bl.random_weight(cfg, 1)
    for name in ("encoder.layers.1.mlp.up_proj.weight", "diffusion_head.weight", "encoder.norm.weight"):
        t = a(name)
        assert t.dtype == torch.float32 and torch.equal(t, b(name))
        assert torch.equal(t, t.to(torch.float16).to(torch.float32))
    assert not torch.equal(a("encoder.layers.0.mlp.up_proj.weight"), a("encoder.layers.1.mlp.up_proj.weight"))
    assert not torch.equal(a("diffusion_head.weight"), bl.random_weight(cfg, 2)("diffusion_head.weight"))


def test_gguf_bytes_count_what_a_decode_step_streams():
    cfg = bl.config_for("tiny")   # per layer 128 * (2 * 128 + 2 * 64) + 3 * 128 * 256 weights, 2 layers
    proj, head = 2 * (128 * 384 + 3 * 128 * 256), 512 * 128
    assert bl.gguf_bytes(cfg, "llama-f16") == 2 * (proj + head) == weight_bytes(cfg, "bf16")
    assert bl.gguf_bytes(cfg, "llama-q4_0") == (proj + head) // 32 * 18
    assert bl.gguf_bytes(cfg, "llama-q4_0-f16head") == proj // 32 * 18 + 2 * head


def test_quick_run(tmp_path, capsys):
    assert bl.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [json.loads(r) for r in (tmp_path / "llamacpp.jsonl").read_text().splitlines()]
    by = {r["backend"]: r for r in rows}
    assert {"tridiff-fp32", "tridiff-bf16", "tridiff-int4-g128"} <= set(by)
    assert by["tridiff-fp32"]["bytes"] == 2 * by["tridiff-bf16"]["bytes"]
    assert all(r["median_ms"] > 0 and len(r["extra"]["tokens"]) == 16 and r["shape"]["threads"] >= 1 for r in rows)
    assert by["tridiff-fp32"]["extra"]["agree_with_fp32"] == 16
    assert by["tridiff-bf16"]["group"] == by.get("llama.cpp-f16", by["tridiff-bf16"])["group"] == "tiny-16bit"
    if HAVE_LLAMA:
        assert {"llama.cpp-f16", "llama.cpp-q4_0", "llama.cpp-q4_0-f16head"} <= set(by)
        f16 = by["llama.cpp-f16"]
        assert f16["role"] == "baseline" and f16["extra"]["llama_cpp"]["build_flags"] == bl.LLAMA_BUILD_FLAGS
        assert "CPU" in f16["extra"]["llama_cpp"]["system_info"] and f16["extra"]["llama_cpp"]["gguf"]
        assert f16["extra"]["agree_with_fp32"] == 16
        assert by["tridiff-int4-g128"]["baseline"] in ("llama.cpp-q4_0", "llama.cpp-q4_0-f16head")
        assert by["tridiff-bf16"]["baseline"] == "llama.cpp-f16" and by["tridiff-fp32"]["baseline"] is None
    else:
        skipped = [json.loads(r) for r in (tmp_path / "skipped.jsonl").read_text().splitlines()]
        assert any(s["backend"] == "llama.cpp-q4_0" and "llama-cpp-python does not import" in s["reason"]
                   for s in skipped)
    assert "vs llama.cpp" in capsys.readouterr().out
