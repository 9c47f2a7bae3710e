"""Model configuration read from (and written to) a Hugging Face style config.json.

Field names follow transformers' Ministral3Config plus the diffusion extras
(docs/spec.md section 1): model_type "nemotron_labs_diffusion", rope_parameters
{rope_type: yarn, rope_theta, factor, original_max_position_embeddings, beta_fast,
beta_slow, mscale, mscale_all_dim, llama_4_scaling_beta}, mask/eos/bos token ids.

Every missing or unsupported value raises ConfigError naming the field: a silently
defaulted rotary or head size would give plausible-looking but wrong logits.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

from tridiff._checks import TridiffInputError

MODEL_TYPE = "nemotron_labs_diffusion"
# Types written by related releases that share this exact network.
ACCEPTED_MODEL_TYPES = (MODEL_TYPE, "ministral3", "mistral")


class ConfigError(TridiffInputError):
    """A config.json field is missing or holds an unsupported value; the message names it."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """The drafter adapter: PEFT LoRA on o_proj, delta = scale * B @ A."""
    rank: int
    alpha: float
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclasses.dataclass
class ModelConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    # YaRN (rope_parameters); attention factor 1.0 when mscale == mscale_all_dim.
    factor: float = 16.0  # YaRN scaling factor s
    original_max_position_embeddings: int = 16384
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    llama_4_scaling_beta: float = 0.1
    rope_truncate: bool = True
    rope_attention_factor: Optional[float] = None  # explicit override, as in transformers
    max_position_embeddings: int = 262144
    mask_token_id: int = 100
    eos_token_id: int = 11
    bos_token_id: int = 1
    block_length: int = 32
    lora: Optional[LoraConfig] = None

    def __post_init__(self):
        self.validate()

    # -- derived values -------------------------------------------------------------

    @property
    def rope_factor(self) -> float:  # alias of `factor`
        return self.factor

    @property
    def attention_factor(self) -> float:
        """cos/sin multiplier. transformers' YaRN rule: an explicit attention_factor,
        else mscale(s, mscale) / mscale(s, mscale_all_dim) with mscale(s, m) =
        0.1 m ln s + 1; exactly 1.0 for the released mscale == mscale_all_dim."""
        if self.rope_attention_factor is not None:
            return float(self.rope_attention_factor)

        def get(s, m):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        return get(self.factor, self.mscale) / get(self.factor, self.mscale_all_dim)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def validate(self) -> None:
        positive = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "vocab_size", "original_max_position_embeddings",
                    "max_position_embeddings", "block_length")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_key_value_heads: expected a divisor of num_attention_heads="
                              f"{self.num_attention_heads}, got {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: expected an even size (rotate-half rotary), got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta", "factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name}: expected a positive number, got {value!r}")
        for name in ("mask_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}: expected a token id in [0, vocab_size={self.vocab_size}), got {value!r}")

    # -- json -----------------------------------------------------------------------

    @classmethod
    def from_json(cls, source) -> "ModelConfig":
        """From a config.json path, a checkpoint directory, or an already parsed dict."""
        if isinstance(source, dict):
            raw = source
        else:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                raw = json.load(f)
        return _parse(raw)

    def to_json_dict(self) -> dict:
        """config.json content with Hugging Face field names."""
        rope = {
            "rope_type": "yarn",
            "rope_theta": self.rope_theta,
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "mscale": self.mscale,
            "mscale_all_dim": self.mscale_all_dim,
            "llama_4_scaling_beta": self.llama_4_scaling_beta,
        }
        if not self.rope_truncate:
            rope["truncate"] = False
        if self.rope_attention_factor is not None:
            rope["attention_factor"] = self.rope_attention_factor
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["NemotronLabsDiffusionModel"],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": rope,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "mask_token_id": self.mask_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
            "block_size": self.block_length,
            "dtype": "bfloat16",
        }

    def write_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json_dict(), f, indent=2)
            f.write("\n")


def _parse(raw: dict) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(raw).__name__}")
    # Multimodal wrappers keep the language model under text_config.
    if "text_config" in raw and "hidden_size" not in raw:
        raw = raw["text_config"]

    def need(d, name, where=""):
        if name not in d or d[name] is None:
            raise ConfigError(f"{where}{name}: missing from config.json")
        return d[name]

    model_type = raw.get("model_type", MODEL_TYPE)
    if model_type not in ACCEPTED_MODEL_TYPES:
        raise ConfigError(f"model_type: expected one of {ACCEPTED_MODEL_TYPES}, got {model_type!r}")
    for name, expected in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                           ("tie_word_embeddings", False)):
        if name in raw and raw[name] != expected:
            raise ConfigError(f"{name}: only {expected!r} is supported, got {raw[name]!r}")
    if raw.get("sliding_window") is not None:
        raise ConfigError(f"sliding_window: only null is supported, got {raw['sliding_window']!r}")

    heads = need(raw, "num_attention_heads")
    if "head_dim" not in raw:
        # transformers would silently use its class default 128 here; refuse instead.
        raise ConfigError("head_dim: missing from config.json (it is not hidden_size/num_attention_heads "
                          "on these models)")
    head_dim = raw["head_dim"]
    if head_dim is None:  # explicit null: transformers derives it
        head_dim = need(raw, "hidden_size") // heads

    # transformers 5 uses rope_parameters; older files use rope_scaling + top-level rope_theta.
    rope = raw.get("rope_parameters")
    where = "rope_parameters."
    if rope is None:
        rope = raw.get("rope_scaling")
        where = "rope_scaling."
    if rope is None:
        raise ConfigError("rope_parameters: missing from config.json (YaRN parameters required)")
    rope = dict(rope)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type != "yarn":
        raise ConfigError(f"{where}rope_type: only 'yarn' is supported, got {rope_type!r}")
    theta = rope.get("rope_theta", raw.get("rope_theta"))
    if theta is None:
        raise ConfigError(f"{where}rope_theta: missing from config.json")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{where}partial_rotary_factor: only 1.0 is supported, "
                          f"got {rope['partial_rotary_factor']!r}")
    max_pos = need(raw, "max_position_embeddings")
    orig = rope.get("original_max_position_embeddings", raw.get("original_max_position_embeddings"))
    if orig is None:
        raise ConfigError(f"{where}original_max_position_embeddings: missing from config.json")
    factor = rope.get("factor")
    if factor is None:  # transformers' fallback
        factor = max_pos / orig
    for name in ("mscale", "mscale_all_dim", "llama_4_scaling_beta"):
        if rope.get(name) is None and not (name != "llama_4_scaling_beta" and "attention_factor" in rope):
            raise ConfigError(f"{where}{name}: missing from config.json")

    eos = need(raw, "eos_token_id")
    if isinstance(eos, list):
        if not eos:
            raise ConfigError("eos_token_id: expected an int or a non-empty list, got []")
        eos = eos[0]
    lora = raw.get("lora")
    return ModelConfig(
        hidden_size=need(raw, "hidden_size"),
        intermediate_size=need(raw, "intermediate_size"),
        num_hidden_layers=need(raw, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        vocab_size=need(raw, "vocab_size"),
        rms_norm_eps=float(need(raw, "rms_norm_eps")),
        rope_theta=float(theta),
        factor=float(factor),
        original_max_position_embeddings=orig,
        beta_fast=float(rope.get("beta_fast") or 32.0),
        beta_slow=float(rope.get("beta_slow") or 1.0),
        mscale=float(rope.get("mscale") or 0.0),
        mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
        llama_4_scaling_beta=float(rope["llama_4_scaling_beta"]),
        rope_truncate=bool(rope.get("truncate", True)),
        rope_attention_factor=rope.get("attention_factor"),
        max_position_embeddings=max_pos,
        mask_token_id=need(raw, "mask_token_id"),
        eos_token_id=eos,
        bos_token_id=need(raw, "bos_token_id"),
        block_length=_block_size(raw),
        lora=LoraConfig(**lora) if isinstance(lora, dict) else None,
    )


def _block_size(raw: dict) -> int:
    """The released config class calls it block_size; block_length is read as an alias."""
    size, alias = raw.get("block_size"), raw.get("block_length")
    if size is not None and alias is not None and size != alias:
        raise ConfigError(f"block_size: {size!r} disagrees with its alias block_length={alias!r}")
    return size if size is not None else (alias if alias is not None else 32)


# Released sizes (docs/spec.md section 1) and a tiny one for CPU tests and demos.
_RELEASED = dict(rms_norm_eps=1e-5, factor=16.0, original_max_position_embeddings=16384,
                 max_position_embeddings=262144, vocab_size=131072, head_dim=128,
                 num_attention_heads=32, num_key_value_heads=8)
PRESETS = {
    # rope_theta: 1e6 on 3B and 1e9 on 14B as released; 8B assumed 1e6 (Ministral-3 default).
    "3b": dict(_RELEASED, hidden_size=3072, intermediate_size=9216, num_hidden_layers=26, rope_theta=1e6),
    "8b": dict(_RELEASED, hidden_size=4096, intermediate_size=14336, num_hidden_layers=34, rope_theta=1e6),
    "14b": dict(_RELEASED, hidden_size=5120, intermediate_size=16384, num_hidden_layers=40, rope_theta=1e9),
    # head_dim != hidden/heads, and original_max_position_embeddings 64 so that YaRN's
    # ramp and the llama-4 query scale are both exercised by short test sequences.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=512, rms_norm_eps=1e-5,
                 rope_theta=10000.0, factor=16.0, original_max_position_embeddings=64,
                 max_position_embeddings=1024),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return ModelConfig(**{**PRESETS[name], **overrides})
