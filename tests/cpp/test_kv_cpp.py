"""KV-cache ops of the "cpp" backend against the torch reference: bit-exact data
movement, lengths and page tables exact, every slot outside the written/moved ones
untouched. Awkward sizes: odd head dims (2-byte copy units), non-contiguous k/v,
rows writing nothing, overlapping compaction sources, paged caches, 5-D layer caches."""
import pytest
import torch

import tridiff.ops as ops
from tests.cpp.support import CPP, randn

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def _caches(shape, dtype, gen):
    return randn(shape, dtype, gen), randn(shape, dtype, gen)


def _written_mask(B, cap, lens, q_lens):
    pos = torch.arange(cap)[None, :]
    return (pos >= lens[:, None].long()) & (pos < (lens + q_lens)[:, None].long())


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H,D", [(2, 64), (3, 5), (1, 128)])
@pytest.mark.parametrize("append", [pytest.param(False, id="write"), pytest.param(True, id="append")])
def test_kv_write_contiguous(backend, dtype, H, D, append, rng):
    B, T, Tmax = 4, 7, 33
    kc, vc = _caches((B, Tmax, H, D), dtype, rng)
    # k/v as a non-contiguous slice of a wider projection (token stride > H*D).
    kv = randn((B, T, 2, H, D), dtype, rng)
    k, v = kv[:, :, 0], kv[:, :, 1]
    lens = torch.tensor([0, 5, 26, 33 - 7], dtype=torch.int32)
    q_lens = torch.tensor([7, 0, 3, 7], dtype=torch.int32)
    fn = ops.kv_append_ if append else ops.kv_write_
    ref = [kc.clone(), vc.clone(), lens.clone()]
    out = [kc.clone(), vc.clone(), lens.clone()]
    fn(ref[0], ref[1], k, v, ref[2], q_lens=q_lens, backend="torch")
    fn(out[0], out[1], k, v, out[2], q_lens=q_lens, backend=backend)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    untouched = ~_written_mask(B, Tmax, lens, q_lens)
    assert torch.equal(out[0][untouched], kc[untouched])
    assert torch.equal(out[1][untouched], vc[untouched])
    assert torch.equal(out[2], lens + q_lens if append else lens)


def _paged_setup(B, page, max_pages, num_pages, gen):
    perm = torch.randperm(num_pages, generator=gen).to(torch.int32)
    table = perm[: B * max_pages].view(B, max_pages).clone()
    return table


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_kv_append_paged(backend, dtype, rng):
    B, T, H, D, page, max_pages = 3, 9, 2, 16, 4, 6
    num_pages = B * max_pages + 3
    kc, vc = _caches((num_pages, page, H, D), dtype, rng)
    k, v = randn((B, T, H, D), dtype, rng), randn((B, T, H, D), dtype, rng)
    table = _paged_setup(B, page, max_pages, num_pages, rng)
    lens = torch.tensor([0, 3, 15], dtype=torch.int32)
    q_lens = torch.tensor([9, 5, 9], dtype=torch.int32)
    ref = [kc.clone(), vc.clone(), lens.clone()]
    out = [kc.clone(), vc.clone(), lens.clone()]
    ops.kv_append_(ref[0], ref[1], k, v, ref[2], q_lens=q_lens, block_table=table, backend="torch")
    ops.kv_append_(out[0], out[1], k, v, out[2], q_lens=q_lens, block_table=table, backend=backend)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    # Untouched: every physical slot not addressed by a written logical position.
    touched = torch.zeros(num_pages, page, dtype=torch.bool)
    for b in range(B):
        for pos in range(int(lens[b]), int(lens[b] + q_lens[b])):
            touched[table[b, pos // page], pos % page] = True
    assert torch.equal(out[0][~touched], kc[~touched]) and torch.equal(out[1][~touched], vc[~touched])
    assert not torch.equal(out[0][touched], kc[touched])


def _src_index(B, n, lens, cap, gen):
    src = torch.randint(-1, n + 3, (B, n), generator=gen, dtype=torch.int32)
    src = torch.minimum(src, (cap - lens.long() - 1)[:, None].to(torch.int32))
    src[0] = torch.arange(n, dtype=torch.int32).flip(0)  # full reversal: every move overlaps
    return src


def _moved_mask(B, cap, lens, src):
    mask = torch.zeros(B, cap, dtype=torch.bool)
    for b in range(B):
        for i in range(src.shape[1]):
            s = int(src[b, i])
            if s >= 0 and s != i:
                mask[b, int(lens[b]) + i] = True
    return mask


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layers", [pytest.param(None, id="4d"), pytest.param(3, id="5d")])
def test_kv_compact_contiguous(backend, dtype, layers, rng):
    B, Tmax, H, D, n = 3, 40, 2, 24, 8
    shape = (B, Tmax, H, D) if layers is None else (layers, B, Tmax, H, D)
    kc, vc = _caches(shape, dtype, rng)
    lens = torch.tensor([0, 17, 40 - 8], dtype=torch.int32)
    src = _src_index(B, n, lens, Tmax, rng)
    ref, out = [kc.clone(), vc.clone()], [kc.clone(), vc.clone()]
    ops.kv_compact_(ref[0], ref[1], lens, src, backend="torch")
    ops.kv_compact_(out[0], out[1], lens, src, backend=backend)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    moved = _moved_mask(B, Tmax, lens, src)
    sel = (lambda x: x[:, ~moved]) if layers else (lambda x: x[~moved])
    assert torch.equal(sel(out[0]), sel(kc)) and torch.equal(sel(out[1]), sel(vc))
    assert not torch.equal(out[0], kc)


@pytest.mark.parametrize("backend", CPP)
def test_kv_compact_quadratic_slots_paged(backend, rng):
    """QUADRATIC keeps its d slots a*(L+1): the public helper's src_index, paged cache."""
    B, H, D, page, max_pages, L = 2, 2, 8, 8, 6, 4
    num_pages = B * max_pages
    kc, vc = _caches((num_pages, page, H, D), torch.bfloat16, rng)
    table = _paged_setup(B, page, max_pages, num_pages, rng)
    lens = torch.tensor([3, 20], dtype=torch.int32)
    src = ops.quadratic_verify_slots(L, B)
    ref, out = [kc.clone(), vc.clone()], [kc.clone(), vc.clone()]
    ops.kv_compact_(ref[0], ref[1], lens, src, block_table=table, backend="torch")
    ops.kv_compact_(out[0], out[1], lens, src, block_table=table, backend=backend)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert not torch.equal(out[0], kc)


@pytest.mark.parametrize("backend", CPP)
def test_paged_reserve_release(backend, rng):
    B, max_pages, page, N = 3, 5, 4, 12
    handed_out = False
    for trial in range(5):
        g = torch.Generator().manual_seed(trial)
        table = torch.full((B, max_pages), -1, dtype=torch.int32)
        free = torch.randperm(N, generator=g).to(torch.int32)
        count = torch.tensor([N], dtype=torch.int32)
        states = {"torch": [table.clone(), free.clone(), count.clone()], backend: [table.clone(), free.clone(), count.clone()]}
        for step in range(4):
            target = torch.randint(0, max_pages * page + 1, (B,), generator=g, dtype=torch.int32)
            keep = torch.randint(0, max_pages * page + 1, (B,), generator=g, dtype=torch.int32)
            need = sum(max(0, -(-int(t) // page) - int((states["torch"][0][b] >= 0).sum())) for b, t in enumerate(target))
            reserve = need <= int(states["torch"][2][0])  # the op refuses an impossible reserve
            for name, (t, f, c) in states.items():
                if reserve:
                    ops.paged_reserve_(t, f, c, target, page_size=page, backend=name)
                ops.paged_release_(t, f, c, keep, page_size=page, backend=name)
            for r, o in zip(states["torch"], states[backend]):
                assert torch.equal(r, o)
            assert int(states[backend][2][0]) <= N
            handed_out = handed_out or bool((states[backend][0] >= 0).any())
    assert handed_out  # the sequence really reserved pages


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H,D", [(2, 64), (3, 5)])
def test_head_major_views_as_per_head_runs(backend, dtype, H, D, rng):
    """A head-major paged cache [N, H, page, D] seen as [N, page, H, D] and k/v seen through
    a [B, H, T, D] buffer: served (no fallback), written/moved as per-head runs, bit-exact,
    every other byte of the storage untouched; then the same for a 5-D paged compaction."""
    from tridiff import _dispatch

    B, T, page, max_pages = 3, 6, 4, 4
    N = B * max_pages + 1
    store_k, store_v = randn((2, N, H, page, D), dtype, rng), randn((2, N, H, page, D), dtype, rng)
    kc, vc = store_k.transpose(2, 3), store_v.transpose(2, 3)   # [layers=2, N, page, H, D]
    k = randn((B, H, T, D), dtype, rng).transpose(1, 2)
    v = randn((B, H, T, D), dtype, rng).transpose(1, 2)
    table = torch.randperm(N, generator=rng)[: B * max_pages].view(B, max_pages).int()
    lens = torch.tensor([0, 5, 9], dtype=torch.int32)
    q_lens = torch.tensor([6, 0, 4], dtype=torch.int32)
    args = (kc[1], vc[1], k, v, lens, q_lens, table)
    assert _dispatch.why_not(backend, "kv_append_", args, {}) is None
    want_k, want_v, want_lens = store_k.clone(), store_v.clone(), lens.clone()
    ops.kv_append_(want_k.transpose(2, 3)[1], want_v.transpose(2, 3)[1], k, v, want_lens, q_lens=q_lens,
                   block_table=table, backend="torch")
    ops.kv_append_(kc[1], vc[1], k, v, lens, q_lens=q_lens, block_table=table, backend=backend)
    assert torch.equal(store_k, want_k) and torch.equal(store_v, want_v) and torch.equal(lens, want_lens)

    src = torch.tensor([[3, -1, 0, 1], [0, 2, 1, -1], [1, 1, 0, 2]], dtype=torch.int32)
    lens = torch.tensor([2, 5, 9], dtype=torch.int32)
    assert _dispatch.why_not(backend, "kv_compact_", (kc, vc, lens, src, table), {}) is None
    for i in range(2):
        ops.kv_compact_(want_k.transpose(2, 3)[i], want_v.transpose(2, 3)[i], lens, src, block_table=table,
                        backend="torch")
    ops.kv_compact_(kc, vc, lens, src, block_table=table, backend=backend)
    assert torch.equal(store_k, want_k) and torch.equal(store_v, want_v)
