"""Attention benchmark shapes and the byte/FLOP formulas they are judged by.

A "case" is one batch layout: per-row modes, mode_args and q_lens for B rows with
P committed keys each. The formulas count the fewest bytes a kernel must move and
the FLOPs of the visible (query, key) pairs only -- masked pairs are free work that
a good kernel skips, so they do not count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tridiff.modes import Mode


@dataclass(frozen=True)
class Dims:
    Hq: int = 32
    Hkv: int = 8
    D: int = 128
    new: int = 32  # new tokens per row in verify/draft forwards


GPU_DIMS = Dims()
CPU_DIMS = Dims(Hq=8, Hkv=2, D=64, new=8)  # same GQA ratio 4, tiny for the CPU reference


@dataclass
class Case:
    label: str
    modes: list       # per row, tridiff.Mode
    mode_args: list   # per row
    q_lens: list      # per row
    Tq: int           # padded new-token slots


def mixed_quadratic_L(new: int) -> int:
    """Largest L with L*(L+1) <= new (so a QUADRATIC row fits the verify width)."""
    L = 1
    while (L + 1) * (L + 2) <= new:
        L += 1
    return L


def anchor_bits(anchors) -> int:
    """ANCHORED_QUADRATIC mode_args of an anchor set: bit a <=> anchor a, as an int32."""
    bits = sum(1 << a for a in set(anchors))
    return bits - (1 << 32) if bits >= 1 << 31 else bits


def make_case(label: str, B: int, new: int) -> Case:
    if label == "CAUSAL":
        return Case(label, [Mode.CAUSAL] * B, [0] * B, [new] * B, new)
    if label == "BIDIR_BLOCK":
        return Case(label, [Mode.BIDIR_BLOCK] * B, [0] * B, [new] * B, new)
    if label.startswith("QUADRATIC"):
        L = int(label[len("QUADRATIC"):])
        return Case(label, [Mode.QUADRATIC] * B, [L] * B, [L * (L + 1)] * B, L * (L + 1))
    if label.startswith("ANCHORED"):
        # "ANCHORED<L>x<k>": k anchors spread evenly over 0..L-1, the last at L-1
        L, k = (int(x) for x in label[len("ANCHORED"):].split("x"))
        arg = anchor_bits([(g + 1) * L // k - 1 for g in range(k)])
        return Case(label, [Mode.ANCHORED_QUADRATIC] * B, [arg] * B, [L * (k + 1)] * B, L * (k + 1))
    if label == "MIXED":
        # One launch serving AR verify, diffusion draft, prefill+draft and one-forward
        # self-speculation rows side by side (nobody else does this in one kernel).
        Lq = mixed_quadratic_L(new)
        cycle = [(Mode.CAUSAL, 0, new), (Mode.BIDIR_BLOCK, 0, new),
                 (Mode.CAUSAL_THEN_BIDIR, new // 2, new), (Mode.QUADRATIC, Lq, Lq * (Lq + 1))]
        rows = [cycle[b % len(cycle)] for b in range(B)]
        return Case(label, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], new)
    raise ValueError(f"unknown case {label!r}")


def new_visible_pairs(mode: int, arg: int, n: int) -> int:
    """Visible (query, new key) pairs among the n new tokens of one row (docs/spec.md section 2)."""
    if mode == Mode.CAUSAL:
        return n * (n + 1) // 2
    if mode == Mode.BIDIR_BLOCK:
        return n * n
    if mode == Mode.QUADRATIC:
        L = arg
        # d slot of sub-block a sees the a+1 d slots 0..a; each of its L mask slots sees
        # its own L+1 slots plus the a earlier d slots.
        return sum((a + 1) + L * (L + 1 + a) for a in range(L))
    if mode == Mode.ANCHORED_QUADRATIC:
        anchors = [a for a in range(32) if (arg % 2 ** 32) >> a & 1]
        L = n // (len(anchors) + 1)
        # clean row i sees clean keys 0..i; a mask row of anchor a sees clean keys 0..a
        # and the L slots of its own group.
        return L * (L + 1) // 2 + sum(L * (a + 1 + L) for a in anchors)
    if mode == Mode.CAUSAL_THEN_BIDIR:
        K = arg
        return (n - K) * (n - K + 1) // 2 + K * n
    raise ValueError(mode)


def visible_pairs(case: Case, P: int) -> int:
    return sum(n * P + new_visible_pairs(m, a, n) for m, a, n in zip(case.modes, case.mode_args, case.q_lens))


def attention_flops(case: Case, P: int, dims: Dims) -> float:
    """4 FLOPs per visible pair per query head per head-dim element (QK^T and PV)."""
    return 4.0 * visible_pairs(case, P) * dims.Hq * dims.D


def attention_bytes(case: Case, B: int, P: int, dims: Dims, elt: int, write_kv: bool = False) -> float:
    """KV cache read once (2*B*P*Hkv*D*elt) + new tokens: q, k, v read, out written
    (+ new k, v written into the cache when write_kv)."""
    tokens = sum(case.q_lens)
    kv = 2 * B * P * dims.Hkv * dims.D * elt
    new = tokens * (2 * dims.Hq * dims.D + 2 * dims.Hkv * dims.D) * elt
    if write_kv:
        new += tokens * 2 * dims.Hkv * dims.D * elt
    return float(kv + new)


def dense_mask(case: Case, P: int, device) -> torch.Tensor:
    """Bool [B, Tq, P + Tq] (keys = [cache | new]) for baselines that take a dense mask.
    Padding rows (i >= q_len) see the cache, so no row is fully masked (avoids NaN paths)."""
    from tridiff.reference.attention import visibility

    B = len(case.modes)
    lens0 = torch.zeros(B, dtype=torch.int32, device=device)
    modes = torch.tensor([int(m) for m in case.modes], dtype=torch.int8, device=device)
    args = torch.tensor(case.mode_args, dtype=torch.int32, device=device)
    qlens = torch.tensor(case.q_lens, dtype=torch.int32, device=device)
    new = visibility(lens0, modes, args, qlens, case.Tq, 0)  # [B, Tq, Tq]
    cached = torch.ones(B, case.Tq, P, dtype=torch.bool, device=device)
    return torch.cat([cached, new], dim=2)
