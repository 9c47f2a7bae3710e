"""Work of the Triton attention kernel, counted instead of timed (runs on CPU).

The real kernel runs in Triton's interpreter with the tile configuration the launcher
picks on a GPU (BLOCK_M/BLOCK_N for head_dim 128, bf16), on data with a small head_dim
(the tile walk depends on lengths, modes and tile sizes only). Every key tile a program
processes costs two tl.dot calls (QK^T and PV), so counting the interpreter's dot calls
gives the key tiles processed; x BLOCK_M x BLOCK_N that is the (query row, key) pairs
computed, masked ones included. Compared with the visible pairs (the reference's mask)
this predicts, before any GPU run, how much of the kernel's work is wasted on hidden
pairs, and how QUADRATIC and mixed batches should time relative to CAUSAL if time
follows work (true once the launch is compute-bound; see NOTES.md).

    python -m bench.attention_work [--P 0,1024,4096]
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

from bench.attention_shapes import GPU_DIMS, Case, make_case, mixed_quadratic_L, visible_pairs  # noqa: E402
from tridiff.modes import Mode  # noqa: E402
from tridiff.ops.attention import normalize_attention_args  # noqa: E402

GROUP = GPU_DIMS.Hq // GPU_DIMS.Hkv   # query heads per KV head, packed into one tile
HEAD_DIM = 16                          # counting does not depend on it


def gpu_config(rows_per_kv_head: int) -> dict:
    """The launcher's tile choice on a GPU for Hq 32 / Hkv 8, D 128, bf16."""
    import triton

    from tridiff.triton.attention import tile_config

    group_p2 = triton.next_power_of_2(GROUP)
    return tile_config(GPU_DIMS.D, rows_per_kv_head * group_p2, group_p2, torch.bfloat16, on_gpu=True)


@contextmanager
def counting_dots():
    """Counts tl.dot calls of kernels run in the interpreter inside the block."""
    from triton.runtime import interpreter

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("counting tile work needs TRITON_INTERPRET=1 (set before importing triton)")
    builder = interpreter.interpreter_builder
    calls = [0]
    original = builder.create_dot

    def create_dot(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    builder.create_dot = create_dot
    try:
        yield calls
    finally:
        builder.create_dot = original


def case_args(case: Case, P: int, group=GROUP, D=HEAD_DIM):
    """Normalised attention arguments for one KV head: the case's rows, committed length P."""
    B, Tq = len(case.modes), case.Tq
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v = r(B, Tq, group, D), r(B, Tq, 1, D), r(B, Tq, 1, D)
    kc, vc = r(B, P + Tq, 1, D), r(B, P + Tq, 1, D)
    t = lambda vals, dt: torch.tensor(vals, dtype=dt)  # noqa: E731
    return normalize_attention_args(q, k, v, kc, vc, t([P] * B, torch.int32),
                                    t([int(m) for m in case.modes], torch.int8), t(case.mode_args, torch.int32),
                                    t(case.q_lens, torch.int32), None, None, False)


def key_tiles(args, config: dict) -> int:
    """Key tiles the kernel processes for `args` with tile `config` (single split)."""
    from tridiff.triton import attention as ta

    with counting_dots() as calls:
        ta.launch(*args, config=config, num_splits=1)
    assert calls[0] % 2 == 0, "each key tile does exactly two dots"
    return calls[0] // 2


def work(case: Case, P: int) -> dict:
    """Key tiles, (query row, key) pairs computed and pairs visible for one KV head of
    the case (its GROUP query heads packed), with the GPU tile configuration."""
    cfg = gpu_config(case.Tq)
    tiles = key_tiles(case_args(case, P), cfg)
    return dict(case=case.label, B=len(case.modes), P=P, rows=case.Tq, tiles=tiles,
                computed=tiles * cfg["BLOCK_M"] * cfg["BLOCK_N"], visible=visible_pairs(case, P) * GROUP, cfg=cfg)


def homogeneous(mode: Mode, arg: int, n: int, B: int, Tq: int) -> Case:
    return Case(f"{mode.name}{arg or ''}", [mode] * B, [arg] * B, [n] * B, Tq)


def quadratic_vs_causal(L: int, P: int) -> dict:
    """The issue's QUADRATIC target in work terms: QUADRATIC(L) against CAUSAL over the
    same L(L+1) rows. ratio = (work_Q / work_C) / (visible_Q / visible_C); <= 1.3 meets it."""
    rows = L * (L + 1)
    quad = work(homogeneous(Mode.QUADRATIC, L, rows, 1, rows), P)
    causal = work(homogeneous(Mode.CAUSAL, 0, rows, 1, rows), P)
    return dict(L=L, P=P, tiles_quadratic=quad["tiles"], tiles_causal=causal["tiles"],
                visible_quadratic=quad["visible"], visible_causal=causal["visible"],
                ratio=(quad["tiles"] / causal["tiles"]) / (quad["visible"] / causal["visible"]))


def anchored_vs_causal(L: int, k: int, P: int) -> dict:
    """The same ratio for ANCHORED_QUADRATIC with k anchors spread over 0..L-1 (pruned
    quadratic self-speculation), against CAUSAL over its L(k+1) rows."""
    case = make_case(f"ANCHORED{L}x{k}", 1, GPU_DIMS.new)
    rows = case.Tq
    anc = work(case, P)
    causal = work(homogeneous(Mode.CAUSAL, 0, rows, 1, rows), P)
    return dict(L=L, k=k, P=P, rows=rows, tiles_anchored=anc["tiles"], tiles_causal=causal["tiles"],
                visible_anchored=anc["visible"], visible_causal=causal["visible"],
                useful=anc["visible"] / anc["computed"],
                ratio=(anc["tiles"] / causal["tiles"]) / (anc["visible"] / causal["visible"]))


def mixed_vs_parts(B: int, P: int, new: int = GPU_DIMS.new) -> dict:
    """The mixed-batch target in work terms: MIXED over B rows against each homogeneous
    batch of B rows of one of its modes; ratio = work_mixed / max(work_part) <= 1.05."""
    Lq = mixed_quadratic_L(new)
    parts = [make_case("CAUSAL", B, new), make_case("BIDIR_BLOCK", B, new),
             homogeneous(Mode.QUADRATIC, Lq, Lq * (Lq + 1), B, new),
             homogeneous(Mode.CAUSAL_THEN_BIDIR, new // 2, new, B, new)]
    mixed = work(make_case("MIXED", B, new), P)["computed"]
    done = {case.label: work(case, P)["computed"] for case in parts}
    return dict(B=B, P=P, mixed=mixed, parts=done, ratio=mixed / max(done.values()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--P", default="0,1024,4096", help="committed cache lengths")
    a = ap.parse_args(argv)
    Ps = [int(x) for x in a.P.split(",")]
    print("QUADRATIC(L) vs CAUSAL over the same rows (target: ratio <= 1.3)")
    print(f"{'L':>3} {'P':>6} {'tiles Q':>8} {'tiles C':>8} {'work Q/C':>9} {'visible Q/C':>12} {'ratio':>6}")
    for L in (16, 32):
        for P in Ps:
            r = quadratic_vs_causal(L, P)
            print(f"{L:>3} {P:>6} {r['tiles_quadratic']:>8} {r['tiles_causal']:>8} "
                  f"{r['tiles_quadratic'] / r['tiles_causal']:>9.3f} "
                  f"{r['visible_quadratic'] / r['visible_causal']:>12.3f} {r['ratio']:>6.2f}")
    print("\nANCHORED_QUADRATIC(L, k anchors) vs CAUSAL over the same L(k+1) rows")
    print(f"{'L':>3} {'k':>2} {'P':>6} {'tiles A':>8} {'tiles C':>8} {'visible A/C':>12} {'ratio':>6} {'useful':>7}")
    for L, k in ((16, 2), (16, 4), (32, 2), (32, 4)):
        for P in Ps:
            r = anchored_vs_causal(L, k, P)
            print(f"{L:>3} {k:>2} {P:>6} {r['tiles_anchored']:>8} {r['tiles_causal']:>8} "
                  f"{r['visible_anchored'] / r['visible_causal']:>12.3f} {r['ratio']:>6.2f} {r['useful']:>7.2f}")
    print("\nMIXED batch vs its slowest homogeneous part, same B (target: ratio <= 1.05)")
    for P in Ps:
        r = mixed_vs_parts(4, P)
        print(f"B=4 P={P:>5}: ratio {r['ratio']:.3f}  (" +
              ", ".join(f"{k} {v / r['mixed']:.2f}" for k, v in r["parts"].items()) + " of mixed)")
    print("\nUseful fraction (visible / computed pairs), one row each")
    for label in ("CAUSAL", "BIDIR_BLOCK", "QUADRATIC16", "QUADRATIC32"):
        for P in Ps:
            r = work(make_case(label, 1, GPU_DIMS.new), P)
            print(f"{label:>12} P={P:>5}: {r['tiles']:>5} tiles of {r['cfg']['BLOCK_M']}x{r['cfg']['BLOCK_N']}, "
                  f"useful {r['visible'] / r['computed']:.2f}")


if __name__ == "__main__":
    main()
