"""Checkpoint writing/loading round trips and every refusal naming its tensor or field."""
import json
import os

import pytest
import torch

from tridiff import checkpoint as ckpt
from tridiff._checks import TridiffInputError
from tridiff.config import ConfigError, ModelConfig, preset
from tridiff.model import Model

pytest.importorskip("safetensors", reason="needs safetensors")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ckpt.write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=3, with_adapter=True)


def load_file(path):
    from safetensors.torch import load_file

    return load_file(path)


def save_file(tensors, path):
    from safetensors.torch import save_file

    save_file(tensors, path)


def copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_round_trip_single_file_bit_exact(tiny_dir):
    files = sorted(os.listdir(tiny_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "linear_spec_lora"} <= set(files)
    config = ModelConfig.from_json(tiny_dir)
    assert config == preset("tiny")
    want = ckpt.random_tensors(config, seed=3, dtype=torch.bfloat16)
    model = Model.from_pretrained(tiny_dir, dtype=torch.bfloat16, adapter=False)
    params = dict(model.named_parameters())
    assert set(params) == set(want)
    for name, t in want.items():
        assert torch.equal(params[name], t), name
    assert not model.has_adapter
    # default dtype on CPU is fp32, holding the same (bf16-rounded) values
    fp32 = Model.from_pretrained(tiny_dir, adapter=False)
    assert fp32.dtype == torch.float32
    assert all(torch.equal(p, want[n].float()) for n, p in fp32.named_parameters())


def test_round_trip_sharded_equals_single(tmp_path, tiny_dir):
    out = ckpt.write_random_checkpoint(tmp_path, "tiny", seed=3, shards=3, with_tokenizer=False)
    with open(os.path.join(out, ckpt.INDEX_FILE)) as fh:
        index = json.load(fh)
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    seen = {}
    for s in shards:
        for name in load_file(os.path.join(out, s)):
            assert name not in seen
            seen[name] = s
    assert seen == index["weight_map"]
    assert set(seen) == set(ckpt.expected_shapes(preset("tiny")))
    a = Model.from_pretrained(out, dtype=torch.bfloat16)
    b = Model.from_pretrained(tiny_dir, dtype=torch.bfloat16, adapter=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_adapter_loads_peft_layout(tiny_dir):
    model = Model.from_pretrained(tiny_dir, dtype=torch.bfloat16)  # adapter="auto"
    assert model.has_adapter and model.config.lora.rank == 8 and model.config.lora.scale == 4.0
    stored = load_file(os.path.join(tiny_dir, "linear_spec_lora", "adapter_model.safetensors"))
    for i, layer in enumerate(model.linear_spec_lora):
        key = f"base_model.model.encoder.layers.{i}.self_attn.o_proj.lora_"
        assert torch.equal(layer.lora_A.weight, stored[key + "A.weight"])
        assert torch.equal(layer.lora_B.weight, stored[key + "B.weight"])
    with open(os.path.join(tiny_dir, "linear_spec_lora", "adapter_config.json")) as fh:
        meta = json.load(fh)
    assert meta["target_modules"] == ["o_proj"] and meta["r"] == 8 and meta["lora_alpha"] == 32


def test_adapter_with_peft_adapter_names_in_keys(tmp_path, tiny_dir):
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    path = os.path.join(out, "linear_spec_lora", "adapter_model.safetensors")
    stored = load_file(path)
    save_file({k.replace(".weight", ".default.weight"): v for k, v in stored.items()}, path)
    model = Model.from_pretrained(out, dtype=torch.bfloat16)
    key = "base_model.model.encoder.layers.1.self_attn.o_proj.lora_B.weight"
    assert torch.equal(model.linear_spec_lora[1].lora_B.weight, stored[key])


def test_adapter_true_requires_the_directory(tmp_path):
    out = ckpt.write_random_checkpoint(tmp_path, "tiny", with_tokenizer=False)
    with pytest.raises(ckpt.CheckpointError, match="linear_spec_lora"):
        Model.from_pretrained(out, adapter=True)


def _drop(name):
    def edit(tensors, config):
        del tensors[name]
    return edit


def _add(name):
    def edit(tensors, config):
        tensors[name] = torch.zeros(4)
    return edit


def _reshape(name, shape):
    def edit(tensors, config):
        tensors[name] = torch.zeros(shape, dtype=tensors[name].dtype)
    return edit


@pytest.mark.parametrize("edit, name", [
    pytest.param(_drop("encoder.layers.1.mlp.up_proj.weight"), "encoder.layers.1.mlp.up_proj.weight", id="missing"),
    pytest.param(_drop("diffusion_head.weight"), "diffusion_head.weight", id="missing-head"),
    pytest.param(_add("encoder.layers.2.mlp.up_proj.weight"), "encoder.layers.2.mlp.up_proj.weight",
                 id="unexpected-layer"),
    pytest.param(_add("lm_head.weight"), "lm_head.weight", id="unexpected-lm_head"),
    pytest.param(_reshape("encoder.layers.0.self_attn.k_proj.weight", (32, 64)),
                 "encoder.layers.0.self_attn.k_proj.weight", id="shape-k_proj"),
    pytest.param(_reshape("encoder.norm.weight", (65,)), "encoder.norm.weight", id="shape-norm"),
])
def test_bad_tensor_raises_naming_it(tmp_path, tiny_dir, edit, name):
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    edit(tensors, None)
    save_file(tensors, path)
    with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
        Model.from_pretrained(out)


def test_bad_adapter_tensor_raises_naming_it(tmp_path, tiny_dir):
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    path = os.path.join(out, "linear_spec_lora", "adapter_model.safetensors")
    tensors = load_file(path)
    key = "base_model.model.encoder.layers.1.self_attn.o_proj.lora_B.weight"
    del tensors[key]
    save_file(tensors, path)
    with pytest.raises(ckpt.CheckpointError, match=key.replace(".", r"\.")):
        Model.from_pretrained(out)
    tensors[key] = torch.zeros(64, 9, dtype=torch.bfloat16)  # rank 9 != r 8
    save_file(tensors, path)
    with pytest.raises(ckpt.CheckpointError, match=key.replace(".", r"\.") + ".*shape"):
        Model.from_pretrained(out)
    assert Model.from_pretrained(out, adapter=False).has_adapter is False  # adapter skipped entirely


def test_missing_shard_raises_naming_it(tmp_path):
    out = ckpt.write_random_checkpoint(tmp_path, "tiny", shards=2, with_tokenizer=False)
    os.remove(os.path.join(out, "model-00002-of-00002.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="model-00002-of-00002"):
        Model.from_pretrained(out)


def _set(key, value):
    def edit(cfg):
        cfg[key] = value
    return edit


def _rope(key, value):
    def edit(cfg):
        cfg["rope_parameters"][key] = value
    return edit


def _del(key, rope=False):
    def edit(cfg):
        del (cfg["rope_parameters"] if rope else cfg)[key]
    return edit


@pytest.mark.parametrize("edit, field", [
    (_del("head_dim"), "head_dim"),
    (_del("hidden_size"), "hidden_size"),
    (_del("mask_token_id"), "mask_token_id"),
    (_del("rope_parameters"), "rope_parameters"),
    (_del("rope_theta", rope=True), "rope_theta"),
    (_del("llama_4_scaling_beta", rope=True), "llama_4_scaling_beta"),
    (_del("mscale_all_dim", rope=True), "mscale_all_dim"),
    (_rope("rope_type", "linear"), "rope_type"),
    (_rope("partial_rotary_factor", 0.5), "partial_rotary_factor"),
    (_set("model_type", "llama"), "model_type"),
    (_set("num_key_value_heads", 3), "num_key_value_heads"),
    (_set("tie_word_embeddings", True), "tie_word_embeddings"),
    (_set("hidden_act", "gelu"), "hidden_act"),
    (_set("eos_token_id", 100000), "eos_token_id"),
    (_set("head_dim", 33), "head_dim"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_config_raises_naming_the_field(tmp_path, tiny_dir, edit, field):
    cfg = preset("tiny").to_json_dict()
    edit(cfg)
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_json(cfg)
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    with pytest.raises(ConfigError, match=field):
        Model.from_pretrained(out)
    assert issubclass(ConfigError, TridiffInputError) and issubclass(ckpt.CheckpointError, ValueError)


@pytest.mark.parametrize("field, value", [("target_modules", ["q_proj", "o_proj"]), ("r", 0),
                                          ("use_dora", True), ("peft_type", "IA3")])
def test_bad_adapter_config_raises_naming_the_field(tmp_path, tiny_dir, field, value):
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    path = os.path.join(out, "linear_spec_lora", "adapter_config.json")
    with open(path) as fh:
        meta = json.load(fh)
    meta[field] = value
    with open(path, "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(ConfigError, match=field):
        Model.from_pretrained(out)


def test_config_json_round_trip_and_legacy_rope_scaling():
    for name in ("tiny", "3b", "8b", "14b"):
        c = preset(name)
        assert ModelConfig.from_json(c.to_json_dict()) == c
    c14 = preset("14b")
    assert (c14.hidden_size, c14.num_attention_heads, c14.head_dim, c14.rope_theta) == (5120, 32, 128, 1e9)
    legacy = preset("tiny").to_json_dict()
    rope = legacy.pop("rope_parameters")
    legacy["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    legacy["rope_scaling"] = rope
    assert ModelConfig.from_json(legacy) == preset("tiny")
    explicit_null = dict(preset("tiny").to_json_dict(), head_dim=None)
    assert ModelConfig.from_json(explicit_null).head_dim == 64 // 4  # transformers' rule for null


def test_cli_main_writes_a_loadable_checkpoint(tmp_path, capsys):
    assert ckpt.main(["--preset", "tiny", "--out", str(tmp_path), "--seed", "5", "--shards", "2", "--adapter"]) == 0
    model = Model.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.has_adapter
    want = ckpt.random_tensors(model.config, seed=5, dtype=torch.bfloat16)
    assert torch.equal(model.encoder.layers[1].mlp.down_proj.weight, want["encoder.layers.1.mlp.down_proj.weight"])
    assert os.path.exists(os.path.join(tmp_path, "tokenizer.json"))


def test_random_logits_are_not_degenerate(tiny_dir):
    from tridiff import Mode

    model = Model.from_pretrained(tiny_dir)
    toks = torch.arange(40)[None] * 7 % model.config.vocab_size
    logits = model(toks, model.new_cache(1, 40), modes=Mode.CAUSAL)
    assert logits.std(dim=-1).min() > 1.0  # spread over the vocabulary
    assert len(set(logits.argmax(-1)[0].tolist())) > 5  # different argmax at different rows
    probs = logits.softmax(-1).max(-1).values
    assert 0.02 < float(probs.min()) and float(probs.max()) < 0.999  # confidences vary, not saturated


def test_block_size_is_read_written_and_aliased(tmp_path):
    """The released config class names the block length block_size; block_length is
    an alias; both present and different is refused; tridiff writes block_size."""
    cfg = preset("tiny", block_length=16).to_json_dict()
    assert cfg["block_size"] == 16 and "block_length" not in cfg
    assert ModelConfig.from_json(cfg).block_length == 16
    alias = dict(cfg)
    alias["block_length"] = alias.pop("block_size")
    assert ModelConfig.from_json(alias).block_length == 16
    assert ModelConfig.from_json({k: v for k, v in cfg.items() if k != "block_size"}).block_length == 32
    with pytest.raises(ConfigError, match="block_size"):
        ModelConfig.from_json(dict(cfg, block_length=8))
    out = ckpt.write_random_checkpoint(tmp_path, preset("tiny", block_length=8), with_tokenizer=False)
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["block_size"] == 8
    assert Model.from_pretrained(out).config.block_length == 8


@pytest.mark.parametrize("content", [b"\xff" * 64, b"", b"{not json"], ids=["header-too-large", "empty", "garbage"])
def test_corrupt_safetensors_file_is_one_clear_error(tmp_path, tiny_dir, content):
    out = copy_checkpoint(tiny_dir, tmp_path / "ck")
    path = os.path.join(out, ckpt.SINGLE_FILE)
    with open(path, "wb") as fh:
        fh.write(content)
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors: not a readable safetensors file") as err:
        Model.from_pretrained(out)
    assert len(str(err.value).splitlines()) == 1
