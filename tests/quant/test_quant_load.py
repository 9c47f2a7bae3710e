"""GPTQ checkpoints: `tridiff quantize` writes them, Model.from_pretrained reads them
(symmetric and asymmetric, groups of 128 and 64, int8 per channel, v1 and v2 zero points,
quantize_config.json alone), and refuses what it cannot take with an error naming the
field or tensor before any packed code is read."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tridiff import checkpoint as ckpt
from tridiff.checkpoint import CheckpointError, write_random_checkpoint
from tridiff.config import preset
from tridiff.model import Model
from tridiff.quant import gptq
from tridiff.quant.config import QuantConfigError
from tridiff.quant.export import quantize_checkpoint
from tridiff.quant.packed import PackedLinear

WIDE = dict(hidden_size=128, intermediate_size=256)   # every K a multiple of 128


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    write_random_checkpoint(d, preset("tiny", **WIDE), seed=3, with_adapter=True, dtype=torch.bfloat16)
    return d


def _quantized(full_dir, tmp_path, **kw):
    out = tmp_path / "q"
    quantize_checkpoint(full_dir, out, **kw)
    return out


def _dequantized_model(qdir, dtype=torch.float64):
    """A full-precision Model whose projections are the dequantized packed weights."""
    found = ckpt.open_checkpoint(qdir)
    qc = found.quant
    tensors = {}
    for path in sorted({f for f, _ in found.weights.values()}):
        tensors.update(load_file(path))
    state = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            prefix = name[:-len(".qweight")]
            K = t.shape[0] * 32 // qc.bits
            w = gptq.dequantize(t, tensors[f"{prefix}.scales"], gptq.v2_words(tensors[f"{prefix}.qzeros"], qc.bits,
                                qc.zero_format), qc.bits, qc.group_of(K), dtype=torch.float64)
            state[f"{prefix}.weight"] = w.t()
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            state[name] = t
    model = Model(found.config, dtype=dtype)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)
        lora = load_file(os.path.join(qdir, ckpt.ADAPTER_DIR, ckpt.ADAPTER_WEIGHTS))
        for key, p in model._adapter_params().items():
            p.copy_(lora[key])
    return model


def _logits(model, adapter=False):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 7), generator=g)
    return model(tokens, model.new_cache(2, 16), kv="commit", adapter=adapter)


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 128, False), (4, 64, True), (4, 64, False),
                                            (8, -1, True)])
def test_quantized_checkpoint_loads_and_computes_the_dequantized_network(full_dir, tmp_path, bits, group, sym):
    qdir = _quantized(full_dir, tmp_path, bits=bits, group_size=group, sym=sym)
    model = Model.from_pretrained(qdir, dtype=torch.float64)
    name = f"int{bits}-" + ("channel" if group == -1 else f"g{group}")
    assert model.weight_format == name and model.dtype == torch.float64
    proj = model.encoder.layers[1].mlp.down_proj
    assert isinstance(proj, PackedLinear) and proj.bits == bits
    assert model.diffusion_head.weight.dtype == torch.bfloat16   # stored bf16, kept narrow
    assert model.linear_spec_lora[0].lora_A.weight.dtype == torch.float64   # the LoRA in full precision
    ref = _dequantized_model(qdir)
    for adapter in (False, True):
        torch.testing.assert_close(_logits(model, adapter), _logits(ref, adapter), rtol=1e-10, atol=1e-10)


def test_state_dict_is_the_checkpoint(full_dir, tmp_path):
    qdir = _quantized(full_dir, tmp_path, bits=4, group_size=64, sym=False)
    model = Model.from_pretrained(qdir)
    stored = load_file(os.path.join(qdir, ckpt.SINGLE_FILE))
    sd = model.state_dict()
    assert set(sd) - set(stored) == {k for k in sd if "lora" in k}
    for name, t in stored.items():
        if t.dtype in (torch.int32, torch.float16):
            assert torch.equal(sd[name].contiguous(), t), name


def test_v2_zero_points_and_autogptq_config_file(full_dir, tmp_path):
    """The same weights with the true zero points stored (checkpoint_format gptq_v2), and
    with only an AutoGPTQ-style quantize_config.json (no quant_method): same logits."""
    qdir = _quantized(full_dir, tmp_path, bits=4, group_size=64, sym=False)
    want = _logits(Model.from_pretrained(qdir, dtype=torch.float64))
    v2 = tmp_path / "v2"
    shutil.copytree(qdir, v2)
    t = load_file(os.path.join(v2, ckpt.SINGLE_FILE))
    for name in [n for n in t if n.endswith(".qzeros")]:
        t[name] = gptq.v2_words(t[name], 4, "gptq")
    save_file(t, os.path.join(v2, ckpt.SINGLE_FILE))
    _edit_config(v2, checkpoint_format="gptq_v2")
    assert torch.equal(_logits(Model.from_pretrained(v2, dtype=torch.float64)), want)
    legacy = tmp_path / "legacy"
    shutil.copytree(qdir, legacy)
    with open(legacy / "config.json") as fh:
        raw = json.load(fh)
    del raw["quantization_config"]
    with open(legacy / "config.json", "w") as fh:
        json.dump(raw, fh)
    with open(legacy / "quantize_config.json") as fh:
        q = json.load(fh)
    for key in ("quant_method", "checkpoint_format", "pack_dtype"):
        del q[key]
    with open(legacy / "quantize_config.json", "w") as fh:
        json.dump(q, fh)
    assert torch.equal(_logits(Model.from_pretrained(legacy, dtype=torch.float64)), want)


def _edit_config(d, **fields):
    with open(d / "config.json") as fh:
        raw = json.load(fh)
    raw["quantization_config"].update(fields)
    with open(d / "config.json", "w") as fh:
        json.dump(raw, fh)


@pytest.fixture
def no_reads(monkeypatch):
    """Fails a test that reads any tensor but g_idx (the checks must come first)."""
    real = ckpt.load_into

    def guarded(found, targets):
        bad = [n for n in targets if not n.endswith(".g_idx")]
        assert not bad, f"read {bad[0]} before refusing"
        return real(found, targets)
    monkeypatch.setattr(ckpt, "load_into", guarded)


@pytest.mark.parametrize("fields,match", [
    (dict(desc_act=True), r"quantization_config\.desc_act: act-order"),
    (dict(quant_method="awq"), r"quantization_config\.quant_method: 'awq' is not supported"),
    (dict(bits=3), r"quantization_config\.bits: expected one of \(4, 8\), got 3"),
    (dict(checkpoint_format="marlin"), r"quantization_config\.checkpoint_format: expected"),
    (dict(group_size=96), r"encoder\.layers\.0\.self_attn\.q_proj: a \[128, 128\] weight does not pack"),
    (dict(lm_head="yes"), r"quantization_config\.lm_head: expected true or false"),
], ids=["desc_act", "awq", "bits", "format", "group", "lm_head"])
def test_config_refusals_name_the_field(full_dir, tmp_path, no_reads, fields, match):
    qdir = _quantized(full_dir, tmp_path, bits=4, group_size=64)
    _edit_config(qdir, **fields)
    with pytest.raises(QuantConfigError, match=match):
        Model.from_pretrained(qdir)


def _edit_tensor(d, name, value):
    t = load_file(os.path.join(d, ckpt.SINGLE_FILE))
    t[name] = value
    save_file(t, os.path.join(d, ckpt.SINGLE_FILE))


def test_tensor_refusals_name_the_tensor(full_dir, tmp_path, no_reads):
    qdir = _quantized(full_dir, tmp_path, bits=4, group_size=64)
    name = "encoder.layers.1.self_attn.o_proj"
    good = load_file(os.path.join(qdir, ckpt.SINGLE_FILE))
    _edit_tensor(qdir, f"{name}.qweight", good[f"{name}.qweight"][:-1].clone())
    with pytest.raises(CheckpointError, match=rf"{name}\.qweight: expected shape \[16, 128\], got \[15, 128\]"):
        Model.from_pretrained(qdir)
    _edit_tensor(qdir, f"{name}.qweight", good[f"{name}.qweight"].long())
    with pytest.raises(CheckpointError, match=rf"{name}\.qweight: expected int32"):
        Model.from_pretrained(qdir)
    _edit_tensor(qdir, f"{name}.qweight", good[f"{name}.qweight"])
    g_idx = good[f"{name}.g_idx"].clone()
    g_idx[[3, 70]] = g_idx[[70, 3]]   # an act-order permutation
    _edit_tensor(qdir, f"{name}.g_idx", g_idx)
    with pytest.raises(CheckpointError, match=rf"{name}\.g_idx: expected k // group_size .* got 1 at k=3"):
        Model.from_pretrained(qdir)


def test_cli_refuses_an_unknown_method_in_one_line(full_dir, tmp_path):
    qdir = _quantized(full_dir, tmp_path, bits=4, group_size=64)
    _edit_config(qdir, quant_method="awq")
    r = subprocess.run([sys.executable, "-m", "tridiff", "generate", "--model", str(qdir), "--prompt-ids", "1,2",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "tridiff: error: config.json quantization_config.quant_method: 'awq' is not supported "
        "(tridiff loads GPTQ int4/int8 weight-only checkpoints)"]


def test_gptqmodel_and_autogptq_spellings():
    from tridiff.quant.config import parse_quant_config

    # GPTQModel's normalised keys ("method", "format") and extra fields it writes
    q = parse_quant_config({"method": "gptq", "format": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                            "sym": True, "pack_dtype": "int32", "lm_head": False, "true_sequential": True,
                            "meta": {"quantizer": ["gptqmodel:7.7.0"]}})
    assert (q.bits, q.group_size, q.sym, q.zero_format, q.name) == (4, 128, True, "gptq", "int4-g128")
    # AutoGPTQ 0.7: quant_method + checkpoint_format; per channel
    q = parse_quant_config({"quant_method": "gptq", "checkpoint_format": "gptq_v2", "bits": 8, "group_size": -1,
                            "desc_act": False, "sym": False})
    assert (q.bits, q.group_of(640), q.sym, q.zero_format, q.name) == (8, 640, False, "gptq_v2", "int8-channel")
    with pytest.raises(QuantConfigError, match=r"^quantization_config\.quant_method: 'awq' is not supported"):
        parse_quant_config({"quant_method": "awq", "bits": 4, "group_size": 128})
    with pytest.raises(QuantConfigError, match=r"^quantization_config\.quant_method: None is not supported"):
        parse_quant_config({"group_size": 128})
