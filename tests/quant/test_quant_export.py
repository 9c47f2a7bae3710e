"""`tridiff quantize`: the GPTQ file format it writes (config, tensor names and dtypes,
the LoRA copied unchanged), its round trip through tridiff's loader, and its refusals."""
import filecmp
import json
import os

import pytest
import torch
from safetensors import safe_open

from tridiff import checkpoint as ckpt
from tridiff.checkpoint import write_random_checkpoint
from tridiff.cli import main
from tridiff.model import Model
from tridiff.quant import gptq


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    write_random_checkpoint(d, "tiny", seed=2, with_adapter=True, dtype=torch.bfloat16)
    return d


def test_cli_writes_a_gptq_checkpoint(full_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--bits", "4", "--group", "64", "--asym", str(full_dir), str(out)]) == 0
    assert f"wrote int4-g64 (asymmetric) GPTQ checkpoint to {out}" in capsys.readouterr().out
    with open(out / "quantize_config.json") as fh:
        qc = json.load(fh)
    with open(out / "config.json") as fh:
        cfg = json.load(fh)
    assert qc == cfg["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == \
        dict(quant_method="gptq", bits=4, group_size=64, desc_act=False, sym=False, checkpoint_format="gptq")
    with safe_open(str(out / ckpt.SINGLE_FILE), framework="pt") as fh:
        names = set(fh.keys())
        p = "encoder.layers.0.mlp.down_proj"
        assert fh.get_tensor(f"{p}.qweight").dtype == torch.int32 and fh.get_tensor(f"{p}.qweight").shape == (16, 64)
        assert fh.get_tensor(f"{p}.qzeros").shape == (2, 8) and fh.get_tensor(f"{p}.scales").dtype == torch.float16
        assert fh.get_tensor(f"{p}.g_idx").tolist() == [k // 64 for k in range(128)]
        assert fh.get_tensor("diffusion_head.weight").dtype == torch.bfloat16   # not quantized, as stored
    assert not any(n.endswith("proj.weight") for n in names)
    assert filecmp.cmp(full_dir / ckpt.ADAPTER_DIR / ckpt.ADAPTER_WEIGHTS, out / ckpt.ADAPTER_DIR / ckpt.ADAPTER_WEIGHTS,
                       shallow=False)
    assert os.path.exists(out / "tokenizer.json")


def test_round_trip_holds_the_round_to_nearest_codes(full_dir, tmp_path):
    """Every projection of the loaded model holds exactly quantize_rtn of the original."""
    out = tmp_path / "q"
    assert main(["quantize", "--bits", "4", "--group", "64", str(full_dir), str(out)]) == 0
    model = Model.from_pretrained(out)
    with safe_open(str(full_dir / ckpt.SINGLE_FILE), framework="pt") as fh:
        for i, layer in enumerate(model.encoder.layers):
            for name in ("self_attn.k_proj", "mlp.up_proj", "mlp.down_proj"):
                want = gptq.quantize_rtn(fh.get_tensor(f"encoder.layers.{i}.{name}.weight"), 4, 64, sym=True)
                group, proj = name.split(".")
                got = getattr(getattr(layer, group), proj)
                assert torch.equal(got.qweight, want.qweight) and torch.equal(got.scales, want.scales)
                assert torch.equal(got.qzeros, want.qzeros)
                groups = got.in_features // 64   # symmetric: true zero point 8 everywhere
                assert got.zeros_v2().tolist() == [[0x88888888 - 2**32] * (got.out_features // 8)] * groups


def test_cli_refusals_are_one_line(full_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--group", "64", str(full_dir), str(out)]) == 0
    capsys.readouterr()
    assert main(["quantize", "--group", "64", str(full_dir), str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"tridiff: error: OUT: {out} already holds a checkpoint (config.json)"
    assert main(["quantize", "--group", "64", str(out), str(tmp_path / "again")]) == 2
    assert capsys.readouterr().err.strip() == f"tridiff: error: IN: {out} is already quantized (int4-g64)"
    assert main(["quantize", "--group", "128", str(full_dir), str(tmp_path / "g128")]) == 2   # K = 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "self_attn.q_proj: a [128, 64] weight does not pack into 4-bit groups of 128" in err[0]
    assert not os.path.exists(tmp_path / "g128" / "config.json")
