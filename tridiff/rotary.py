"""YaRN rotary embedding (rotate-half / NeoX layout) and the llama-4 query scale.

Both are functions of the ABSOLUTE position of each token, passed explicitly, so a
forward can place tokens anywhere (QUADRATIC slots sit at P+a+b, not at their index).

Precision follows transformers' Ministral3 so that bf16 logits match it: inverse
frequencies and angles in float32, cos/sin cast to the activation dtype. An fp64
model computes everything in fp64.
"""
from __future__ import annotations

import math

import torch

from tridiff.config import ModelConfig


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def yarn_inv_freq(config: ModelConfig, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """[head_dim // 2] inverse frequencies: interpolated (divided by the factor) for
    slow dimensions, original for fast ones, a linear ramp in between."""
    dim, base, factor = config.head_dim, config.rope_theta, config.factor
    orig = config.original_max_position_embeddings

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(config.beta_fast), correction_dim(config.beta_slow)
    if config.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp

    md = math_dtype(dtype)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=md, device=device) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = ((torch.arange(dim // 2, dtype=md, device=device) - low) / (high - low)).clamp(0, 1)
    keep_original = 1 - ramp  # 1 on fast (high-frequency) dimensions
    return interpolation * (1 - keep_original) + extrapolation * keep_original


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float, dtype: torch.dtype):
    """cos, sin [B, T, head_dim] for int64 positions [B, T]."""
    angles = positions.to(inv_freq.dtype)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated: x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def llama4_query_scale(positions: torch.Tensor, beta: float, original_max: int, dtype: torch.dtype):
    """[B, T, 1, 1] factor 1 + beta * ln(1 + floor(p / original_max)); 1.0 below original_max."""
    md = math_dtype(dtype)
    blocks = torch.div(positions, original_max, rounding_mode="floor").to(md)
    return (1 + beta * torch.log1p(blocks)).to(dtype)[:, :, None, None]
