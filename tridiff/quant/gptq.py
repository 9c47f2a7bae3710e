"""The GPTQ weight layout: packing, unpacking, round-to-nearest quantization, dequantization.

A linear layer y = x @ W^T with W [N out, K in] quantized to `bits` (4 or 8) in groups of
`group_size` consecutive input features (group_size = K: one group, per channel) is
stored as GPTQModel / AutoGPTQ write it:

    qweight  int32 [K * bits / 32, N]  codes packed along the INPUT dimension: word
             qweight[r, n] holds q[r*P + j, n] in bits [j*bits, (j+1)*bits), P = 32 / bits
    qzeros   int32 [G, N * bits / 32]  zero points packed along the OUTPUT dimension the
             same way (word [g, c] holds z[g, c*P + j])
    scales   fp16  [G, N]
    g_idx    int32 [K]                 group of each input feature (k // group_size here)

    W[n, k] = scales[g, n] * (q[k, n] - z[g, n]),  g = g_idx[k]

Zero-point convention. The "gptq" (v1) checkpoint format stores every zero point minus
one: GPTQModel's convert_gptq_v2_to_v1_format subtracts 0x11111111 (4 bits) /
0x01010101 (8 bits) from each packed int32 WORD, and its v1 -> v2 conversion adds it
back, so a zero point of 0 borrows from its neighbour and comes back exactly. tridiff
follows that word arithmetic (encode_zeros / decode_zeros), and keeps the true zero
points ("gptq_v2", no offset) in memory. Symmetric quantization has z = 2**(bits-1)
(8 for int4: the v1 word is 0x77777777).

Round-to-nearest as GPTQModel's Quantizer (find_params) with mse off: per group
xmin = min(w, 0), xmax = max(w, 0); symmetric: xmax = max(|xmin|, xmax), xmin = -xmax
where xmin < 0; an all-zero range becomes [-1, 1]; scale = (xmax - xmin) / maxq;
z = maxq+1 / 2 (symmetric) or round(-xmin / scale); q = clamp(round(w / scale) + z, 0,
maxq). One difference: its pack rounds with the fp32 scales and then stores them as fp16;
here the scales are rounded to fp16 first and the zero points and codes computed from
them, so the stored grid is exactly the one rounded to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

BITS = (4, 8)
V1_OFFSET = {4: 0x11111111, 8: 0x01010101}   # subtracted from each v1 qzeros word
ZERO_FORMATS = ("gptq", "gptq_v2")


def pack_factor(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits: expected one of {BITS}, got {bits!r}")
    return 32 // bits


def _to_int32(words64: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the int32 with the same bits."""
    words64 = words64 & 0xFFFFFFFF
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes q [K, N] (integers in [0, 2**bits)) -> int32 [K*bits/32, N], packed along K."""
    P = pack_factor(bits)
    K, N = q.shape
    if K % P:
        raise ValueError(f"q: expected a row count divisible by {P}, got shape {list(q.shape)}")
    shifts = (torch.arange(P, dtype=torch.int64, device=q.device) * bits).view(1, P, 1)
    words = (q.to(torch.int64).view(K // P, P, N) << shifts).sum(dim=1)
    return _to_int32(words)


def unpack_rows(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K*bits/32, N] -> codes int32 [K, N] (inverse of pack_rows)."""
    P = pack_factor(bits)
    R, N = qweight.shape
    shifts = (torch.arange(P, dtype=torch.int32, device=qweight.device) * bits).view(1, P, 1)
    return ((qweight.view(R, 1, N) >> shifts) & ((1 << bits) - 1)).reshape(R * P, N)


def pack_cols(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes z [G, N] -> int32 [G, N*bits/32], packed along N (the qzeros layout)."""
    return pack_rows(z.t(), bits).t().contiguous()


def unpack_cols(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [G, N*bits/32] -> codes int32 [G, N] (inverse of pack_cols)."""
    return unpack_rows(qzeros.t(), bits).t().contiguous()


def encode_zeros(z: torch.Tensor, bits: int, zero_format: str = "gptq") -> torch.Tensor:
    """True zero points z [G, N] -> the qzeros words of `zero_format` (v1 "gptq": each
    word minus V1_OFFSET, modulo 2**32; "gptq_v2": as they are)."""
    words = pack_cols(z, bits)
    if zero_format == "gptq":
        words = _to_int32(words.to(torch.int64) - V1_OFFSET[bits])
    elif zero_format != "gptq_v2":
        raise ValueError(f"zero_format: expected one of {ZERO_FORMATS}, got {zero_format!r}")
    return words


def v2_words(qzeros: torch.Tensor, bits: int, zero_format: str) -> torch.Tensor:
    """qzeros words of `zero_format` -> the words of the true zero points (v2)."""
    if zero_format == "gptq_v2":
        return qzeros.contiguous()
    if zero_format != "gptq":
        raise ValueError(f"zero_format: expected one of {ZERO_FORMATS}, got {zero_format!r}")
    return _to_int32(qzeros.to(torch.int64) + V1_OFFSET[bits])


def decode_zeros(qzeros: torch.Tensor, bits: int, zero_format: str = "gptq") -> torch.Tensor:
    """qzeros words -> true zero points int32 [G, N] (inverse of encode_zeros)."""
    return unpack_cols(v2_words(qzeros, bits, zero_format), bits)


@dataclass
class Quantized:
    """One quantized weight in the GPTQ layout, zero points as stored in `zero_format`."""
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int


def default_g_idx(K: int, group_size: int, device=None) -> torch.Tensor:
    return (torch.arange(K, dtype=torch.int32, device=device) // group_size).to(torch.int32)


def quantize_rtn(w: torch.Tensor, bits: int, group_size: Optional[int], *, sym: bool = True,
                 zero_format: str = "gptq") -> Quantized:
    """Round-to-nearest quantization of w [N, K] (any float dtype; computed in fp32).
    group_size None or -1: one group over all of K (per channel)."""
    P = pack_factor(bits)
    N, K = w.shape
    g = K if group_size in (None, -1) else int(group_size)
    if g < 1 or K % g or K % P or N % P:
        raise ValueError(f"w: expected K divisible by group_size {g} and by {P}, N by {P}; got shape {[N, K]}")
    maxq = (1 << bits) - 1
    G = K // g
    wg = w.detach().float().reshape(N, G, g)
    xmin = wg.amin(dim=2).clamp(max=0.0)
    xmax = wg.amax(dim=2).clamp(min=0.0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
        empty = xmax == 0
    else:
        empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, xmin - 1, xmin)
    xmax = torch.where(empty, xmax + 1, xmax)
    scale = ((xmax - xmin) / maxq).to(torch.float16)   # [N, G], stored fp16
    s = scale.float()
    if sym:
        zero = torch.full_like(s, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / s).clamp(0, maxq)
    q = torch.clamp(torch.round(wg / s[:, :, None]) + zero[:, :, None], 0, maxq).to(torch.int32)
    q = q.reshape(N, K).t().contiguous()   # [K, N]
    return Quantized(qweight=pack_rows(q, bits), qzeros=encode_zeros(zero.t().to(torch.int32), bits, zero_format),
                     scales=scale.t().contiguous(), g_idx=default_g_idx(K, g, w.device), bits=bits,
                     group_size=g)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros_v2: torch.Tensor, bits: int,
               group_size: int, dtype=torch.float32) -> torch.Tensor:
    """W^T [K, N] in `dtype` from the packed codes, scales [G, N] and v2 (true) qzeros
    words, g = k // group_size. Exact in fp32: |q - z| < 2**bits times an fp16 scale."""
    q = unpack_rows(qweight, bits)
    z = unpack_cols(zeros_v2, bits)
    K = q.shape[0]
    g = torch.arange(K, device=q.device) // group_size
    return (scales.to(dtype)[g] * (q - z[g]).to(dtype))
