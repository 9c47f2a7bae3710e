"""Projections on packed or narrower weights, as tridiff.projection.linear runs them.

PackedLinear takes the place of a tridiff.layers.Weight for a GPTQ-quantized projection:
its buffers carry the GPTQ checkpoint names (qweight, qzeros, scales, g_idx), so
model.state_dict() is a GPTQ checkpoint again. Its `weight` is itself, so the layers'
linear(x, module.weight) reaches tridiff.projection.linear with it, which hands it here.
The fused q/k/v and gate/up groups (tridiff.layers._FusedRows) become one FusedPacked:
the parts' codes and scales concatenated along N (the packed layout keeps every column
whole), the parts' buffers re-pointed at views of it, so each code is in memory once.

A full-precision weight of another dtype than the activations (bf16 weights with fp32
activations: the "bf16" weight format) is multiplied by ops.mixed_linear: on CPU with
fp32 activations the C++ bf16 panels (cpp backend: each weight widened in registers),
else its reference, which upcasts one block of rows at a time (no fp32 copy of the weight
is ever held). Packed weights go through ops.quant_linear the same way (C++ int4 panels on
CPU, Triton on CUDA, the reference otherwise).

Activations: "float" (default) multiplies the activations as they are
(ops.quant_linear, "w4a16"); "int8" rounds them to int8 per row and group first
(ops.quant_linear_a8, "w4a8": integer dot products, AVX-512 VNNI on CPU), an opt-in
approximation set for a whole model by tridiff.quant.load.set_activations.

CPU layout of the codes: on CPU a PackedLinear's and a FusedPacked's qweight [K/8, N] is
held in the layout its panels stream. With float activations: transposed in memory
(qweight.t() contiguous: each output feature's codes are one contiguous run, what the C++
int4 panels stream); with int8 activations: the GPTQ layout itself (row-major: 16 output
features' words are one VNNI vector). Either way it is the same tensor, the same values
(a strided view, not a copy): state_dict() and the GPTQ export see the GPTQ qweight.
cpu_layout_ relayouts once; the codes are never held twice.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tridiff import ops
from tridiff.quant.gptq import pack_factor, v2_words


def linear(x: torch.Tensor, weight) -> torch.Tensor:
    """y = x @ W^T for a packed weight (PackedLinear / FusedPacked) or a weight whose dtype
    differs from x's."""
    if isinstance(weight, torch.Tensor):
        return mixed_linear(x, weight)
    return weight.matmul(x)


def mixed_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear in the wider of the two dtypes (promote_types: fp32 for bf16 and fp16)
    without a wider copy of the weight (ops.mixed_linear); the result in x's dtype."""
    return ops.mixed_linear(x, weight)


ACTIVATIONS = ("float", "int8")


def check_activations(activations, device=None) -> None:
    """ValueError unless `activations` is one of ACTIVATIONS and, for "int8", the model is
    (or will be loaded) on the CPU: the loaders ask before reading any weight."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations: expected one of {ACTIVATIONS}, got {activations!r}")
    if activations == "int8" and device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"activations: 'int8' is a CPU path (AVX-512 VNNI panels); this model is on "
                         f"{torch.device(device)}")


def cpu_codes(qweight: torch.Tensor, activations: str) -> torch.Tensor:
    """qweight in the CPU layout of `activations` (module docstring); itself when it is."""
    return qweight.contiguous() if activations == "int8" else transposed_codes(qweight)


def transposed_codes(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [K/8, N] with the same values held transposed in memory (qweight.t()
    contiguous); returned as it is when it already is."""
    if qweight.t().is_contiguous():
        return qweight
    return qweight.t().contiguous().t()


class PackedLinear(nn.Module):
    """One GPTQ-packed projection W [out_features, in_features] (tridiff.quant.gptq
    layout). zero_format: how qzeros is stored ("gptq": v1, each word minus the
    offset; "gptq_v2": true zero points); matmul uses the true ones, converted once."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, *,
                 zero_format: str = "gptq", device=None, scale_dtype=torch.float16):
        super().__init__()
        P = pack_factor(bits)
        G = in_features // group_size
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.zero_format = bits, group_size, zero_format
        i32 = dict(dtype=torch.int32, device=device)
        self.register_buffer("qweight", torch.empty(in_features // P, out_features, **i32))
        self.register_buffer("qzeros", torch.empty(G, out_features // P, **i32))
        self.register_buffer("scales", torch.empty(G, out_features, dtype=scale_dtype, device=device))
        self.register_buffer("g_idx", torch.empty(in_features, **i32))
        self._zeros: Optional[tuple] = None   # (qzeros address, true zero-point words)
        self.activations = "float"            # or "int8" (module docstring)

    @property
    def weight(self) -> "PackedLinear":
        return self

    @property
    def shape(self) -> tuple:
        """(out_features, in_features), as a weight tensor's shape reads."""
        return (self.out_features, self.in_features)

    @property
    def zeros(self) -> torch.Tensor:
        """The true (v2) zero-point words (tridiff.ops.quant_linear's qzeros)."""
        return self.zeros_v2()

    def _apply(self, fn, recurse=True):
        # a move off the CPU keeps strides: give other devices' kernels the GPTQ layout back
        out = super()._apply(fn, recurse)
        if self.qweight.device.type != "cpu" and not self.qweight.is_contiguous():
            self.qweight = self.qweight.contiguous()
        return out

    def cpu_layout_(self) -> "PackedLinear":
        """On CPU: hold qweight in the layout of its activations (module docstring), once."""
        if self.qweight.device.type == "cpu":
            codes = cpu_codes(self.qweight, self.activations)
            if codes is not self.qweight:
                self.qweight = codes
        return self

    def zeros_v2(self) -> torch.Tensor:
        z = self.qzeros
        hit = self._zeros
        if hit is None or hit[0] != (z.data_ptr(), z.device):
            hit = self._zeros = ((z.data_ptr(), z.device), v2_words(z, self.bits, self.zero_format))
        return hit[1]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        self.cpu_layout_()
        op = ops.quant_linear_a8 if self.activations == "int8" else ops.quant_linear
        return op(x, self.qweight, self.scales, self.zeros_v2(), bits=self.bits, group_size=self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, activations={self.activations}")


class FusedPacked:
    """Row blocks of several PackedLinear of one input (q/k/v, gate/up) as one packed
    weight: columns concatenated (codes, scales and true zero points)."""

    def __init__(self, parts: list):
        first = parts[0]
        if any((p.bits, p.group_size, p.in_features, p.activations) !=
               (first.bits, first.group_size, first.in_features, first.activations) for p in parts):
            raise ValueError("fused packed projections need one bits, group_size, in_features and activations")
        self.bits, self.group_size, self.activations = first.bits, first.group_size, first.activations
        if first.qweight.device.type == "cpu" and self.activations == "float":   # CPU layout, built in place
            self.qweight = torch.cat([p.qweight.t() for p in parts], dim=0).t()
        else:
            self.qweight = torch.cat([p.qweight for p in parts], dim=1)
        self.scales = torch.cat([p.scales for p in parts], dim=1)
        self.zeros = torch.cat([p.zeros_v2() for p in parts], dim=1)
        n0 = 0
        for p in parts:   # the parts become views of the fused tensors: every code once
            n = p.out_features
            p.qweight = self.qweight[:, n0:n0 + n]
            p.scales = self.scales[:, n0:n0 + n]
            n0 += n
        self.key = fused_key(parts)

    @property
    def shape(self) -> tuple:
        """(N, K) of the fused weight, as a weight tensor's shape reads."""
        return (self.qweight.shape[1], self.qweight.shape[0] * pack_factor(self.bits))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        op = ops.quant_linear_a8 if self.activations == "int8" else ops.quant_linear
        return op(x, self.qweight, self.scales, self.zeros, bits=self.bits, group_size=self.group_size)


def fused_key(parts) -> list:
    return [(p.qweight.data_ptr(), p.scales.data_ptr(), p.qzeros.data_ptr(), p.qweight.device) for p in parts]


def fused_packed(module) -> FusedPacked:
    """The FusedPacked of a tridiff.layers._FusedRows module whose parts are PackedLinear,
    kept in its _fused slot and rebuilt when any part's storage moved."""
    parts = [module._modules[name] for name in module.fused_names]
    hit = module._fused
    if isinstance(hit, FusedPacked) and hit.key == fused_key(parts):
        return hit
    module._fused = FusedPacked(parts)
    return module._fused
