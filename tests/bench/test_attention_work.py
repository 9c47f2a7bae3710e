"""Tile skipping of the Triton attention kernel, proved by counting its work on CPU.

The kernel runs in Triton's interpreter while bench.attention_work counts its tl.dot
calls (two per key tile). For every query tile, the new keys it must touch are the union
U of the keys visible to any of its rows (the reference mask); a kernel that skips hidden
tiles processes ceil(P / BLOCK_N) cache tiles plus ceil(|U| / BLOCK_N) new-key tiles, exactly,
and for QUADRATIC and ANCHORED_QUADRATIC rows at most one more (their d slots or clean
keys and their own sub-blocks or groups are walked as two ranges). A
kernel that walked hidden tiles (e.g. every new key for QUADRATIC rows) exceeds that.
No time is measured.
"""
import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py on CPU)", allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("counts work in Triton's interpreter, which the GPU run does not use", allow_module_level=True)

from bench.attention_shapes import Case, anchor_bits  # noqa: E402
from bench.attention_work import case_args, key_tiles, quadratic_vs_causal  # noqa: E402
from tridiff import Mode  # noqa: E402
from tridiff.reference.attention import visibility  # noqa: E402

C, BI, QU, CB = Mode.CAUSAL, Mode.BIDIR_BLOCK, Mode.QUADRATIC, Mode.CAUSAL_THEN_BIDIR
AN = Mode.ANCHORED_QUADRATIC
CFG = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


def tile_bounds(args, cfg, group_p2):
    """(fewest, most) key tiles a tile-skipping kernel may process for these rows."""
    q, P_all, modes, mode_args, q_lens = args[0], args[5], args[6], args[7], args[8]
    Tq, Tcap = q.shape[1], args[3].shape[1]
    vis = visibility(P_all, modes, mode_args, q_lens, Tq, Tcap)[:, :, Tcap:]  # new keys only
    block_q, bn = cfg["BLOCK_M"] // group_p2, cfg["BLOCK_N"]
    lo = hi = 0
    for b in range(q.shape[0]):
        P, n = int(P_all[b]), int(q_lens[b])
        for q0 in range(0, n, block_q):
            union = int(vis[b, q0:q0 + block_q].any(0).sum())
            need = -(-P // bn) + -(-union // bn)
            lo, hi = lo + need, hi + need + (int(modes[b]) in (QU, AN))
    return lo, hi


ROWS = {
    "causal": ([C, C], [0, 0], [48, 7], 20),
    "bidir": ([BI, BI], [0, 0], [24, 3], 20),
    "causal_then_bidir": ([CB, CB], [8, 3], [48, 9], 20),
    "quadratic_L3": ([QU], [3], [12], 0),
    "quadratic_L8": ([QU, QU], [8, 8], [72, 72], 5),
    "mixed": ([C, QU, BI, CB], [0, 4, 0, 5], [20, 20, 17, 20], 9),
    "anchored_L4": ([AN, AN], [anchor_bits([1, 3]), anchor_bits([0])], [12, 8], 5),
    "anchored_L8_k4": ([AN], [anchor_bits([0, 3, 5, 7])], [40], 20),
    "anchored_mixed": ([C, AN, QU], [0, anchor_bits([2, 6]), 3], [20, 24, 12], 9),
}


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("case", list(ROWS))
def test_hidden_tiles_are_skipped(case, group):
    modes, mode_args, q_lens, P = ROWS[case]
    args = case_args(Case(case, modes, mode_args, q_lens, max(q_lens)), P, group=group, D=16)
    cfg = dict(CFG, BLOCK_M=16 * group)
    tiles = key_tiles(args, cfg)
    lo, hi = tile_bounds(args, cfg, group)
    assert lo <= tiles <= hi, f"{tiles} key tiles processed; a tile-skipping kernel needs {lo}..{hi}"


def test_quadratic_work_ratio_follows_visible_pairs():
    """GPU tiles (128 x 64), QUADRATIC(8) over a committed cache: work relative to CAUSAL
    over the same rows within 1.3x of the visible-pair ratio (the issue's target in work
    terms; bench/NOTES.md has L 16/32 and the empty-cache case that misses it)."""
    r = quadratic_vs_causal(8, 1024)
    assert r["ratio"] <= 1.3, r


def test_anchored_work_ratio_follows_visible_pairs():
    """GPU tiles, ANCHORED_QUADRATIC(16, 4 anchors) over a committed cache: work relative
    to CAUSAL over the same 80 rows within 1.3x of the visible-pair ratio (bench/NOTES.md,
    pruned quadratic: 1.01-1.06 at P 1k-4k)."""
    from bench.attention_work import anchored_vs_causal

    r = anchored_vs_causal(16, 4, 1024)
    assert r["rows"] == 80 and r["ratio"] <= 1.3, r
