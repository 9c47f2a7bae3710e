"""Triton KV-cache kernels vs the torch reference: bit-exact, untouched memory untouched.

On CPU these run under TRITON_INTERPRET=1 with tiny shapes; fp32/fp16 only there
(the interpreter's bf16 arithmetic is unreliable), bf16 on CUDA.
"""
import pytest
import torch

from tests.triton.support import CUDA, DEV, I32, NEEDS_CUDA, TRITON
from tridiff import ops
from tridiff import reference as ref
from tridiff.triton import kv_cache as tk

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEV)


def paged_setup(B, page, max_pages, H, D, dtype, seed=0):
    """Pages shuffled across rows, two spare pages nobody owns (must stay untouched)."""
    g = torch.Generator().manual_seed(seed)
    num_pages = B * max_pages + 2
    table = torch.randperm(num_pages, generator=g)[: B * max_pages].view(B, max_pages).to(**I32)
    return rand(num_pages, page, H, D, dtype=dtype, seed=seed + 1), rand(num_pages, page, H, D, dtype=dtype,
                                                                         seed=seed + 2), table


def run_both(fn_name, mutated, *args):
    """Run the reference on clones of the mutated tensors and triton on the originals."""
    clones = [a.clone() if i in mutated else a for i, a in enumerate(args)]
    getattr(ref, fn_name)(*clones)
    getattr(tk, fn_name)(*args)
    for i in mutated:
        assert torch.equal(args[i], clones[i]), f"argument {i} differs: {(args[i] != clones[i]).nonzero()[:5].tolist()}"


# ---- write / append ------------------------------------------------------------------------

@TRITON
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["kv_write_", "kv_append_"])
def test_write_contiguous_ragged(backend, dtype, op):
    B, T, Tmax, H, D = 4, 5, 13, 2, 6  # odd head_dim; row 1 writes nothing, row 3 hits the end
    kc, vc = rand(B, Tmax, H, D, dtype=dtype, seed=1), rand(B, Tmax, H, D, dtype=dtype, seed=2)
    k, v = rand(B, T, H, D, dtype=dtype, seed=3), rand(B, T, H, D, dtype=dtype, seed=4)
    P = torch.tensor([0, 4, 7, 10], **I32)
    n = torch.tensor([5, 0, 2, 3], **I32)
    before_k = kc.clone()
    run_both(op, (0, 1, 4) if op == "kv_append_" else (0, 1), kc, vc, k, v, P, n, None)
    for b in range(B):  # explicit: only slots [P, P+n) changed
        p, c = int(P[b] - (n[b] if op == "kv_append_" else 0)), int(n[b])
        assert torch.equal(kc[b, p:p + c], k[b, :c])
        assert torch.equal(kc[b, :p], before_k[b, :p]) and torch.equal(kc[b, p + c:], before_k[b, p + c:])


@TRITON
def test_write_strided_inputs(backend):
    """k/v as views of a fused [B, T, 3, H, D] projection, cache as a layer slice."""
    B, T, Tmax, H, D = 2, 3, 8, 2, 4
    qkv = rand(B, T, 3, H, D, seed=5)
    k, v = qkv[:, :, 1], qkv[:, :, 2]
    cache = rand(2, 3, B, Tmax, H, D, seed=6)  # [k/v, layers, ...]
    kc, vc = cache[0, 1], cache[1, 1]
    P = torch.tensor([1, 5], **I32)
    n = torch.tensor([3, 2], **I32)
    want = cache.clone()
    ref.kv_write_(want[0, 1], want[1, 1], k, v, P, n, None)
    tk.kv_write_(kc, vc, k, v, P, n, None)
    assert torch.equal(cache, want)


@TRITON
@pytest.mark.parametrize("page", [1, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES[:2], ids=str)
def test_write_paged(backend, page, dtype):
    B, T, H, D = 3, 7, 1, 4
    max_pages = -(-80 // page)
    pk, pv, table = paged_setup(B, page, max_pages, H, D, dtype)
    k, v = rand(B, T, H, D, dtype=dtype, seed=7), rand(B, T, H, D, dtype=dtype, seed=8)
    P = torch.tensor([3, 15, 73], **I32)  # crosses page boundaries for every page size
    n = torch.tensor([7, 0, 7], **I32)
    run_both("kv_append_", (0, 1, 4), pk, pv, k, v, P, n, table)


@TRITON
def test_public_op_dispatches_to_triton(backend):
    B, T, Tmax, H, D = 2, 4, 9, 1, 8
    kc, vc = rand(B, Tmax, H, D, seed=9), rand(B, Tmax, H, D, seed=10)
    k, v = rand(B, T, H, D, seed=11), rand(B, T, H, D, seed=12)
    P = torch.tensor([2, 5], **I32)
    want_k, want_v, want_P = kc.clone(), vc.clone(), P.clone()
    ops.kv_append_(want_k, want_v, k, v, want_P, q_lens=torch.tensor([4, 3], **I32), backend="torch")
    ops.kv_append_(kc, vc, k, v, P, q_lens=torch.tensor([4, 3], **I32), backend="triton")
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v) and torch.equal(P, want_P)


# ---- commit / rollback ---------------------------------------------------------------------

@TRITON
def test_commit_rollback(backend):
    P = torch.tensor([3, 0, 9], **I32)
    run_both("kv_commit_", (0,), P, torch.tensor([2, 0, 5], **I32))
    assert P.tolist() == [5, 0, 14]
    run_both("kv_rollback_", (0,), P, torch.tensor([4, 0, 10], **I32))
    assert P.tolist() == [4, 0, 10]


# ---- compaction ----------------------------------------------------------------------------

def _src(B, n, span, seed):
    """Random sources in [0, span) with some -1 (keep) entries; overlap with destinations."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, span, (B, n), generator=g)
    src[torch.rand(B, n, generator=g) < 0.2] = -1
    return src.to(**I32)


@TRITON
@pytest.mark.parametrize("layers", [pytest.param(None, id="4d"), pytest.param(3, id="5d")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compact_contiguous(backend, layers, dtype):
    B, Tmax, H, D, n = 3, 24, 2, 4, 5
    lead = () if layers is None else (layers,)
    kc, vc = rand(*lead, B, Tmax, H, D, dtype=dtype, seed=13), rand(*lead, B, Tmax, H, D, dtype=dtype, seed=14)
    P = torch.tensor([0, 6, 12], **I32)
    src = _src(B, n, 12, seed=15)
    run_both("kv_compact_", (0, 1), kc, vc, P, src, None)


@TRITON
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_major", [False, True], ids=["dense", "head_major"])
def test_compact_paged_with_layers(backend, dtype, head_major):
    """[layers, num_pages, page, Hkv, D] + one block table (was refused): the reference moves
    every layer the same way; head-major pages seen through transpose(2, 3)."""
    layers, B, page, max_pages, H, D, n = 3, 2, 4, 3, 2, 4, 5
    _, _, table = paged_setup(B, page, max_pages, H, D, dtype, seed=40)
    N = B * max_pages + 2
    if head_major:
        kc = rand(layers, N, H, page, D, dtype=dtype, seed=41).transpose(2, 3)
        vc = rand(layers, N, H, page, D, dtype=dtype, seed=42).transpose(2, 3)
    else:
        kc, vc = rand(layers, N, page, H, D, dtype=dtype, seed=41), rand(layers, N, page, H, D, dtype=dtype, seed=42)
    P = torch.tensor([1, 6], **I32)
    src = _src(B, n, 6, seed=43)
    assert tk.supports_kv_compact_(kc, vc, P, src, table) is None
    run_both("kv_compact_", (0, 1), kc, vc, P, src, table)


@TRITON
def test_compact_quadratic_verify_slots(backend):
    L, B, H, D = 4, 2, 2, 4
    kc, vc = rand(2, B, 30, H, D, seed=16), rand(2, B, 30, H, D, seed=17)
    P = torch.tensor([3, 7], **I32)
    run_both("kv_compact_", (0, 1), kc, vc, P, ref.quadratic_verify_slots(L, B, device=DEV), None)


@TRITON
def test_compact_reverse_permutation(backend):
    """Every destination is another lane's source: any write-before-read shows."""
    B, n, H, D = 2, 8, 1, 4
    kc, vc = rand(B, 16, H, D, seed=18), rand(B, 16, H, D, seed=19)
    P = torch.tensor([0, 5], **I32)
    src = torch.arange(n - 1, -1, -1).expand(B, n).contiguous().to(**I32)
    run_both("kv_compact_", (0, 1), kc, vc, P, src, None)


@TRITON
def test_compact_two_phase_path(backend, monkeypatch):
    monkeypatch.setattr(tk, "FUSED_MAX_N", 2)  # force the gather/scatter launches
    B, n, H, D = 2, 6, 2, 4
    kc, vc = rand(3, B, 20, H, D, seed=20), rand(3, B, 20, H, D, seed=21)
    P = torch.tensor([1, 4], **I32)
    run_both("kv_compact_", (0, 1), kc, vc, P, _src(B, n, 10, seed=22), None)


@TRITON
@pytest.mark.parametrize("page", [1, 16, 64])
def test_compact_paged(backend, page):
    B, H, D, n = 2, 2, 4, 6
    max_pages = -(-96 // page)
    pk, pv, table = paged_setup(B, page, max_pages, H, D, torch.float32, seed=23)
    P = torch.tensor([13, 60], **I32)
    run_both("kv_compact_", (0, 1), pk, pv, P, _src(B, n, 30, seed=24), table)


# ---- page allocation ----------------------------------------------------------------------

def _pool(B, max_pages, N, held, seed):
    """A table whose rows hold prefixes of `held` pages and a free stack of the rest."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(N, generator=g).to(torch.int32)
    table = torch.full((B, max_pages), -1, dtype=torch.int32)
    used = 0
    for b, h in enumerate(held):
        table[b, :h] = perm[used:used + h]
        used += h
    free = torch.full((N,), -7, dtype=torch.int32)  # -7: stack slots above the top (garbage)
    free[: N - used] = perm[used:]
    return table.to(DEV), free.to(DEV), torch.tensor([N - used], **I32)


@TRITON
@pytest.mark.parametrize("page", [1, 16, 64])
def test_reserve_release(backend, page):
    B, max_pages, N = 5, 6, 40
    table, free, count = _pool(B, max_pages, N, held=[0, 2, 6, 1, 3], seed=page)
    target = torch.tensor([3 * page, page, 6 * page, 3 * page + 1, 0], **I32)  # needs 3,0,0,3,0
    run_both("paged_reserve_", (0, 1, 2), table, free, count, target, page)
    assert int(count) == N - 12 - 6
    keep = torch.tensor([page + 1, 0, 6 * page, 1, 2 * page], **I32)
    run_both("paged_release_", (0, 1, 2), table, free, count, keep, page)
    run_both("paged_reserve_", (0, 1, 2), table, free, count, torch.full((B,), 5 * page, **I32), page)


@TRITON
def test_reserve_release_wide_batch(backend):
    """More rows and columns than one column chunk: the prefix sums span every row."""
    B, max_pages, N, page = 9, 7, 80, 4
    held = [(3 * b) % 8 for b in range(B)]
    held = [min(h, max_pages) for h in held]
    table, free, count = _pool(B, max_pages, N, held=held, seed=3)
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, max_pages * page + 1, (B,), generator=g).to(**I32)
    run_both("paged_reserve_", (0, 1, 2), table, free, count, target, page)
    keep = torch.randint(0, max_pages * page + 1, (B,), generator=g).to(**I32)
    run_both("paged_release_", (0, 1, 2), table, free, count, keep, page)


# ---- real shapes (GPU only) -----------------------------------------------------------------

@TRITON
@NEEDS_CUDA
def test_real_shapes_bf16(backend):
    """A 32-token verify block appended to a bf16 cache, paged (page 16) and contiguous,
    then a QUADRATIC(16) compaction of all 32 layers in one call."""
    B, T, H, D, Tmax = 4, 32, 8, 128, 4096
    kc, vc = rand(B, Tmax, H, D, dtype=torch.bfloat16, seed=30), rand(B, Tmax, H, D, dtype=torch.bfloat16, seed=31)
    k, v = rand(B, T, H, D, dtype=torch.bfloat16, seed=32), rand(B, T, H, D, dtype=torch.bfloat16, seed=33)
    P = torch.tensor([0, 1000, 4064, 17], **I32)
    n = torch.tensor([32, 0, 32, 5], **I32)
    run_both("kv_append_", (0, 1, 4), kc, vc, k, v, P, n, None)
    pk, pv, table = paged_setup(B, 16, Tmax // 16, H, D, torch.bfloat16, seed=34)
    run_both("kv_append_", (0, 1, 4), pk, pv, k, v, torch.tensor([0, 1000, 4064, 17], **I32), n, table)
    L, layers = 16, 32
    kc5, vc5 = rand(layers, 2, 2048, H, D, dtype=torch.bfloat16, seed=35), rand(layers, 2, 2048, H, D,
                                                                              dtype=torch.bfloat16, seed=36)
    run_both("kv_compact_", (0, 1), kc5, vc5, torch.tensor([5, 1700], **I32),
             ref.quadratic_verify_slots(L, 2, device=DEV), None)
