"""The elementwise math of a decoder layer, shared by the model's layers (tridiff.layers)
and the reference decoder stack (tridiff.reference.decoder): RMS norm and rotary."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ONE_CALL_NORM_DTYPES = (torch.float32, torch.float64)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x), the statistics in fp32 (fp64 for fp64), as transformers does.
    For fp32/fp64 that is exactly F.rms_norm (one call instead of six: the same operations
    in the same dtype; tests/model/test_fused.py checks them bit for bit)."""
    if x.dtype in ONE_CALL_NORM_DTYPES:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor):
    """cos, sin [B, T, D] -> [B, T, 1, D] tables for rotate: sin carries rotate_half's
    sign (its first half negated)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[:, :, None, :], signed[:, :, None, :]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """tridiff.rotary.apply_rotary, bit for bit: rotate_half(x) * sin = [-x2, x1] * sin
    = roll(x, D/2) * [-sin1, sin2] (a sign moved between exact factors)."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin
