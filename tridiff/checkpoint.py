"""Checkpoint layout, reading (shape checks before any weight is loaded) and writing.

Layout (Hugging Face, docs/spec.md section 1): config.json; one model.safetensors or shards
model-0000i-of-0000n.safetensors listed in model.safetensors.index.json; tokenizer.json;
optional linear_spec_lora/ (PEFT LoRA on o_proj: adapter_config.json +
adapter_model.safetensors with keys base_model.model.encoder.layers.{i}.self_attn.
o_proj.lora_{A,B}.weight, A [r, Hq*D], B [hidden, r]).

    python -m tridiff.checkpoint --preset tiny --out DIR [--seed S] [--shards N] [--adapter]
writes a random checkpoint (for tests, demos and benchmarks without the real weights).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from typing import Optional, Union

import torch

from tridiff._checks import TridiffInputError
from tridiff.config import ConfigError, LoraConfig, ModelConfig, preset

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_DIR = "linear_spec_lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LAYER_TENSORS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                 "post_attention_layernorm")


class CheckpointError(TridiffInputError):
    """A checkpoint file is missing, or a tensor is missing, unexpected or mis-shaped."""


def expected_shapes(config: ModelConfig) -> dict[str, tuple]:
    """Every tensor name of the base checkpoint and its shape (9 per layer + 3)."""
    h, f, V = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {"encoder.embed_tokens.weight": (V, h)}
    per_layer = {
        "self_attn.q_proj": (config.q_size, h), "self_attn.k_proj": (config.kv_size, h),
        "self_attn.v_proj": (config.kv_size, h), "self_attn.o_proj": (h, config.q_size),
        "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f),
        "input_layernorm": (h,), "post_attention_layernorm": (h,),
    }
    for i in range(config.num_hidden_layers):
        for name in LAYER_TENSORS:
            shapes[f"encoder.layers.{i}.{name}.weight"] = per_layer[name]
    shapes["encoder.norm.weight"] = (h,)
    shapes["diffusion_head.weight"] = (V, h)
    return shapes


def adapter_key(layer: int, which: str) -> str:
    return f"base_model.model.encoder.layers.{layer}.self_attn.o_proj.lora_{which}.weight"


def adapter_shapes(config: ModelConfig, rank: int) -> dict[str, tuple]:
    shapes = {}
    for i in range(config.num_hidden_layers):
        shapes[adapter_key(i, "A")] = (rank, config.q_size)
        shapes[adapter_key(i, "B")] = (config.hidden_size, rank)
    return shapes


# ---- reading ---------------------------------------------------------------------------------

def weight_files(directory) -> list[str]:
    """The safetensors files of a checkpoint directory (index first, else every file)."""
    directory = os.fspath(directory)
    index = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{INDEX_FILE}: expected a non-empty weight_map")
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors weight files")
    paths = [os.path.join(directory, n) for n in files]
    for p in paths:
        if not os.path.exists(p):
            raise CheckpointError(f"{os.path.basename(p)}: listed in {INDEX_FILE} but not found")
    return paths


def scan(paths: list[str]) -> dict[str, tuple[str, tuple]]:
    """name -> (file, shape), reading only the safetensors headers."""
    from safetensors import safe_open

    found: dict[str, tuple[str, tuple]] = {}
    for path in paths:
        try:
            fh = safe_open(path, framework="pt")
        except Exception as exc:  # SafetensorError (not exported by every version) or OSError
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None
        with fh:
            for name in fh.keys():
                if name in found:
                    raise CheckpointError(f"{name}: stored twice ({os.path.basename(found[name][0])} "
                                          f"and {os.path.basename(path)})")
                found[name] = (path, tuple(fh.get_slice(name).get_shape()))
    return found


def check_tensors(found: dict, expected: dict, what: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped tensor."""
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{missing[0]}: missing from the {what}{more}")
    unexpected = sorted(n for n in found if n not in expected)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{unexpected[0]}: unexpected tensor in the {what}{more}")
    for name, shape in expected.items():
        if tuple(found[name][1]) != tuple(shape):
            raise CheckpointError(f"{name}: expected shape {list(shape)}, got {list(found[name][1])} "
                                  f"in {os.path.basename(found[name][0])}")


def load_into(found: dict, targets: dict[str, torch.Tensor]) -> None:
    """Copy each tensor (memory-mapped by safe_open) into its preallocated target,
    converting dtype/device on the way, one tensor at a time."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name in targets:
        by_file.setdefault(found[name][0], []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            with safe_open(path, framework="pt") as fh:
                for name in names:
                    targets[name].copy_(fh.get_tensor(name))


def read_adapter_config(adapter_dir, config: ModelConfig) -> LoraConfig:
    path = os.path.join(os.fspath(adapter_dir), ADAPTER_CONFIG)
    if not os.path.exists(path):
        raise CheckpointError(f"{ADAPTER_CONFIG}: missing from {adapter_dir}")
    with open(path) as fh:
        raw = json.load(fh)

    def bad(field, expected, got):
        raise ConfigError(f"{ADAPTER_CONFIG}.{field}: expected {expected}, got {got!r}")

    if raw.get("peft_type", "LORA") != "LORA":
        bad("peft_type", "'LORA'", raw.get("peft_type"))
    r, alpha = raw.get("r"), raw.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        bad("r", "a positive int", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        bad("lora_alpha", "a number", alpha)
    targets = raw.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if not isinstance(names, list) or not names or any(not re.search(r"o_proj$", str(n)) for n in names):
        bad("target_modules", "o_proj only", targets)
    for field, ok in (("bias", "none"), ("use_dora", False), ("fan_in_fan_out", False)):
        if raw.get(field, ok) not in (ok, None):
            bad(field, repr(ok), raw.get(field))
    for field in ("rank_pattern", "alpha_pattern"):
        if raw.get(field):
            bad(field, "empty (one rank and alpha for every layer)", raw.get(field))
    if raw.get("layers_to_transform") not in (None, [], list(range(config.num_hidden_layers))):
        bad("layers_to_transform", "null (every layer)", raw.get("layers_to_transform"))
    return LoraConfig(rank=r, alpha=float(alpha), use_rslora=bool(raw.get("use_rslora", False)))


def normalise_adapter_key(name: str) -> str:
    """Canonical key for a PEFT LoRA tensor of layer i's o_proj, whatever wrapper prefix
    or adapter name (lora_A.default.weight, as saved raw) it carries; other names are
    returned unchanged (and then reported as unexpected)."""
    m = re.search(r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$", name)
    return adapter_key(int(m.group(1)), m.group(2)) if m else name


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint directory whose tensor names and shapes are checked; no weight read yet."""
    config: ModelConfig                          # lora set when an adapter is loaded
    weights: dict[str, tuple[str, tuple]]        # base tensor -> (file, shape)
    adapter: Optional[dict[str, tuple[str, tuple]]]  # adapter tensor as stored -> (file, shape)
    quant: Optional[object] = None               # tridiff.quant.config.QuantConfig of a GPTQ checkpoint


def open_checkpoint(directory, adapter: Union[str, bool, None, os.PathLike] = "auto") -> Checkpoint:
    """Read config.json and the safetensors headers of `directory` (single or sharded)
    and check every tensor name and shape; CheckpointError names the first missing,
    unexpected or mis-shaped tensor, ConfigError the first bad config field.

    adapter: "auto" takes linear_spec_lora/ if present; True requires it; False or None
    skips it; a path takes the adapter from there.
    """
    directory = os.fspath(directory)
    config = ModelConfig.from_json(directory)
    from tridiff.quant.config import expected_quant_shapes, read_quant_config  # it builds on this module

    quant = read_quant_config(directory)   # None: full precision; unknown methods refused here
    found = scan(weight_files(directory))
    check_tensors(found, expected_shapes(config) if quant is None else expected_quant_shapes(config, quant))
    adapter_dir = _adapter_dir(directory, adapter)
    if adapter_dir is None:
        return Checkpoint(config, found, None, quant)
    lora = read_adapter_config(adapter_dir, config)
    if not os.path.exists(os.path.join(adapter_dir, ADAPTER_WEIGHTS)):
        raise CheckpointError(f"{ADAPTER_WEIGHTS}: missing from {adapter_dir}")
    raw = scan([os.path.join(adapter_dir, ADAPTER_WEIGHTS)])
    by_key = {}
    for name, entry in raw.items():
        key = normalise_adapter_key(name)
        if key in by_key:
            raise CheckpointError(f"{name}: stored twice in the adapter")
        by_key[key] = entry
    check_tensors(by_key, adapter_shapes(config, lora.rank), what="adapter")
    return Checkpoint(dataclasses.replace(config, lora=lora), found, raw, quant)


def _adapter_dir(directory: str, adapter) -> Optional[str]:
    default = os.path.join(directory, ADAPTER_DIR)
    if adapter == "auto":
        return default if os.path.isdir(default) else None
    if adapter is True:
        if not os.path.isdir(default):
            raise CheckpointError(f"{ADAPTER_DIR}: adapter=True but {default} does not exist")
        return default
    if adapter in (False, None):
        return None
    return os.fspath(adapter)


# ---- writing ---------------------------------------------------------------------------------

def random_tensors(config: ModelConfig, *, seed: int = 0, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random weights scaled so activations stay O(1) and logits are spread out
    (std ~4), not degenerate: fan-in scaled projections, norms near 1."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("layernorm.weight") or name == "encoder.norm.weight":
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "encoder.embed_tokens.weight":
            t = torch.randn(shape, generator=gen)
        elif name == "diffusion_head.weight":
            t = torch.randn(shape, generator=gen) * (4.0 / math.sqrt(shape[1]))
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        out[name] = t.to(dtype)
    return out


def random_adapter_tensors(config: ModelConfig, rank: int, *, seed: int = 0, dtype=torch.bfloat16):
    # B is random (PEFT would start it at zero) so that the adapter visibly changes logits.
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, shape in adapter_shapes(config, rank).items():
        out[name] = (torch.randn(shape, generator=gen) / math.sqrt(shape[1]) * 0.25).to(dtype)
    return out


def save_safetensors(tensors: dict, path: str) -> None:
    """Write {name: tensor} as one safetensors file (contiguous copies where needed,
    metadata format "pt", as checkpoints of the released layout carry)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def write_random_checkpoint(directory, config="tiny", *, seed: int = 0, dtype=torch.bfloat16,
                            shards: int = 1, with_tokenizer: bool = True, with_adapter: bool = False,
                            adapter_rank: Optional[int] = None, adapter_alpha: Optional[float] = None):
    """Write a random checkpoint in the released layout; returns the directory.

    config: a ModelConfig or a preset name ("tiny", "3b", "8b", "14b"). The adapter has
    rank 128 / alpha 512 like the release, except the tiny preset (rank 8, alpha 32:
    the same scale 4).
    """
    if isinstance(config, str):
        tiny = config == "tiny"
        config = preset(config)
    else:
        tiny = config.hidden_size <= 256
    if not isinstance(config, ModelConfig):
        raise TridiffInputError(f"config: expected a ModelConfig or a preset name, got {type(config).__name__}")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise TridiffInputError(f"shards: expected a positive int, got {shards!r}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    dataclasses.replace(config, lora=None).write_json(os.path.join(directory, "config.json"))

    tensors = random_tensors(config, seed=seed, dtype=dtype)
    names = list(tensors)
    if shards == 1:
        save_safetensors(tensors, os.path.join(directory, SINGLE_FILE))
    else:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        per_shard = total / shards
        groups: list[list[str]] = [[] for _ in range(shards)]
        done = 0
        for name in names:  # contiguous runs of names, balanced by bytes
            k = min(int(done // per_shard), shards - 1)
            groups[k].append(name)
            done += tensors[name].numel() * tensors[name].element_size()
        weight_map = {}
        for k, group in enumerate(groups):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            save_safetensors({n: tensors[n] for n in group}, os.path.join(directory, fname))
            weight_map.update({n: fname for n in group})
        with open(os.path.join(directory, INDEX_FILE), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    del tensors

    if with_adapter:
        rank = adapter_rank or (8 if tiny else 128)
        alpha = adapter_alpha if adapter_alpha is not None else 4.0 * rank
        write_adapter(directory, config, rank=rank, alpha=alpha,
                      tensors=random_adapter_tensors(config, rank, seed=seed, dtype=dtype))
    if with_tokenizer:
        from tridiff.tokenizer import write_tokenizer

        write_tokenizer(directory, config.vocab_size, bos_id=config.bos_token_id,
                        eos_id=config.eos_token_id, mask_id=config.mask_token_id)
    return directory


def write_adapter(directory, config: ModelConfig, *, rank: int, alpha: float, tensors: dict) -> str:
    adapter_dir = os.path.join(os.fspath(directory), ADAPTER_DIR)
    os.makedirs(adapter_dir, exist_ok=True)
    meta = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["o_proj"],
            "bias": "none", "lora_dropout": 0.0, "use_rslora": False, "fan_in_fan_out": False,
            "task_type": None, "base_model_name_or_path": None, "inference_mode": True}
    with open(os.path.join(adapter_dir, ADAPTER_CONFIG), "w") as fh:
        json.dump(meta, fh, indent=2)
    save_safetensors(tensors, os.path.join(adapter_dir, ADAPTER_WEIGHTS))
    return adapter_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tridiff.checkpoint",
                                     description="Write a random tridiff checkpoint.")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "3b", "8b", "14b"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--adapter", action="store_true", help="also write linear_spec_lora/")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-tokenizer", action="store_true")
    args = parser.parse_args(argv)
    write_random_checkpoint(args.out, args.preset, seed=args.seed, shards=args.shards,
                            dtype=getattr(torch, args.dtype), with_adapter=args.adapter,
                            with_tokenizer=not args.no_tokenizer)
    print(f"wrote {args.preset} checkpoint to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
