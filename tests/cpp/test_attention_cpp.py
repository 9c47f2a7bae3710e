"""Attention of the "cpp" backend: the CUDA kernel's tiling (csrc/attention/attn_tiling.cuh:
GQA-packed 64-row tiles, 64-key blocks, split partition of [0, P), per-mode new-key
ranges, online softmax, LSE merge) run on the CPU with scalar loops in place of the MMAs.

Float results: error against the fp64 reference <= 2x the error of PyTorch computing the
same attention in the input dtype (fp32, fp16, bf16), outputs and split workspaces
pre-filled with NaN. Layout changes (paged vs contiguous, page 1/16/64) and write_kv are
checked bit-exact, with untouched cache slots and lengths unchanged."""
import math

import pytest
import torch

import tridiff.cpp as cpp
import tridiff.ops as ops
from tests.cpp.support import CPP
from tridiff.reference.slots import capacity, logical_view
from tridiff.reference.attention import visibility

LOW = [torch.float32, torch.float16, torch.bfloat16]
# (mode, mode_arg, P, n): decode, verify, diffusion block, QUADRATIC cut by tile edges,
# prefill+draft with the block boundary inside a tile, and an idle row.
MIXED = [(0, 0, 300, 1), (0, 0, 70, 32), (1, 0, 129, 32), (2, 5, 11, 30), (3, 9, 64, 40), (0, 0, 5, 0)]


def make(rows, Hq, Hkv, D, dtype, seed=0, Tq=None, extra=5):
    g = torch.Generator().manual_seed(seed)
    B = len(rows)
    Tq = Tq or max(max(n for *_, n in rows), 1)
    Tmax = max(P + n for _, _, P, n in rows) + extra
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    t = dict(q=r(B, Tq, Hq, D), k=r(B, Tq, Hkv, D), v=r(B, Tq, Hkv, D), k_cache=r(B, Tmax, Hkv, D),
             v_cache=r(B, Tmax, Hkv, D))
    t["modes"] = torch.tensor([m for m, *_ in rows], dtype=torch.int8)
    t["mode_args"] = torch.tensor([a for _, a, _, _ in rows], dtype=torch.int32)
    t["cache_lens"] = torch.tensor([p for _, _, p, _ in rows], dtype=torch.int32)
    t["q_lens"] = torch.tensor([n for *_, n in rows], dtype=torch.int32)
    return t


def args(t, block_table=None, write_kv=False, scale=None):
    D = t["q"].shape[-1]
    return (t["q"], t["k"], t["v"], t["k_cache"], t["v_cache"], t["cache_lens"], t["modes"], t["mode_args"],
            t["q_lens"], block_table, scale or D ** -0.5, write_kv)


def truth(t, scale=None):
    """fp64 reference."""
    a = list(args(t, scale=scale))
    for i in range(5):
        a[i] = a[i].double()
    return ops.attention(*a[:7], mode_args=a[7], q_lens=a[8], softmax_scale=a[10], backend="torch").double()


def same_dtype_torch(t, scale=None):
    """PyTorch computing the attention in the input dtype (scores, softmax, P V)."""
    q, k, v, kc, vc, P, modes, margs, n, bt, scale, _ = args(t, scale=scale)
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    keys = torch.cat([logical_view(kc, bt), k], 1)
    vals = torch.cat([logical_view(vc, bt), v], 1)
    mask = visibility(P, modes, margs, n, Tq, capacity(kc, bt))
    qg = q.reshape(B, Tq, Hkv, Hq // Hkv, D)
    s = torch.einsum("bqhgd,bkhd->bhgqk", qg, keys) * scale
    s = s.masked_fill(~mask[:, None, None], float("-inf"))
    has = mask.any(-1)[:, None, None, :, None]
    p = torch.where(has, torch.softmax(s.masked_fill(~has, 0.0), -1), torch.zeros_like(s))
    return torch.einsum("bhgqk,bkhd->bqhgd", p, vals).reshape(B, Tq, Hq, D)


def run(t, block_table=None, write_kv=False, num_splits=None, scale=None):
    """cpp attention into a NaN-filled output, NaN-filled split workspace."""
    out = torch.full_like(t["q"], float("nan"))
    return cpp.attention_launch(*args(t, block_table, write_kv, scale), num_splits=num_splits, out=out,
                                workspace_fill=float("nan"))


def check_error(got, t, scale=None):
    want = truth(t, scale)
    assert not torch.isnan(got).any()
    err = (got.double() - want).abs().max().item()
    own = (same_dtype_torch(t, scale).double() - want).abs().max().item()
    assert err <= 2 * own, f"error {err:.3e} > 2 x torch's same-dtype error {own:.3e}"
    for b, n in enumerate(t["q_lens"].tolist()):  # rows past q_len are exactly zero
        assert torch.count_nonzero(got[b, n:]) == 0


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", LOW, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("splits", [1, 3])
def test_mixed_modes_vs_reference(backend, dtype, D, splits):
    """Every mode in one call, ragged q_lens, GQA group 4 (16 positions per tile)."""
    t = make(MIXED, 8, 2, D, dtype, seed=D + splits)
    check_error(run(t, num_splits=splits), t)


# QUADRATIC key walks (d slots strided, own sub-blocks without their d slots): tiles that
# end on a d slot (L=8 with 64-position tiles, L=4 with 16), own ranges over two key
# blocks (L=10), d slots past one block (L=70: 71 d slots), a committed cache beside.
QUAD_WALKS = {"L8_gqa1": (8, 0, 1), "L10_gqa1": (10, 3, 1), "L4_gqa4": (4, 9, 4), "L70_gqa2": (70, 0, 2)}


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("case", list(QUAD_WALKS))
def test_quadratic_key_walks(backend, case):
    L, P, group = QUAD_WALKS[case]
    t = make([(2, L, P, L * (L + 1))], 2 * group, 2, 16, torch.float64, seed=L)
    got = run(t, num_splits=1)
    assert (got - truth(t)).abs().max().item() < 1e-12


def anchors(*a) -> int:
    """ANCHORED_QUADRATIC mode_args of anchor set a: bit a set, as the int32 of those bits."""
    bits = sum(1 << x for x in a)
    return bits - (1 << 32) if bits >= 1 << 31 else bits


AN = 4
# ANCHORED_QUADRATIC key walks (clean keys up to max(last clean row, a_{g_hi}), then the
# tile's own groups): tiles cutting groups (L=32, 64 positions), many groups per tile
# (L=4, 16 positions at group 4), every anchor (L=16), bit 31 (L=32), a committed cache.
ANCHOR_WALKS = {
    "L32_k4_gqa1": ([(AN, anchors(3, 9, 20, 31), 5, 160)], 1),
    "L16_k16_gqa2": ([(AN, anchors(*range(16)), 70, 272)], 2),
    "L8_k2_gqa4": ([(AN, anchors(0, 6), 0, 24), (AN, anchors(7), 3, 16)], 4),
    "L4_k4_gqa4": ([(AN, anchors(0, 1, 2, 3), 9, 20)], 4),
    "L32_bit31_gqa1": ([(AN, anchors(31), 1, 64), (AN, anchors(2), 4, 0)], 1),
}


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("case", list(ANCHOR_WALKS))
def test_anchored_key_walks(backend, case):
    rows, group = ANCHOR_WALKS[case]
    t = make(rows, 2 * group, 2, 16, torch.float64, seed=len(case))
    for splits in (1, 3):
        got = run(t, num_splits=splits)
        assert (got - truth(t)).abs().max().item() < 1e-12


MIXED_AN = [(AN, anchors(1, 4), 40, 24), (0, 0, 100, 1), (AN, anchors(0, 2, 7, 8, 15), 7, 96), (2, 3, 9, 12),
            (AN, anchors(5), 3, 0), (3, 8, 20, 30)]


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", LOW, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("splits", [1, 3])
def test_anchored_mixed_vs_reference(backend, dtype, splits):
    """Anchored rows with different masks beside other modes and an idle anchored row."""
    t = make(MIXED_AN, 8, 2, 64, dtype, seed=splits)
    check_error(run(t, num_splits=splits), t)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("L", [4, 8, 16])
def test_anchored_all_anchors_is_quadratic_permuted(backend, L):
    n = L * (L + 1)
    perm = torch.tensor([a if b == 0 else L + a * L + b - 1 for a in range(L) for b in range(L + 1)])
    quad = make([(2, L, 30, n), (2, L, 0, n)], 8, 2, 32, torch.float64, seed=L)
    anch = dict(quad)
    for key in ("q", "k", "v"):
        anch[key] = torch.full_like(quad[key], float("nan"))
        anch[key][:, perm] = quad[key]
    anch["modes"] = torch.full_like(quad["modes"], AN)
    anch["mode_args"] = torch.full_like(quad["mode_args"], anchors(*range(L)))
    got = run(anch)
    assert torch.allclose(got[:, perm], run(quad), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("page", [1, 16])
def test_anchored_paged_and_write_kv_bit_exact(backend, page):
    """Paged output == contiguous output bit for bit; write_kv puts all n rows at P.. ."""
    t = make(MIXED_AN, 8, 2, 64, torch.bfloat16, seed=page, extra=0)
    want = run(t, num_splits=2)
    p = dict(t)
    p["k_cache"], table = to_paged(t["k_cache"], page, torch.Generator().manual_seed(page))
    p["v_cache"], _ = to_paged(t["v_cache"], page, torch.Generator().manual_seed(page))
    k0, v0 = p["k_cache"].clone(), p["v_cache"].clone()
    assert torch.equal(run(p, block_table=table, num_splits=2), want)
    assert torch.equal(run(p, block_table=table, write_kv=True, num_splits=2), want)
    for b, (_, _, P, n) in enumerate(MIXED_AN):
        for i in range(n):
            pos = P + i
            idx = (int(table[b, pos // page]), pos % page)
            k0[idx], v0[idx] = t["k"][b, i], t["v"][b, i]
    assert torch.equal(p["k_cache"], k0) and torch.equal(p["v_cache"], v0)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (6, 2), (64, 1)], ids=["gqa1", "gqa3", "gqa64"])
def test_group_sizes(backend, Hq, Hkv):
    """group 1 (64 positions per tile), a group not dividing 64 (21 positions, one idle tile
    row), the largest group (one position per tile)."""
    rows = [(0, 0, 40, 70), (3, 20, 3, 45), (2, 3, 100, 12)]
    t = make(rows, Hq, Hkv, 32, torch.float32, seed=Hq)
    check_error(run(t), t)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("splits", [2, 5, 17])
def test_forced_splits_fp64_agree_with_one_split(backend, splits):
    """Split partition + LSE merge change only rounding: fp64 results agree to 1e-12, and
    rows whose committed length is shorter than the split count (empty splits) merge right."""
    rows = [(0, 0, 1000, 3), (1, 0, 3, 4), (0, 0, 0, 2), (2, 1, 200, 2)]
    t = make(rows, 8, 2, 64, torch.float64, seed=splits)
    one = run(t, num_splits=1)
    many = run(t, num_splits=splits)
    assert (one - truth(t)).abs().max().item() < 1e-12
    assert (many - one).abs().max().item() < 1e-12


@pytest.mark.parametrize("backend", CPP)
def test_long_cache_decode_and_verify(backend):
    """Decode (1 row) and a 32-token verify block over a 3000-token cache, bf16, default splits."""
    rows = [(0, 0, 3000, 1), (0, 0, 2500, 32)]
    t = make(rows, 8, 2, 128, torch.bfloat16, seed=5)
    check_error(run(t), t)


@pytest.mark.parametrize("backend", CPP)
def test_softmax_scale(backend):
    t = make([(0, 0, 90, 7), (1, 0, 0, 7)], 4, 2, 32, torch.float32, seed=3)
    check_error(run(t, scale=0.71), t, scale=0.71)


def to_paged(cache, page, g):
    """Scatter a contiguous cache into shuffled pages; (pages, block_table)."""
    B, Tmax, H, D = cache.shape
    per = -(-Tmax // page)
    perm = torch.randperm(B * per + 2, generator=g)
    pages = torch.randn(B * per + 2, page, H, D, generator=g, dtype=torch.float64).to(cache.dtype)
    table = perm[: B * per].view(B, per).to(torch.int32)
    for b in range(B):
        for c in range(per):
            chunk = cache[b, c * page:(c + 1) * page]
            pages[table[b, c], : chunk.shape[0]] = chunk
    return pages, table


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("page", [1, 16, 64])
@pytest.mark.parametrize("splits", [1, 4])
def test_paged_is_bit_identical_to_contiguous(backend, page, splits):
    t = make(MIXED, 8, 2, 64, torch.bfloat16, seed=page)
    want = run(t, num_splits=splits)
    p = dict(t)
    p["k_cache"], table = to_paged(t["k_cache"], page, torch.Generator().manual_seed(page))
    p["v_cache"], _ = to_paged(t["v_cache"], page, torch.Generator().manual_seed(page))
    got = run(p, block_table=table, num_splits=splits)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged16"])
def test_write_kv_bit_exact(backend, paged):
    """k/v[b, :n] land in slots P.. bit-exact, every other slot and the lengths untouched,
    and the output equals the write_kv=False output exactly."""
    rows = [(0, 0, 0, 40), (1, 0, 77, 0), (3, 6, 150, 33), (2, 4, 17, 20)]
    t = make(rows, 8, 2, 64, torch.float16, seed=11, extra=0)
    table = None
    if paged:
        t["k_cache"], table = to_paged(t["k_cache"], 16, torch.Generator().manual_seed(2))
        t["v_cache"], _ = to_paged(t["v_cache"], 16, torch.Generator().manual_seed(2))
    k0, v0, P0 = t["k_cache"].clone(), t["v_cache"].clone(), t["cache_lens"].clone()
    plain = run(t, block_table=table, num_splits=2)
    assert torch.equal(t["k_cache"], k0) and torch.equal(t["v_cache"], v0)
    got = run(t, block_table=table, write_kv=True, num_splits=2)
    assert torch.equal(got, plain)
    want_k, want_v = k0.clone(), v0.clone()
    for b, (_, _, P, n) in enumerate(rows):
        for i in range(n):
            pos = P + i
            idx = (int(table[b, pos // 16]), pos % 16) if paged else (b, pos)
            want_k[idx], want_v[idx] = t["k"][b, i], t["v"][b, i]
    assert torch.equal(t["k_cache"], want_k) and torch.equal(t["v_cache"], want_v)
    assert torch.equal(t["cache_lens"], P0)


@pytest.mark.parametrize("backend", CPP)
def test_public_op_dispatches_to_cpp(backend):
    """tridiff.ops.attention(backend="cpp") runs this code (fp32, no forced knobs)."""
    t = make([(0, 0, 33, 9), (2, 2, 4, 6)], 4, 2, 16, torch.float32, seed=9)
    got = ops.attention(t["q"], t["k"], t["v"], t["k_cache"], t["v_cache"], t["cache_lens"], t["modes"],
                        mode_args=t["mode_args"], q_lens=t["q_lens"], backend=backend)
    check_error(got, t)


@pytest.mark.parametrize("backend", CPP)
def test_unsupported_inputs_give_reasons(backend):
    t = make([(0, 0, 3, 2)], 4, 2, 24, torch.float32)
    assert "head_dim 24" in cpp.supports_attention(*args(t))
    t = make([(0, 0, 3, 2)], 130, 2, 16, torch.float32)
    assert "group" in cpp.supports_attention(*args(t))
    t = make([(0, 0, 3, 2)], 4, 2, 16, torch.float64)
    assert cpp.supports_attention(*args(t)) is None


@pytest.mark.parametrize("backend", CPP)
def test_split_count_policy(backend):
    """Split only when the tiles cannot fill the machine, each split >= 256 keys, <= 128."""
    import tridiff._ext as ext

    lib = ext.load("cpp")
    assert lib.attention_num_splits(132, 32768, 132) == 1
    assert lib.attention_num_splits(8, 32768, 132) == math.ceil(132 / 8)
    assert lib.attention_num_splits(1, 600, 132) == 2
    assert lib.attention_num_splits(1, 10**6, 1000) == 128
    assert lib.attention_num_splits(4, 100, 132) == 1
