"""Reference of decoder_layers_: a stack of decoder layers over the KV cache, in plain
PyTorch (the per-layer math of tridiff.layers, docs/spec.md section 1, with the reference
attention). Layouts are tridiff.ops.decoder's; a projection narrower than x is multiplied
by the references of tridiff.ops.mixed_linear / quant_linear (quant_linear_a8 for a packed
weight whose activations are "int8")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tridiff.layer_math import rms_norm, rotate
from tridiff.reference.attention import attention
from tridiff.reference.quant import mixed_linear, quant_linear, quant_linear_a8

WEIGHTS_PER_LAYER = 8   # norm1, qkv, o, norm2, gate_up, down, lora_a, lora_b
PROJECTIONS = (1, 2, 4, 5)   # the slots that may hold narrow or packed weights
_PACKED_ATTRS = ("qweight", "scales", "zeros", "bits", "group_size", "shape")


def is_packed(w) -> bool:
    """A packed (GPTQ) projection weight: tridiff.quant.packed's PackedLinear / FusedPacked."""
    return not isinstance(w, torch.Tensor) and all(hasattr(w, a) for a in _PACKED_ATTRS)


def _linear(x, w):
    """x [..., K] @ W^T for a tensor of x's dtype, a narrower tensor (fp32 accumulation) or a
    packed GPTQ weight (qweight, scales, zeros, bits, group_size)."""
    if isinstance(w, torch.Tensor) and w.dtype == x.dtype:
        return F.linear(x, w)
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(w, torch.Tensor):
        y = mixed_linear(x2, w)
    else:
        op = quant_linear_a8 if getattr(w, "activations", "float") == "int8" else quant_linear
        y = op(x2, w.qweight, w.scales, w.zeros, w.bits, w.group_size)
    return y.view(*x.shape[:-1], y.shape[-1])


def decoder_layers_(x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                    cos, sin, q_scale, eps, lora_scale, softmax_scale, write_kv, final_norm):
    """x [B, T, H] <- the stack's output (RMS-normed with final_norm when given), in
    place; returns None. k/v_cache hold every layer: [layers, B, Tmax, Hkv, D] or paged
    [layers, num_pages, page, Hkv, D]."""
    B, T, _ = x.shape
    Hkv, D = k_cache.shape[-2:]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    scale = q_scale[:, :, None, None]
    for i in range(len(weights) // WEIGHTS_PER_LAYER):
        norm1, w_qkv, w_o, norm2, w_gate_up, w_down, lora_a, lora_b = \
            weights[i * WEIGHTS_PER_LAYER:(i + 1) * WEIGHTS_PER_LAYER]
        Hq = w_o.shape[1] // D
        qk, v = _linear(rms_norm(x, norm1, eps), w_qkv).view(B, T, Hq + 2 * Hkv, D).split((Hq + Hkv, Hkv), dim=2)
        q, k = rotate(qk, cos, sin).split((Hq, Hkv), dim=2)
        o = attention(q * scale, k, v, k_cache[i], v_cache[i], cache_lens, modes, mode_args, q_lens,
                      block_table, softmax_scale, write_kv).reshape(B, T, Hq * D)
        out = _linear(o, w_o)
        if lora_a is not None:
            out = out + F.linear(F.linear(o, lora_a), lora_b) * lora_scale
        x.copy_(x + out)
        gate, up = _linear(rms_norm(x, norm2, eps), w_gate_up).chunk(2, dim=-1)
        x.copy_(x + _linear(F.silu(gate) * up, w_down))
    if final_norm is not None:
        x.copy_(rms_norm(x, final_norm, eps))
