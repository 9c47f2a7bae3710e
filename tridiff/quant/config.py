"""The quantization a checkpoint declares, read before any weight: config.json's
"quantization_config", else quantize_config.json (GPTQModel writes both, AutoGPTQ the
second). Only GPTQ int4 / int8 weight-only checkpoints without act-order are taken;
anything else is refused with one line naming the field and the value.

Fields read (GPTQModel's names, older spellings accepted): quant_method ("method"; AutoGPTQ
files without it hold GPTQ), bits (4 or 8), group_size (-1: one group per output channel),
sym, desc_act (must be false: act-order permutes the input features, see below),
checkpoint_format ("format": "gptq" = v1 zero points stored minus one, "gptq_v2" = as
they are), pack_dtype (int32 only), lm_head (true: the head, diffusion_head, is packed
like the projections; false: it stays as stored), dynamic (per-module overrides: refused).

desc_act: GPTQ with act-order stores the input features in the checkpoint's order and a
g_idx that is not k // group_size; tridiff's kernels read groups of consecutive features.
Permuting every projection once at load would also permute its input activations per
call; it is refused instead (re-quantize with desc_act=false).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from tridiff.config import ConfigError, ModelConfig
from tridiff.quant.gptq import BITS, ZERO_FORMATS, pack_factor

QUANT_CONFIG_FILE = "quantize_config.json"
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PLAIN = ("input_layernorm", "post_attention_layernorm")
PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
HEAD = "diffusion_head"   # packed where the config says lm_head: true


class QuantConfigError(ConfigError):
    """The checkpoint's quantization is not one tridiff loads; the message names the field."""


@dataclass(frozen=True)
class QuantConfig:
    bits: int
    group_size: int          # -1: per output channel (one group over all input features)
    sym: bool
    zero_format: str         # "gptq" (v1) or "gptq_v2"
    source: str              # where it was read, for messages
    lm_head: bool = False    # the head (diffusion_head) packed too

    def group_of(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    @property
    def name(self) -> str:
        """The weight format: "int4-g128", "int8-channel", ..."""
        return f"int{self.bits}-" + ("channel" if self.group_size == -1 else f"g{self.group_size}")

    def to_json(self) -> dict:
        """The quantize_config.json / quantization_config content tridiff writes."""
        return {"quant_method": "gptq", "bits": self.bits, "group_size": self.group_size, "desc_act": False,
                "sym": self.sym, "true_sequential": True, "lm_head": self.lm_head, "checkpoint_format": self.zero_format,
                "pack_dtype": "int32"}


def read_quant_config(directory) -> Optional[QuantConfig]:
    """The QuantConfig of a checkpoint directory, or None when it declares none."""
    directory = os.fspath(directory)
    with open(os.path.join(directory, "config.json")) as fh:
        raw = json.load(fh)
    source = "config.json quantization_config"
    q = raw.get("quantization_config") if isinstance(raw, dict) else None
    if q is None and isinstance(raw, dict) and isinstance(raw.get("text_config"), dict):
        q = raw["text_config"].get("quantization_config")
    path = os.path.join(directory, QUANT_CONFIG_FILE)
    if q is None and os.path.exists(path):
        with open(path) as fh:
            q, source = json.load(fh), QUANT_CONFIG_FILE
    if q is None:
        return None
    return parse_quant_config(q, source)


def parse_quant_config(q, source: str = "quantization_config") -> QuantConfig:
    def bad(field, expected, got):
        raise QuantConfigError(f"{source}.{field}: expected {expected}, got {got!r}")

    if not isinstance(q, dict):
        raise QuantConfigError(f"{source}: expected a JSON object, got {type(q).__name__}")
    method = q.get("quant_method", q.get("method", "gptq" if "bits" in q else None))
    if not isinstance(method, str) or method.lower() != "gptq":
        raise QuantConfigError(f"{source}.quant_method: {method!r} is not supported "
                               f"(tridiff loads GPTQ int4/int8 weight-only checkpoints)")
    bits = q.get("bits")
    if isinstance(bits, bool) or bits not in BITS:
        bad("bits", f"one of {BITS}", bits)
    group = q.get("group_size", -1)
    if isinstance(group, bool) or not isinstance(group, int) or not (group == -1 or group >= 1):
        bad("group_size", "a positive int or -1 (per channel)", group)
    if group != -1 and group % pack_factor(bits):
        bad("group_size", f"a multiple of {pack_factor(bits)} for {bits}-bit codes", group)
    if q.get("desc_act", False):
        raise QuantConfigError(f"{source}.desc_act: act-order (desc_act=true) GPTQ checkpoints are not "
                               f"supported; re-quantize with desc_act=false")
    sym = q.get("sym", True)
    if not isinstance(sym, bool):
        bad("sym", "true or false", sym)
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    if fmt not in ZERO_FORMATS:
        bad("checkpoint_format", " or ".join(repr(f) for f in ZERO_FORMATS), fmt)
    if q.get("pack_dtype", "int32") not in ("int32", "torch.int32"):
        bad("pack_dtype", "'int32'", q.get("pack_dtype"))
    lm_head = q.get("lm_head", False)
    if not isinstance(lm_head, bool):
        bad("lm_head", "true or false", lm_head)
    if q.get("dynamic"):
        bad("dynamic", "no per-module overrides", q.get("dynamic"))
    return QuantConfig(bits=bits, group_size=group, sym=sym, zero_format=fmt, source=source, lm_head=lm_head)


def projection_shapes(config: ModelConfig) -> dict:
    """Projection name within a layer -> (out_features N, in_features K)."""
    h, f = config.hidden_size, config.intermediate_size
    return {"self_attn.q_proj": (config.q_size, h), "self_attn.k_proj": (config.kv_size, h),
            "self_attn.v_proj": (config.kv_size, h), "self_attn.o_proj": (h, config.q_size),
            "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}


def packed_shapes(N: int, K: int, qc: QuantConfig, name: str) -> dict:
    """suffix -> shape of one packed projection; QuantConfigError where N, K do not pack."""
    P, g = pack_factor(qc.bits), qc.group_of(K)
    if K % g or K % P or N % P:
        raise QuantConfigError(f"{name}: a [{N}, {K}] weight does not pack into {qc.bits}-bit groups of {g} "
                               f"(needs K divisible by the group size and by {P}, N by {P})")
    G = K // g
    return {"qweight": (K // P, N), "qzeros": (G, N // P), "scales": (G, N), "g_idx": (K,)}


def expected_quant_shapes(config: ModelConfig, qc: QuantConfig) -> dict:
    """Every tensor name of a GPTQ checkpoint of this model and its shape."""
    h, V = config.hidden_size, config.vocab_size
    shapes = {"encoder.embed_tokens.weight": (V, h)}
    for i in range(config.num_hidden_layers):
        for name in PLAIN:
            shapes[f"encoder.layers.{i}.{name}.weight"] = (h,)
        for name, (N, K) in projection_shapes(config).items():
            prefix = f"encoder.layers.{i}.{name}"
            for suffix, shape in packed_shapes(N, K, qc, prefix).items():
                shapes[f"{prefix}.{suffix}"] = shape
    shapes["encoder.norm.weight"] = (h,)
    if qc.lm_head:
        for suffix, shape in packed_shapes(V, h, qc, HEAD).items():
            shapes[f"{HEAD}.{suffix}"] = shape
    else:
        shapes[f"{HEAD}.weight"] = (V, h)
    return shapes
