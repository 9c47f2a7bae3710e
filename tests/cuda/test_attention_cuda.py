"""Attention of the "cuda" backend (mma.sync kernel, csrc/attention) on verify/draft/decode
shapes: 32 new tokens per row, Hq 32 / Hkv 8, head_dim 128, bf16, caches of 4k-32k.

Float results: error against the fp64 reference <= 2x the error of PyTorch computing the
same attention in bf16 on the GPU; outputs and split workspaces pre-filled with NaN.
Paged vs contiguous and write_kv are checked bit-exact; one call is captured in a CUDA
graph and replayed on new inputs."""
import pytest
import torch

import tridiff.ops as ops
from tests.cuda.support import CUDA
from tridiff.reference.slots import capacity, logical_view
from tridiff.reference.attention import visibility

Hq, Hkv, D = 32, 8, 128


def make(rows, dtype=torch.bfloat16, seed=0, Tq=32, D=D, Tmax=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    B = len(rows)
    Tmax = Tmax or max(P + n for _, _, P, n in rows) + 8
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32).to(dtype)  # noqa: E731
    t = dict(q=r(B, Tq, Hq, D), k=r(B, Tq, Hkv, D), v=r(B, Tq, Hkv, D), k_cache=r(B, Tmax, Hkv, D),
             v_cache=r(B, Tmax, Hkv, D))
    dev = "cuda"
    t["modes"] = torch.tensor([m for m, *_ in rows], dtype=torch.int8, device=dev)
    t["mode_args"] = torch.tensor([a for _, a, _, _ in rows], dtype=torch.int32, device=dev)
    t["cache_lens"] = torch.tensor([p for _, _, p, _ in rows], dtype=torch.int32, device=dev)
    t["q_lens"] = torch.tensor([n for *_, n in rows], dtype=torch.int32, device=dev)
    return t


def args(t, block_table=None, write_kv=False):
    return (t["q"], t["k"], t["v"], t["k_cache"], t["v_cache"], t["cache_lens"], t["modes"], t["mode_args"],
            t["q_lens"], block_table, t["q"].shape[-1] ** -0.5, write_kv)


def truth(t):
    a = list(args(t))
    for i in range(5):
        a[i] = a[i].double()
    return ops.attention(*a[:7], mode_args=a[7], q_lens=a[8], backend="torch").double()


def same_dtype_torch(t):
    """PyTorch computing the attention in the input dtype (scores, softmax, P V)."""
    q, k, v, kc, vc, P, modes, margs, n, bt, scale, _ = args(t)
    B, Tq, _, _ = q.shape
    keys = torch.cat([logical_view(kc, bt), k], 1)
    vals = torch.cat([logical_view(vc, bt), v], 1)
    mask = visibility(P, modes, margs, n, Tq, capacity(kc, bt))
    qg = q.reshape(B, Tq, Hkv, Hq // Hkv, q.shape[-1])
    s = torch.einsum("bqhgd,bkhd->bhgqk", qg, keys) * scale
    s = s.masked_fill(~mask[:, None, None], float("-inf"))
    has = mask.any(-1)[:, None, None, :, None]
    p = torch.where(has, torch.softmax(s.masked_fill(~has, 0.0), -1), torch.zeros_like(s))
    return torch.einsum("bhgqk,bkhd->bqhgd", p, vals).reshape(q.shape)


def run(t, block_table=None, write_kv=False, num_splits=None):
    import tridiff.cuda as cuda

    out = torch.full_like(t["q"], float("nan"))
    return cuda.attention_launch(*args(t, block_table, write_kv), num_splits=num_splits, out=out,
                                 workspace_fill=float("nan"))


def check_error(got, t):
    want = truth(t)
    assert not torch.isnan(got).any()
    err = (got.double() - want).abs().max().item()
    own = (same_dtype_torch(t).double() - want).abs().max().item()
    assert err <= 2 * own, f"error {err:.3e} > 2 x torch's same-dtype error {own:.3e}"
    for b, n in enumerate(t["q_lens"].tolist()):
        assert torch.count_nonzero(got[b, n:]) == 0


# (mode, arg, P, n) per row: 32-token verify, draft block, QUADRATIC(4) = 20 tokens,
# prefill+draft with an 8-token block, decode.
ALL_MODES = [(0, 0, 4096, 32), (1, 0, 8000, 32), (2, 4, 5003, 20), (3, 8, 6000, 32)]


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("B,P", [(1, 32768), (4, 4096), (8, 16384)])
@pytest.mark.parametrize("mode", [0, 1, 3], ids=["causal", "bidir", "causal_then_bidir"])
def test_verify_shapes_each_mode(backend, B, P, mode):
    t = make([(mode, 8 if mode == 3 else 0, P - 7 * b, 32) for b in range(B)], seed=B)
    check_error(run(t), t)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("splits", [None, 1, 7])
def test_mixed_modes_ragged(backend, dtype, splits):
    rows = ALL_MODES + [(0, 0, 12000, 1), (0, 0, 300, 0), (2, 3, 0, 12), (1, 0, 0, 5)]
    t = make(rows, dtype=dtype, seed=3)
    check_error(run(t, num_splits=splits), t)


def anchors(*a) -> int:
    """ANCHORED_QUADRATIC mode_args of anchor set a: bit a set, as the int32 of those bits."""
    bits = sum(1 << x for x in a)
    return bits - (1 << 32) if bits >= 1 << 31 else bits


AN = 4
# ANCHORED_QUADRATIC rows (mode 4, L*(k+1) tokens) with k in {1, 2, 4, L} and L in {4, 8, 16},
# bit 31 (L = 32), an idle row, beside a verify block and a QUADRATIC(4) row.
ANCHORED = [(AN, anchors(3), 4000, 8), (AN, anchors(1, 6), 700, 24), (AN, anchors(0, 5, 9, 15), 9000, 80),
            (AN, anchors(*range(16)), 3000, 272), (AN, anchors(*range(4)), 0, 20), (AN, anchors(0, 31), 1200, 96),
            (AN, anchors(2), 50, 0), (0, 0, 4096, 32), (2, 4, 5003, 20)]


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("splits", [None, 1, 5])
def test_anchored_quadratic_mixed(backend, dtype, splits):
    t = make(ANCHORED, dtype=dtype, seed=17, Tq=272)
    check_error(run(t, num_splits=splits), t)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("L", [4, 8, 16])
def test_anchored_all_anchors_is_quadratic_permuted(backend, L):
    n = L * (L + 1)
    perm = torch.tensor([a if b == 0 else L + a * L + b - 1 for a in range(L) for b in range(L + 1)], device="cuda")
    quad = make([(2, L, 3000, n), (2, L, 0, n)], seed=L, Tq=n)
    anch = dict(quad)
    for key in ("q", "k", "v"):
        anch[key] = torch.full_like(quad[key], float("nan"))
        anch[key][:, perm] = quad[key]
    anch["modes"] = torch.full_like(quad["modes"], AN)
    anch["mode_args"] = torch.full_like(quad["mode_args"], anchors(*range(L)))
    got = run(anch)
    check_error(got, anch)
    assert torch.allclose(got[:, perm].float(), run(quad).float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("page", [1, 16])
def test_anchored_paged_and_write_kv_bit_exact(backend, page):
    rows = ANCHORED[:4] + ANCHORED[6:]
    t = make(rows, seed=page, Tq=272)
    want = run(t, num_splits=3)
    p = dict(t)
    p["k_cache"], table = to_paged(t["k_cache"], page, page)
    p["v_cache"], _ = to_paged(t["v_cache"], page, page)
    k0, v0 = p["k_cache"].clone(), p["v_cache"].clone()
    assert torch.equal(run(p, block_table=table, num_splits=3), want)
    assert torch.equal(run(p, block_table=table, write_kv=True, num_splits=3), want)
    for b, (_, _, P, n) in enumerate(rows):
        pos = torch.arange(P, P + n, device="cuda")
        idx = (table[b, pos // page].long(), pos % page)
        k0[idx], v0[idx] = t["k"][b, :n], t["v"][b, :n]
    torch.cuda.synchronize()
    assert torch.equal(p["k_cache"], k0) and torch.equal(p["v_cache"], v0)


@pytest.mark.parametrize("backend", CUDA)
def test_head_dim_64(backend):
    t = make(ALL_MODES, D=64, seed=4)
    check_error(run(t), t)


def to_paged(cache, page, seed):
    B, Tmax, H, Dh = cache.shape
    per = -(-Tmax // page)
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(B * per + 2, generator=g)[: B * per].view(B, per).to(torch.int32).cuda()
    pages = torch.zeros(B * per + 2, page, H, Dh, dtype=cache.dtype, device="cuda")
    padded = torch.zeros(B, per * page, H, Dh, dtype=cache.dtype, device="cuda")
    padded[:, :Tmax] = cache
    pages[table.long().view(-1)] = padded.view(B * per, page, H, Dh)
    return pages, table


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("page", [1, 16, 64])
def test_paged_bit_identical(backend, page):
    t = make(ALL_MODES, seed=page)
    for splits in (1, 5):
        want = run(t, num_splits=splits)
        p = dict(t)
        p["k_cache"], table = to_paged(t["k_cache"], page, page)
        p["v_cache"], _ = to_paged(t["v_cache"], page, page)
        assert torch.equal(run(p, block_table=table, num_splits=splits), want)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged16"])
def test_write_kv_bit_exact(backend, paged):
    rows = [(0, 0, 4000, 32), (1, 0, 77, 0), (3, 8, 1500, 32), (2, 4, 17, 20)]
    t = make(rows, seed=11, Tmax=4032)
    table = None
    if paged:
        t["k_cache"], table = to_paged(t["k_cache"], 16, 2)
        t["v_cache"], _ = to_paged(t["v_cache"], 16, 2)
    k0, v0, P0 = t["k_cache"].clone(), t["v_cache"].clone(), t["cache_lens"].clone()
    plain = run(t, block_table=table, num_splits=3)
    got = run(t, block_table=table, write_kv=True, num_splits=3)
    assert torch.equal(got, plain)
    want_k, want_v = k0.clone(), v0.clone()
    for b, (_, _, P, n) in enumerate(rows):
        pos = torch.arange(P, P + n, device="cuda")
        if paged:
            idx = (table[b, pos // 16].long(), pos % 16)
        else:
            idx = (torch.full_like(pos, b), pos)
        want_k[idx], want_v[idx] = t["k"][b, :n], t["v"][b, :n]
    torch.cuda.synchronize()
    assert torch.equal(t["k_cache"], want_k) and torch.equal(t["v_cache"], want_v)
    assert torch.equal(t["cache_lens"], P0)


@pytest.mark.parametrize("backend", CUDA)
def test_cuda_graph_capture_replay(backend):
    """One split-KV call captured in a graph; replays on new q/k/v/lengths/modes equal eager."""
    rows = [(0, 0, 6000, 32), (1, 0, 3000, 32)]
    t = make(rows, seed=21, Tmax=8192)
    a = args(t)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: load the extension, set the smem attribute
        ops.attention(*a[:7], mode_args=a[7], q_lens=a[8], backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.attention(*a[:7], mode_args=a[7], q_lens=a[8], backend=backend)
    for trial in range(3):
        new = make([(trial % 4, 8 if trial % 4 == 3 else 0, 5000 - 999 * trial, 32 - trial),
                    (1, 0, 100 * trial, 17)], seed=100 + trial, Tmax=8192)
        for key in ("q", "k", "v", "k_cache", "v_cache", "cache_lens", "modes", "mode_args", "q_lens"):
            t[key].copy_(new[key])
        graph.replay()
        eager = ops.attention(*args(new)[:7], mode_args=new["mode_args"], q_lens=new["q_lens"], backend=backend)
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        check_error(out.clone(), new)
