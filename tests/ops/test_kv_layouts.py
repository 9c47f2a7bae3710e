"""Every KV op on every backend with strided views of the cache, the source k/v and the
index tensors (DESIGN.md convention 13): transposed (head-major), sliced and
element-strided views, paged and contiguous, compared bit-exact with the reference run
on dense copies; the WHOLE underlying storage is compared, so a byte written outside the
view (or a slot of the view that should not move) fails.

A backend that cannot serve a layout must say so in supports_<op> (the test then skips
with that reason for the forced backend); "auto" must always give the exact result.
Triton runs here under TRITON_INTERPRET=1 (tiny sizes), CUDA skips without a GPU.
"""
import pytest
import torch

from tridiff import _dispatch, ops
from tridiff.reference import kv_cache as ref
from tests.ops.support import DEVICE, need

B, T, TMAX, H, D, PAGE = 2, 3, 8, 2, 4, 4
MAX_PAGES = TMAX // PAGE
NUM_PAGES = B * MAX_PAGES + 1

BACKENDS = ["auto", "torch", "cpp", "triton", "cuda"]


def _need_cuda(backend):
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA (the cuda backend launches kernels)")


def _storage(shape, start):
    """Distinct exactly representable values (a misplaced element shows)."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float32) + start).view(*shape).to(DEVICE)


def view_of(kind, shape, start):
    """(storage, view): `view` has logical `shape` [A, S, H, D] and lies in `storage`."""
    A, S, Hh, Dd = shape
    if kind == "dense":
        s = _storage(shape, start)
        return s, s
    if kind == "head_major":  # [A, H, S, D] storage seen as [A, S, H, D]
        s = _storage((A, Hh, S, Dd), start)
        return s, s.transpose(1, 2)
    if kind == "sliced":  # a window of a bigger buffer in every dimension
        s = _storage((A + 1, S + 2, Hh + 1, Dd + 3), start)
        return s, s[1:, 1:S + 1, 1:, 2:Dd + 2]
    if kind == "fused":  # k of a fused [A, S, 3, H, D] qkv projection
        s = _storage((A, S, 3, Hh, Dd), start)
        return s, s[:, :, 1]
    if kind == "d_strided":  # features interleaved with another tensor's
        s = _storage((A, S, Hh, Dd, 2), start)
        return s, s[..., 1]
    raise AssertionError(kind)


CACHE_KINDS = ["dense", "head_major", "sliced", "d_strided"]
SRC_KINDS = ["dense", "head_major", "fused", "d_strided"]


def _lens(values, strided):
    """int32 [B] lengths, optionally a strided view (every other element of a buffer)."""
    t = torch.tensor(values, dtype=torch.int32, device=DEVICE)
    if not strided:
        return t
    buf = torch.full((2 * len(values),), -7, dtype=torch.int32, device=DEVICE)
    buf[::2] = t
    return buf[::2]


def _table(strided):
    """A block table [B, MAX_PAGES] of distinct pages (page 0 never used), optionally a
    transposed view of a [MAX_PAGES, B] buffer."""
    perm = torch.tensor([3, 1, 4, 2], dtype=torch.int32)[: B * MAX_PAGES].view(B, MAX_PAGES)
    if not strided:
        return perm.to(DEVICE)
    return perm.t().contiguous().to(DEVICE).t()


def _expect(store, view, run_dense):
    """The storage after an op: `view`'s elements replaced by the reference's result on a
    dense copy of the view (run_dense mutates its argument), all others unchanged."""
    want = store.clone()
    dense = view.contiguous().clone()
    run_dense(dense)
    want_view = want.as_strided(view.shape, view.stride(), view.storage_offset() - store.storage_offset())
    want_view.copy_(dense)
    return want


# ---- kv_write_ / kv_append_ ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("append", [False, True], ids=["write", "append"])
@pytest.mark.parametrize("paged", [False, True], ids=["contig", "paged"])
@pytest.mark.parametrize("cache_kind,src_kind", [(c, "dense") for c in CACHE_KINDS]
                         + [("dense", s) for s in SRC_KINDS[1:]] + [("head_major", "head_major")])
def test_write_views(backend, append, paged, cache_kind, src_kind):
    _need_cuda(backend)
    cshape = (NUM_PAGES, PAGE, H, D) if paged else (B, TMAX, H, D)
    ks, kc = view_of(cache_kind, cshape, 1000)
    vs, vc = view_of(cache_kind, cshape, 50_000)
    _, k = view_of(src_kind, (B, T, H, D), -5000)
    _, v = view_of(src_kind, (B, T, H, D), -9000)
    table = _table(False) if paged else None
    lens = _lens([1, 4], False)
    q_lens = _lens([3, 2], False)
    op_name = "kv_append_" if append else "kv_write_"
    if backend != "auto":
        need(backend, op_name, kc, vc, k, v, lens, q_lens, table)
    want_k = _expect(ks, kc, lambda c: ref.kv_write_(c, c.clone(), k.contiguous(), v.contiguous(), lens,
                                                      q_lens, table))
    want_v = _expect(vs, vc, lambda c: ref.kv_write_(c.clone(), c, k.contiguous(), v.contiguous(), lens,
                                                      q_lens, table))
    getattr(ops, op_name)(kc, vc, k, v, lens, q_lens=q_lens, block_table=table, backend=backend)
    assert torch.equal(ks, want_k), "k storage"
    assert torch.equal(vs, want_v), "v storage"
    assert lens.tolist() == ([4, 6] if append else [1, 4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_mixed_k_and_v_cache_layouts(backend):
    """k_cache head-major, v_cache dense: a backend sharing one stride set must refuse."""
    _need_cuda(backend)
    ks, kc = view_of("head_major", (B, TMAX, H, D), 1000)
    vs, vc = view_of("dense", (B, TMAX, H, D), 50_000)
    _, k = view_of("dense", (B, T, H, D), -5000)
    _, v = view_of("head_major", (B, T, H, D), -9000)
    lens, q_lens = _lens([0, 5], False), _lens([3, 3], False)
    if backend != "auto":
        need(backend, "kv_append_", kc, vc, k, v, lens, q_lens, None)
    want_k = _expect(ks, kc, lambda c: ref.kv_write_(c, c.clone(), k.contiguous(), v.contiguous(), lens,
                                                      q_lens, None))
    want_v = _expect(vs, vc, lambda c: ref.kv_write_(c.clone(), c, k.contiguous(), v.contiguous(), lens,
                                                      q_lens, None))
    ops.kv_append_(kc, vc, k, v, lens, q_lens=q_lens, backend=backend)
    assert torch.equal(ks, want_k) and torch.equal(vs, want_v)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("append", [False, True], ids=["write", "append"])
def test_write_strided_index_tensors(backend, append):
    """cache_lens, q_lens and block_table as strided views (lens mutated through its view)."""
    _need_cuda(backend)
    ks, kc = view_of("dense", (NUM_PAGES, PAGE, H, D), 1000)
    vs, vc = view_of("dense", (NUM_PAGES, PAGE, H, D), 50_000)
    _, k = view_of("dense", (B, T, H, D), -5000)
    _, v = view_of("dense", (B, T, H, D), -9000)
    table, lens, q_lens = _table(True), _lens([2, 5], True), _lens([3, 1], True)
    lens_buf = lens._base
    op_name = "kv_append_" if append else "kv_write_"
    if backend != "auto":
        need(backend, op_name, kc, vc, k, v, lens, q_lens, table)
    want_k = _expect(ks, kc, lambda c: ref.kv_write_(c, c.clone(), k, v, lens.clone(), q_lens.clone(),
                                                      table.contiguous()))
    want_v = _expect(vs, vc, lambda c: ref.kv_write_(c.clone(), c, k, v, lens.clone(), q_lens.clone(),
                                                      table.contiguous()))
    getattr(ops, op_name)(kc, vc, k, v, lens, q_lens=q_lens, block_table=table, backend=backend)
    assert torch.equal(ks, want_k) and torch.equal(vs, want_v)
    assert lens_buf.tolist() == ([5, -7, 6, -7] if append else [2, -7, 5, -7])


# ---- kv_compact_ ---------------------------------------------------------------------------------

def _src_index():
    return torch.tensor([[2, -1, 0], [1, 2, 0]], dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contig", "contig_layers", "paged", "paged_layers"])
@pytest.mark.parametrize("cache_kind", CACHE_KINDS)
def test_compact_views(backend, layout, cache_kind):
    _need_cuda(backend)
    paged = layout.startswith("paged")
    layers = 2 if layout.endswith("layers") else 0
    shape = (NUM_PAGES, PAGE, H, D) if paged else (B, TMAX, H, D)
    if layers:  # a leading layer dimension: a view over [layers * A, S, H, D] storage
        ks, kc = view_of(cache_kind, (layers * shape[0],) + shape[1:], 1000)
        vs, vc = view_of(cache_kind, (layers * shape[0],) + shape[1:], 50_000)
        kc, vc = kc.unflatten(0, (layers, shape[0])), vc.unflatten(0, (layers, shape[0]))
    else:
        ks, kc = view_of(cache_kind, shape, 1000)
        vs, vc = view_of(cache_kind, shape, 50_000)
    table = _table(False) if paged else None
    lens = _lens([1, 3], False)
    src = _src_index()
    if backend != "auto":
        need(backend, "kv_compact_", kc, vc, lens, src, table)

    def dense(c):
        for layer in (c if layers else [c]):
            ref.kv_compact_(layer, layer.clone(), lens, src, table)
    want_k, want_v = _expect(ks, kc, dense), _expect(vs, vc, dense)
    ops.kv_compact_(kc, vc, lens, src, block_table=table, backend=backend)
    assert torch.equal(ks, want_k), "k storage"
    assert torch.equal(vs, want_v), "v storage"


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_strided_index_tensors(backend):
    _need_cuda(backend)
    ks, kc = view_of("dense", (NUM_PAGES, PAGE, H, D), 1000)
    vs, vc = view_of("dense", (NUM_PAGES, PAGE, H, D), 50_000)
    table, lens = _table(True), _lens([2, 1], True)
    src = _src_index().t().contiguous().t()
    if backend != "auto":
        need(backend, "kv_compact_", kc, vc, lens, src, table)

    def dense(c):
        ref.kv_compact_(c, c.clone(), lens.clone(), src.contiguous(), table.contiguous())
    want_k, want_v = _expect(ks, kc, dense), _expect(vs, vc, dense)
    ops.kv_compact_(kc, vc, lens, src, block_table=table, backend=backend)
    assert torch.equal(ks, want_k) and torch.equal(vs, want_v)


# ---- metadata and page ops -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["kv_commit_", "kv_rollback_"])
def test_length_ops_through_strided_views(backend, op):
    _need_cuda(backend)
    lens = _lens([3, 5], True)
    buf = lens._base
    arg = _lens([2, 1], True)
    if backend != "auto":
        need(backend, op, lens, arg)
    if op == "kv_commit_":
        ops.kv_commit_(lens, arg, capacity=TMAX, backend=backend)
        want = [5, -7, 6, -7]
    else:
        ops.kv_rollback_(lens, arg, backend=backend)
        want = [2, -7, 1, -7]
    assert buf.tolist() == want


def _pages(strided):
    """(block_table, free_pages, free_count, buffers to compare): row 0 holds page 3, row 1
    none; free stack [0, 1, 2, 4] with 3 entries free (page 4 is not free)."""
    table = torch.tensor([[3, -1], [-1, -1]], dtype=torch.int32, device=DEVICE)
    free = torch.tensor([0, 1, 2, 4], dtype=torch.int32, device=DEVICE)
    count = torch.tensor([3], dtype=torch.int32, device=DEVICE)
    if not strided:
        return table, free, count, (table, free, count)
    tbuf = torch.full((MAX_PAGES + 1, B + 1), -9, dtype=torch.int32, device=DEVICE)
    tview = tbuf[1:, 1:].t()
    tview.copy_(table)
    fbuf = torch.full((2 * free.numel(),), -9, dtype=torch.int32, device=DEVICE)
    fview = fbuf[::2]
    fview.copy_(free)
    cbuf = torch.full((3,), -9, dtype=torch.int32, device=DEVICE)
    cview = cbuf[1:2]
    cview.copy_(count)
    return tview, fview, cview, (tbuf, fbuf, cbuf)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strided", [False, True], ids=["dense", "strided"])
def test_reserve_release_through_views(backend, strided):
    _need_cuda(backend)
    table, free, count, bufs = _pages(strided)
    target = _lens([2 * PAGE, PAGE + 1], strided)
    keep = _lens([1, 0], strided)
    if backend != "auto":
        need(backend, "paged_reserve_", table, free, count, target, PAGE)
        need(backend, "paged_release_", table, free, count, keep, PAGE)
    # the reference on dense copies, then scattered back into copies of the buffers
    rt, rf, rc = table.clone(), free.clone(), count.clone()
    ref.paged_reserve_(rt, rf, rc, target.clone(), PAGE)
    after_reserve = [b.clone() for b in bufs]
    for buf, view, val in zip(after_reserve, (table, free, count), (rt, rf, rc)):
        buf.as_strided(view.shape, view.stride(), view.storage_offset() - buf.storage_offset()).copy_(val)
    ref.paged_release_(rt, rf, rc, keep.clone(), PAGE)
    after_release = [b.clone() for b in bufs]
    for buf, view, val in zip(after_release, (table, free, count), (rt, rf, rc)):
        buf.as_strided(view.shape, view.stride(), view.storage_offset() - buf.storage_offset()).copy_(val)

    ops.paged_reserve_(table, free, count, target, page_size=PAGE, backend=backend)
    for got, want in zip(bufs, after_reserve):
        assert torch.equal(got, want), "after reserve"
    ops.paged_release_(table, free, count, keep, page_size=PAGE, backend=backend)
    for got, want in zip(bufs, after_release):
        assert torch.equal(got, want), "after release"


def test_issue_25_head_major_append_with_auto():
    """The reproduction of issue 25 item 0: a head-major cache and head-major k/v seen as
    [B, T, H, D], through kv_append_ with backend auto (which resolved to cpp and copied
    Hkv*D contiguous bytes per token). Whatever auto picks must serve the view exactly or
    refuse it in supports_kv_append_."""
    ks, kc = view_of("head_major", (B, TMAX, H, D), 1000)
    vs, vc = view_of("head_major", (B, TMAX, H, D), 50_000)
    _, k = view_of("head_major", (B, T, H, D), -5000)
    _, v = view_of("head_major", (B, T, H, D), -9000)
    lens, q_lens = _lens([0, 2], False), _lens([3, 3], False)
    args = (kc, vc, k, v, lens, q_lens, None)
    chosen = _dispatch.resolve("kv_append_", "auto", kc.device, args, {})
    want_k = _expect(ks, kc, lambda c: ref.kv_write_(c, c.clone(), k.contiguous(), v.contiguous(), lens,
                                                      q_lens, None))
    ops.kv_append_(kc, vc, k, v, lens, q_lens=q_lens)
    assert torch.equal(ks, want_k), f"auto chose {chosen}"


# ---- tridiff.cupy (NVRTC path): its stride rule is enforced by refusing, checked with the
# stand-in cupy of tests/cupy (launches are recorded, never run; the kernels need a GPU) -------

@pytest.fixture
def cupy_launches(monkeypatch):
    import sys

    from tests.cupy.support import Recorder, fake_cupy
    import tridiff.cupy as tc

    rec = Recorder()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(tc, "_module", rec)
    return tc, rec.calls


def _np_kv(paged):
    import numpy as np

    cache = (NUM_PAGES, PAGE, H, D) if paged else (B, TMAX, H, D)
    return dict(k_cache=np.zeros(cache, np.float32), v_cache=np.zeros(cache, np.float32),
                k=np.ones((B, T, H, D), np.float32), v=np.ones((B, T, H, D), np.float32),
                cache_lens=np.array([0, 4], np.int32), q_lens=np.array([3, 2], np.int32),
                block_table=np.array([[3, 1], [4, 2]], np.int32) if paged else None)


def _np_views():
    """Layouts tridiff.cupy's kernels cannot address, each with the argument it must name."""
    import numpy as np

    return {
        "k_cache head-major": (lambda d: d.update(k_cache=np.zeros((B, H, TMAX, D), np.float32).swapaxes(1, 2),
                                                  v_cache=np.zeros((B, H, TMAX, D), np.float32).swapaxes(1, 2)),
                               "k_cache"),
        "v_cache other strides": (lambda d: d.update(v_cache=np.zeros((B, TMAX + 1, H, D), np.float32)[:, 1:]),
                                  "v_cache"),
        "cache_lens strided": (lambda d: d.update(cache_lens=np.array([0, 9, 4, 9], np.int32)[::2]),
                               "cache_lens"),
        "q_lens strided": (lambda d: d.update(q_lens=np.array([3, 9, 2, 9], np.int32)[::2]), "q_lens"),
    }


@pytest.mark.parametrize("case", list(_np_views()))
def test_cupy_refuses_layouts_it_cannot_address(cupy_launches, case):
    from tests.cupy.support import FakeArray
    from tridiff.errors import TridiffInputError

    tc, launched = cupy_launches
    d = _np_kv(paged=False)
    edit, arg = _np_views()[case]
    edit(d)
    with pytest.raises(TridiffInputError, match=rf"^{arg}: expected"):
        tc.kv_append_(**{k: FakeArray(v) if v is not None else None for k, v in d.items()})
    assert launched == []


def test_cupy_compacts_a_paged_cache_with_layers(cupy_launches):
    """[layers, num_pages, page, Hkv, D] + block table: one launch over every layer, addressed
    with the page and slot strides (not the layer stride)."""
    import numpy as np

    from tests.cupy.support import FakeArray

    tc, launched = cupy_launches
    cache = np.zeros((3, NUM_PAGES, PAGE, H, D), np.float32)
    tc.kv_compact_(FakeArray(cache), FakeArray(cache.copy()), FakeArray(np.array([1, 2], np.int32)),
                   FakeArray(np.array([[1, 0], [0, -1]], np.int32)),
                   FakeArray(np.array([[3, 1], [4, 2]], np.int32)))
    (name, grid, block, args, smem), = launched
    layers, layer_stride, outer, token, tokens = (int(args[i]) for i in (2, 3, 9, 10, 11))
    assert (grid[2], layers, layer_stride) == (6, 3, cache.strides[0])
    assert (outer, token, tokens) == (cache.strides[1], cache.strides[2], PAGE)
