"""Triton attention kernel vs the torch reference computed in float64.

On CPU the kernels run under TRITON_INTERPRET=1 (set in tests/conftest.py) with tiny
shapes in fp32/fp16 (the interpreter's bf16 arithmetic is wrong). On a GPU the same
tests run at model-like sizes (head_dim 128, 8 KV heads, caches scaled x100) in
bf16/fp16, plus the GPU-only cases at the end.
Error rule (FlashAttention's): max |kernel - ref64| <= 2 x max |ref_same_dtype - ref64|
+ a small atol. Outputs and the split-KV workspace are pre-filled with NaN.
"""
import importlib

import pytest
import torch

from tests.triton.support import CUDA, DEV, NEEDS_CUDA, TRITON
from tridiff import Mode, ops
from tridiff._dispatch import BackendUnavailable
from tridiff.ops.attention import normalize_attention_args
from tridiff.triton import attention as ta

ref = importlib.import_module("tridiff.reference.attention")  # the package re-exports the function

C, BI, QU, CB = int(Mode.CAUSAL), int(Mode.BIDIR_BLOCK), int(Mode.QUADRATIC), int(Mode.CAUSAL_THEN_BIDIR)
AN = int(Mode.ANCHORED_QUADRATIC)
DTYPES = [torch.bfloat16, torch.float16] if CUDA else [torch.float32, torch.float16]
D0 = 128 if CUDA else 64           # head_dim of most cases
HKV = 8 if CUDA else 2             # KV heads where a case does not fix them
PSCALE = 100 if CUDA else 1        # committed lengths are multiplied by this
# Guards only the degenerate case of an (almost) exact torch result; measured kernel/torch
# error ratios on CPU are 0.4-1.05 (the output rounding dominates both).
ATOL = {torch.float32: 1e-7, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def anchors(*a) -> int:
    """ANCHORED_QUADRATIC mode_args of anchor set a: bit a set, as the int32 of those bits."""
    bits = sum(1 << x for x in a)
    return bits - (1 << 32) if bits >= 1 << 31 else bits


def make_args(rows, dtype, Hq_per_kv=2, Hkv=HKV, D=D0, page=None, Tq=None, write_kv=False, seed=0):
    """rows: (mode, mode_arg, P, n) per sequence; P is scaled by PSCALE. Returns the
    normalised positional argument tuple. Paged: shuffled pages, unused table entries -1."""
    g = torch.Generator().manual_seed(seed)
    rows = [(m, a, P * PSCALE, n) for m, a, P, n in rows]
    B = len(rows)
    Tq = Tq or max(n for *_, n in rows)
    Tmax = max(P + n for _, _, P, n in rows) + 3
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).to(DEV)  # noqa: E731
    q, k, v = r(B, Tq, Hq_per_kv * Hkv, D), r(B, Tq, Hkv, D), r(B, Tq, Hkv, D)
    table = None
    if page is None:
        kc, vc = r(B, Tmax, Hkv, D), r(B, Tmax, Hkv, D)
    else:
        max_pages = -(-Tmax // page)
        num_pages = B * max_pages + 2  # two spare pages nobody owns
        kc, vc = r(num_pages, page, Hkv, D), r(num_pages, page, Hkv, D)
        table = torch.randperm(num_pages, generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
        for b, (_, _, P, n) in enumerate(rows):
            table[b, -(-(P + n) // page):] = -1  # pages the call must never touch
        table = table.to(DEV)
    t = lambda vals, dt: torch.tensor(vals, dtype=dt, device=DEV)  # noqa: E731
    return normalize_attention_args(
        q, k, v, kc, vc, t([x[2] for x in rows], torch.int32), t([x[0] for x in rows], torch.int8),
        t([x[1] for x in rows], torch.int32), t([x[3] for x in rows], torch.int32), table, None, write_kv)


def run_triton(args, **kw):
    out = torch.full_like(args[0], float("nan"))
    got = ta.launch(*args, out=out, workspace_fill=float("nan"), **kw)
    assert got is out
    return out


def reference(args, dtype):
    """The torch reference on copies converted to `dtype`, without writing the cache."""
    conv = [x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in args]
    conv[11] = False
    return ref.attention(*conv)


def check_output(out, args):
    dtype = args[0].dtype
    want = reference(args, torch.float64)
    same = reference(args, dtype)
    assert not torch.isnan(out).any(), "unwritten (NaN) output elements"
    err = (out.double() - want).abs().max().item()
    err_torch = (same.double() - want).abs().max().item()
    assert err <= 2 * err_torch + ATOL[dtype], f"kernel error {err} vs torch {dtype} error {err_torch}"
    q_lens = args[8].tolist()
    for b, n in enumerate(q_lens):
        assert torch.count_nonzero(out[b, n:]) == 0, f"rows past q_len of sequence {b} must be 0"


# ---- every mode, awkward shapes ----------------------------------------------------------------

MODE_ROWS = {
    "causal": [(C, 0, 11, 6), (C, 0, 0, 3)],
    "bidir": [(BI, 0, 11, 6), (BI, 0, 0, 1)],
    "quadratic_L2": [(QU, 2, 11, 6), (QU, 2, 0, 6)],
    "causal_then_bidir": [(CB, 3, 11, 6), (CB, 2, 0, 4)],
    "anchored": [(AN, anchors(1), 11, 6), (AN, anchors(0, 1), 0, 6)],
}


@TRITON
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", list(MODE_ROWS))
def test_each_mode(backend, mode, dtype):
    args = make_args(MODE_ROWS[mode], dtype, Tq=7)  # Tq past every q_len: padded rows
    check_output(run_triton(args), args)


TILE_CASES = {  # rows, GQA group, BLOCK_M: query tiles (BLOCK_M // group positions) that cut blocks
    "quad-L3-gqa4-m32": ([(QU, 3, 17, 12), (QU, 3, 0, 12)], 4, 32),
    "quad-L2-gqa4-m16": ([(QU, 2, 17, 6), (QU, 2, 0, 6)], 4, 16),   # tiles end mid sub-block
    "quad-L3-gqa1-m16": ([(QU, 3, 17, 12), (QU, 3, 0, 12)], 1, 16),
    # a tile whose last row is the first bidirectional row n-K (sees everything)
    "ctb-gqa4-m16": ([(CB, 3, 5, 6), (CB, 5, 0, 9), (C, 0, 2, 9)], 4, 16),
    # ANCHORED_QUADRATIC: one group per tile (L=4, 4 positions), tiles cutting groups
    # (L=3), tiles of two groups and of clean + mask rows (L=8, 16 positions)
    "anc-L4-gqa4-m16": ([(AN, anchors(0, 2, 3), 17, 16), (AN, anchors(1, 3), 0, 12)], 4, 16),
    "anc-L3-gqa4-m16": ([(AN, anchors(0, 2), 17, 9), (AN, anchors(1), 0, 6)], 4, 16),
    "anc-L8-gqa1-m16": ([(AN, anchors(1, 2, 5, 7), 17, 40), (AN, anchors(6), 0, 16)], 1, 16),
}


@TRITON
@pytest.mark.parametrize("case", list(TILE_CASES))
def test_query_tiles_cut_blocks(backend, case):
    rows, group, block_m = TILE_CASES[case]
    args = make_args(rows, DTYPES[0], Hq_per_kv=group, Hkv=1)
    cfg = dict(BLOCK_M=block_m, BLOCK_N=16, num_warps=4, num_stages=2 if CUDA else 1)
    check_output(run_triton(args, config=cfg), args)


ANCHOR_GRID = sorted({(L, min(k, L)) for L in (4, 8, 16) for k in (1, 2, 4, L)})


@TRITON
@pytest.mark.parametrize("L,k", ANCHOR_GRID, ids=[f"L{L}-k{k}" for L, k in ANCHOR_GRID])
def test_anchored_quadratic(backend, L, k):
    """k anchors spread over 0..L-1 (the last one at L-1), beside an idle anchored row."""
    chosen = sorted({(i * L) // k for i in range(k)} | {L - 1})[-k:]
    args = make_args([(AN, anchors(*chosen), 9, L * (k + 1)), (AN, anchors(0), 3, 0)], DTYPES[0])
    check_output(run_triton(args), args)


@TRITON
def test_anchored_bit31(backend):
    """L = 32 with anchor 31: the mask is a negative int32."""
    args = make_args([(AN, anchors(0, 31), 4, 96)], DTYPES[0], Hq_per_kv=1, Hkv=1)
    assert int(args[7][0]) < 0
    check_output(run_triton(args), args)


@TRITON
def test_anchored_all_anchors_is_quadratic_permuted(backend):
    """Anchors {0..L-1} compute QUADRATIC(L) with rows and keys in clean-first order."""
    L = 4
    quad = make_args([(QU, L, 7, L * (L + 1)), (QU, L, 0, L * (L + 1))], DTYPES[0])
    perm = torch.tensor([a if b == 0 else L + a * L + b - 1 for a in range(L) for b in range(L + 1)], device=DEV)
    moved = []
    for x in quad[:3]:
        y = torch.full_like(x, float("nan"))
        y[:, perm] = x
        moved.append(y)
    anch = normalize_attention_args(*moved, *quad[3:6], torch.full_like(quad[6], AN),
                                    torch.full_like(quad[7], anchors(*range(L))), *quad[8:])
    want = run_triton(quad)
    got = run_triton(anch)
    check_output(got, anch)
    tol = 1e-5 if DTYPES[0] == torch.float32 else 2e-2
    assert torch.allclose(got[:, perm].float(), want.float(), atol=tol, rtol=0)


# ---- mixed batches, layouts ----------------------------------------------------------------------

MIXED = [(C, 0, 20, 1), (QU, 2, 0, 6), (CB, 2, 9, 5)]          # AR decode beside blocks
MIXED2 = [(BI, 0, 7, 6), (C, 0, 0, 6), (QU, 1, 30, 2)]
MIXED_AN = [(AN, anchors(0, 3), 20, 12), (C, 0, 0, 5), (AN, anchors(2), 9, 6), (AN, anchors(1), 3, 0)]


@TRITON
@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "page16"])
@pytest.mark.parametrize("splits", [1, 3])
def test_anchored_mixed_layouts_splits(backend, page, splits):
    """Anchored rows with different masks beside a causal row and an idle anchored row;
    paged and split-KV."""
    args = make_args(MIXED_AN, DTYPES[0], Hq_per_kv=2, page=page)
    check_output(run_triton(args, num_splits=splits), args)


@TRITON
@pytest.mark.parametrize("page", [None, 1, 16, 64], ids=["contiguous", "page1", "page16", "page64"])
@pytest.mark.parametrize("rows", [MIXED, MIXED2], ids=["mixed1", "mixed2"])
def test_mixed_modes_one_launch(backend, rows, page):
    args = make_args(rows, DTYPES[0], Hq_per_kv=4, page=page)
    check_output(run_triton(args), args)


@TRITON
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_half_precision(backend, dtype):
    args = make_args(MIXED, dtype, Hq_per_kv=4, page=16)
    check_output(run_triton(args), args)


@TRITON
@pytest.mark.parametrize("group,D", [(8, D0), (1, 128), (2, 16), (3, D0)],
                         ids=["gqa8", "gqa1-d128", "gqa2-d16", "gqa3-padded-heads"])
def test_gqa_and_head_dim(backend, group, D):
    args = make_args([(C, 0, 5, 3), (CB, 2, 9, 4), (QU, 1, 2, 2)], DTYPES[0], Hq_per_kv=group, Hkv=1, D=D)
    check_output(run_triton(args), args)


@TRITON
def test_strided_qkv_views(backend):
    """q/k/v as views into one fused projection output [B, Tq, (Hq + 2 Hkv) * D], and
    cache_lens / q_lens as strided columns of one [B, 2] tensor."""
    args = make_args(MIXED, DTYPES[0], Hq_per_kv=2)
    q, k, v = args[:3]
    Hq, Hkv = q.shape[2], k.shape[2]
    fused = torch.cat([q, k, v], dim=2)  # [B, Tq, Hq + 2 Hkv, D]
    views = (fused[:, :, :Hq], fused[:, :, Hq:Hq + Hkv], fused[:, :, Hq + Hkv:])
    lens = torch.stack([args[5], args[8]], dim=1)  # [B, 2]
    assert not views[0].is_contiguous() and lens[:, 0].stride(0) == 2
    strided = views + args[3:5] + (lens[:, 0],) + args[6:8] + (lens[:, 1],) + args[9:]
    assert torch.equal(run_triton(strided), run_triton(args))
    check_output(run_triton(strided), strided)


# ---- split-KV (flash-decoding) -----------------------------------------------------------------------

@TRITON
@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "page16"])
@pytest.mark.parametrize("splits", [3, 5])
def test_split_kv_matches_single_pass(backend, page, splits):
    """Forced splits: chunks sized from each row's P; some splits of some rows empty
    (P=0 row, P=33 with 5 splits), the new tokens in the last split only."""
    rows = [(C, 0, 40, 1), (QU, 2, 33, 6), (BI, 0, 0, 4)]
    args = make_args(rows, DTYPES[0], Hq_per_kv=2, page=page)
    one = run_triton(args, num_splits=1)
    split = run_triton(args, num_splits=splits)
    check_output(one, args)
    check_output(split, args)


@TRITON
def test_auto_split_path(backend):
    """A single decode row over a long cache: the launcher's own choice splits the cache."""
    args = make_args([(C, 0, 600, 1)], DTYPES[0], Hq_per_kv=4, Hkv=1)
    capacity = args[3].shape[1]
    block_m = ta.tile_config(args[0].shape[-1], 4, 4, args[0].dtype, CUDA)["BLOCK_M"]
    sms = ta._sm_count(torch.cuda.current_device()) if CUDA else ta.H100_SMS
    assert ta.num_splits_for(1, capacity, sms, block_m) > 1
    check_output(run_triton(args), args)


@TRITON
def test_split_choice_policy(backend):
    """Split only when the grid cannot fill the GPU; keep chunks big enough."""
    sms = 132
    # verify block: B=1, Hkv=8, one 128-row tile per KV head, cache 4096 + 32
    s = ta.num_splits_for(8, 4128, sms, 128)
    assert 1 < s and 8 * s <= sms and 4128 // s >= 4 * 128
    assert ta.num_splits_for(64 * 8, 4128, sms, 16) == 1    # batched decode fills the GPU
    assert ta.num_splits_for(8, 200, sms, 16) == 1          # short cache: never split
    assert ta.num_splits_for(1, 10 ** 6, sms, 16) <= ta.MAX_SPLITS


# ---- write_kv --------------------------------------------------------------------------------------

@TRITON
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("page", [None, 1, 16], ids=["contiguous", "page1", "page16"])
def test_write_kv_bit_exact(backend, page, splits):
    rows = [(C, 0, 0, 5), (BI, 0, 9, 0), (QU, 1, 27, 2), (CB, 1, 3, 4)]  # one row writes nothing
    args = make_args(rows, DTYPES[0], page=page, write_kv=True)
    q, k, v, kc, vc, P, modes, mode_args, q_lens, table = args[:10]
    k0, v0, P0 = kc.clone(), vc.clone(), P.clone()
    out = run_triton(args, num_splits=splits)
    want_k, want_v = k0.clone(), v0.clone()
    for b in range(len(rows)):
        for i in range(int(q_lens[b])):
            t = int(P[b]) + i
            idx = (int(table[b, t // page]), t % page) if page else (b, t)
            want_k[idx], want_v[idx] = k[b, i], v[b, i]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v), "cache writes wrong or stray"
    assert torch.equal(P, P0), "write_kv must not advance the lengths"
    check_output(out, args)


@TRITON
@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "page16"])
def test_anchored_write_kv_bit_exact(backend, page):
    """All n = L*(k+1) new rows land at P..P+n-1."""
    args = make_args(MIXED_AN, DTYPES[0], page=page, write_kv=True)
    q, k, v, kc, vc, P, modes, mode_args, q_lens, table = args[:10]
    k0, v0 = kc.clone(), vc.clone()
    out = run_triton(args)
    want_k, want_v = k0.clone(), v0.clone()
    for b in range(len(MIXED_AN)):
        for i in range(int(q_lens[b])):
            t = int(P[b]) + i
            idx = (int(table[b, t // page]), t % page) if page else (b, t)
            want_k[idx], want_v[idx] = k[b, i], v[b, i]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v), "cache writes wrong or stray"
    check_output(out, args)


# ---- the public op and backend selection ---------------------------------------------------------

@TRITON
def test_public_op_runs_triton(backend):
    args = make_args(MIXED, DTYPES[0], Hq_per_kv=4)
    q, k, v, kc, vc, P, modes, mode_args, q_lens = args[:9]
    out = ops.attention(q, k, v, kc, vc, P, modes, mode_args=mode_args, q_lens=q_lens,
                        softmax_scale=0.2, backend=backend)
    args = args[:10] + (0.2, False)
    assert torch.equal(out, run_triton(args))
    check_output(out, args)


def _small(D=64, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    i32 = dict(dtype=torch.int32, device=device)
    return (r(1, 2, 2, D), r(1, 2, 1, D), r(1, 2, 1, D), r(1, 8, 1, D), r(1, 8, 1, D),
            torch.tensor([3], **i32), torch.tensor([0], dtype=torch.int8, device=device),
            torch.tensor([0], **i32), torch.tensor([2], **i32), None, D ** -0.5, False)


@TRITON
def test_supports_reasons(backend, monkeypatch):
    assert ta.supports_attention(*_small(device=DEV)) is None
    reason = ta.supports_attention(*_small(D=48, device=DEV))
    assert reason and "head_dim 48" in reason
    reason = ta.supports_attention(*_small(dtype=torch.float64, device=DEV))
    assert reason and "float64" in reason
    with pytest.raises(BackendUnavailable, match="head_dim 48"):
        ops.attention(*_small(D=48, device=DEV)[:7], backend=backend)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = ta.supports_attention(*_small(device="cpu"))
    assert reason and "CUDA" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = ta.supports_attention(*_small(dtype=torch.bfloat16, device="cpu"))
    assert reason and "interpreter" in reason


# ---- the compiled (non-interpreted) kernels, checked on CPU ---------------------------------
# tests/triton/test_compile_sm90.py compiles every tile config the launcher can pick for
# sm_90a (shared memory, spills), through the launcher itself.


# ---- GPU-only: the production shapes -----------------------------------------------------------------

@NEEDS_CUDA
@TRITON
@pytest.mark.parametrize("page", [None, 16, 64], ids=["contiguous", "page16", "page64"])
def test_gpu_verify_block_split_kv(backend, page):
    """32-row verify, Hq 32 / Hkv 8, D 128, cache 4096: the auto path picks split-KV."""
    args = make_args([(C, 0, 41, 32)], torch.bfloat16, Hq_per_kv=4, Hkv=8, D=128, page=page)
    assert ta.num_splits_for(8, args[3].shape[1] if page is None else args[9].shape[1] * page,
                             ta._sm_count(torch.cuda.current_device()), 128) > 1
    check_output(run_triton(args), args)


@NEEDS_CUDA
@TRITON
@pytest.mark.parametrize("D", [64, 128, 256])
def test_gpu_large_mixed_batch(backend, D):
    rows = [(C, 0, 30, 1), (QU, 16, 10, 272), (CB, 32, 0, 200), (BI, 0, 5, 32), (C, 0, 0, 272)]
    args = make_args(rows, torch.bfloat16, Hq_per_kv=4, Hkv=8, D=D, page=16, write_kv=True)
    check_output(run_triton(args), args)
