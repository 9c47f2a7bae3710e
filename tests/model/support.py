"""Shared helpers for the model tests: tiny configs with YaRN and the llama-4 scale
active, an equivalent transformers Ministral3 model, dense masks, error bounds."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import backends_serving
from tridiff.checkpoint import random_tensors
from tridiff.config import ModelConfig, preset
from tridiff.model import Model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On CPU the reference serves the model (the Triton interpreter is far too slow for
# whole-model tests); on a GPU every backend runs the same comparisons.
# Backends a whole forward can run on (every op it calls, attention included).
BACKENDS = backends_serving("attention")


def tiny_config(**overrides) -> ModelConfig:
    """original_max_position_embeddings 64: positions past 64/128 cross the llama-4
    thresholds, and YaRN's ramp interpolates most rotary dimensions."""
    return preset("tiny", **overrides)


def ours(config: ModelConfig, dtype, seed=0, device=DEVICE) -> Model:
    return Model(config, device=device, dtype=dtype).init_random_(seed)


def hf_model(config: ModelConfig, dtype, seed=0, device=DEVICE, state=None):
    """transformers' Ministral3ForCausalLM with our random weights (names mapped:
    encoder.* -> model.*, diffusion_head -> lm_head, untied), eager attention so a
    custom 4-D additive mask is used as given."""
    tf = pytest.importorskip("transformers", reason="needs transformers for the reference model")
    hc = tf.Ministral3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=False, pad_token_id=None,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        rope_parameters=dict(
            rope_type="yarn", rope_theta=config.rope_theta, factor=config.factor,
            original_max_position_embeddings=config.original_max_position_embeddings,
            beta_fast=config.beta_fast, beta_slow=config.beta_slow, mscale=config.mscale,
            mscale_all_dim=config.mscale_all_dim, llama_4_scaling_beta=config.llama_4_scaling_beta))
    hc._attn_implementation = "eager"
    model = tf.Ministral3ForCausalLM(hc).eval()
    if state is None:
        state = random_tensors(config, seed=seed, dtype=torch.float32)
    mapped = {("lm_head.weight" if k == "diffusion_head.weight" else k.replace("encoder.", "model.", 1)): v
              for k, v in state.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.to(device=device, dtype=dtype)


def hf_logits(model, tokens, *, position_ids=None, visible=None):
    """visible: bool [B, T, T] (query, key) -> additive 4-D mask; None = causal."""
    mask = None
    if visible is not None:
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        mask = mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask, position_ids=position_ids).logits


def err(a, b) -> float:
    d = (a.double() - b.double()).abs()
    assert not torch.isnan(d).any(), "NaN in compared logits"
    return float(d.max())


def assert_within_torch_error(candidate, truth, baseline, what=""):
    """House rule: candidate's error vs the fp64 truth <= 2x the error PyTorch's own
    same-dtype computation (baseline) makes against it."""
    e, b = err(candidate, truth), err(baseline, truth)
    assert e <= 2 * b, f"{what}: error {e:.3e} > 2 x torch's own error {b:.3e}"


def run_or_skip(fn, *args, **kwargs):
    """Run a model forward; a backend that cannot serve it skips with its reason."""
    from tridiff._dispatch import BackendUnavailable

    try:
        return fn(*args, **kwargs)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def with_lora(config: ModelConfig, rank=8, alpha=32.0) -> ModelConfig:
    from tridiff.config import LoraConfig

    return dataclasses.replace(config, lora=LoraConfig(rank=rank, alpha=alpha))


def causal_visible(T: int, device=DEVICE) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()
