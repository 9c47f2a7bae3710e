"""KV-cache ops: bit-exact data movement, metadata-only length changes, paging."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tridiff import _dispatch, ops
from tridiff._checks import TridiffInputError
from tests.ops.support import BACKENDS, DEVICE, I32, need


def ids_tensor(*shape, start=0):
    """Distinct, exactly representable values so any misplaced byte shows."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float32) + start).view(*shape).to(DEVICE)


# ---- write / append ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("append", [pytest.param(False, id="write"), pytest.param(True, id="append")])
def test_write_bit_exact_ragged(backend, append):
    B, T, Tmax, H, D = 3, 5, 12, 2, 4
    kc, vc = ids_tensor(B, Tmax, H, D, start=10_000), ids_tensor(B, Tmax, H, D, start=20_000)
    k, v = ids_tensor(B, T, H, D, start=-5_000), ids_tensor(B, T, H, D, start=-9_000)
    P = torch.tensor([0, 4, 7], **I32)
    n = torch.tensor([5, 0, 5], **I32)
    op = ops.kv_append_ if append else ops.kv_write_
    need(backend, op.__name__, kc, vc, k, v, P, n, None)
    want_k, want_v = kc.clone(), vc.clone()
    for b in range(B):
        p, c = int(P[b]), int(n[b])
        want_k[b, p:p + c], want_v[b, p:p + c] = k[b, :c], v[b, :c]
    P0 = P.clone()
    op(kc, vc, k, v, P, q_lens=n, backend=backend)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    assert torch.equal(P, P0 + n if append else P0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page", [1, 4, 16])
def test_paged_write_bit_exact(backend, page):
    B, T, H, D, max_pages = 2, 6, 1, 4, 32 // page
    num_pages = B * max_pages + 2
    pages_k = ids_tensor(num_pages, page, H, D, start=1000)
    pages_v = ids_tensor(num_pages, page, H, D, start=90_000)
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(0))[: B * max_pages]
    table = perm.view(B, max_pages).to(**I32)
    k, v = ids_tensor(B, T, H, D, start=-100), ids_tensor(B, T, H, D, start=-300)
    P = torch.tensor([3, 26], **I32)
    need(backend, "kv_write_", pages_k, pages_v, k, v, P, P, table)
    want = pages_k.clone()
    for b in range(B):
        for i in range(T):
            t = int(P[b]) + i
            want[table[b, t // page], t % page] = k[b, i]
    ops.kv_write_(pages_k, pages_v, k, v, P, block_table=table, backend=backend)
    assert torch.equal(pages_k, want)


def test_write_refuses_past_capacity_before_touching_memory():
    kc, vc = ids_tensor(2, 8, 1, 2), ids_tensor(2, 8, 1, 2, start=50)
    k, v = ids_tensor(2, 3, 1, 2, start=-10), ids_tensor(2, 3, 1, 2, start=-20)
    P = torch.tensor([5, 6], **I32)  # row 1: 6 + 3 > 8
    before = (kc.clone(), vc.clone(), P.clone())
    with pytest.raises(TridiffInputError, match="cache_lens"):
        ops.kv_append_(kc, vc, k, v, P)
    assert all(torch.equal(x, y) for x, y in zip((kc, vc, P), before))


# ---- commit / rollback -------------------------------------------------------------------------

def test_commit_and_rollback_are_metadata_only():
    kc = ids_tensor(2, 8, 1, 2)
    snapshot = kc.clone()
    P = torch.tensor([2, 5], **I32)
    ops.kv_commit_(P, torch.tensor([3, 1], **I32), capacity=8)
    assert P.tolist() == [5, 6]
    ops.kv_rollback_(P, torch.tensor([4, 6], **I32))
    assert P.tolist() == [4, 6]
    assert torch.equal(kc, snapshot)


@pytest.mark.parametrize("bad", ["rollback_beyond", "rollback_negative", "commit_past_capacity", "commit_negative"])
def test_length_errors_leave_lengths_unchanged(bad):
    P = torch.tensor([2, 5], **I32)
    with pytest.raises(TridiffInputError, match="new_lens" if "rollback" in bad else "n"):
        if bad == "rollback_beyond":
            ops.kv_rollback_(P, torch.tensor([3, 5], **I32))
        elif bad == "rollback_negative":
            ops.kv_rollback_(P, torch.tensor([-1, 5], **I32))
        elif bad == "commit_past_capacity":
            ops.kv_commit_(P, 4, capacity=8)
        else:
            ops.kv_commit_(P, -1, capacity=8)
    assert P.tolist() == [2, 5]


# ---- compaction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", [pytest.param(None, id="4d"), pytest.param(3, id="5d")])
def test_compact_quadratic_verify_slots(backend, layers):
    L, B, Tmax, H, D = 3, 2, 24, 2, 4
    shape = (B, Tmax, H, D) if layers is None else (layers, B, Tmax, H, D)
    kc, vc = ids_tensor(*shape), ids_tensor(*shape, start=1_000_000)
    P = torch.tensor([0, 6], **I32)
    src = ops.quadratic_verify_slots(L, B, device=DEVICE)
    assert src.tolist() == [[0, 4, 8]] * 2
    need(backend, "kv_compact_", kc, vc, P, src, None)
    want_k, want_v = kc.clone(), vc.clone()
    for b in range(B):
        p = int(P[b])
        for i, s in enumerate(src[b].tolist()):
            want_k[..., b, p + i, :, :] = kc[..., b, p + s, :, :]
            want_v[..., b, p + i, :, :] = vc[..., b, p + s, :, :]
    ops.kv_compact_(kc, vc, P, src, backend=backend)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_overlapping_and_keep_entries(backend):
    """Destinations overlap sources (slot 1 <- 2 while slot 2 <- 3): reads happen first."""
    kc, vc = ids_tensor(1, 10, 1, 2), ids_tensor(1, 10, 1, 2, start=500)
    P = torch.tensor([1], **I32)
    src = torch.tensor([[1, 2, -1, 0]], **I32)
    need(backend, "kv_compact_", kc, vc, P, src, None)
    old = kc.clone()
    ops.kv_compact_(kc, vc, P, src, backend=backend)
    assert torch.equal(kc[0, 1], old[0, 2]) and torch.equal(kc[0, 2], old[0, 3])
    assert torch.equal(kc[0, 3], old[0, 3]) and torch.equal(kc[0, 4], old[0, 1])
    assert torch.equal(kc[0, 0], old[0, 0]) and torch.equal(kc[0, 5:], old[0, 5:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_paged(backend):
    page, B, max_pages, H, D = 4, 2, 4, 1, 2
    pk, pv = ids_tensor(9, page, H, D), ids_tensor(9, page, H, D, start=7000)
    table = torch.tensor([[8, 2, 5, 0], [1, 3, 6, 7]], **I32)
    P = torch.tensor([2, 5], **I32)
    src = torch.tensor([[0, 3, 6], [0, 4, 8]], **I32)
    need(backend, "kv_compact_", pk, pv, P, src, table)
    logical = lambda c, b: c[table[b].long()].reshape(max_pages * page, H, D)  # noqa: E731
    before = [logical(pk, b).clone() for b in range(B)]
    ops.kv_compact_(pk, pv, P, src, block_table=table, backend=backend)
    for b in range(B):
        want = before[b].clone()
        for i, s in enumerate(src[b].tolist()):
            want[int(P[b]) + i] = before[b][int(P[b]) + s]
        assert torch.equal(logical(pk, b), want)
    assert torch.equal(pk[4], ids_tensor(9, page, H, D)[4]), "a page no row owns changed"


def test_compact_rejects_out_of_range_sources():
    kc, vc = ids_tensor(1, 8, 1, 2), ids_tensor(1, 8, 1, 2)
    before = kc.clone()
    with pytest.raises(TridiffInputError, match="src_index"):
        ops.kv_compact_(kc, vc, torch.tensor([4], **I32), torch.tensor([[0, 4]], **I32))
    assert torch.equal(kc, before)


# ---- paged allocation -------------------------------------------------------------------------------

def _pool(num_pages, B, max_pages):
    return (torch.full((B, max_pages), -1, **I32), torch.arange(num_pages, **I32),
            torch.tensor([num_pages], **I32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reserve_then_release(backend):
    table, free, count = _pool(10, 3, 4)
    need(backend, "paged_reserve_", table, free, count, torch.zeros(3, **I32), 4)
    ops.paged_reserve_(table, free, count, torch.tensor([5, 0, 16], **I32), page_size=4, backend=backend)
    held = (table >= 0).sum(1).tolist()
    assert held == [2, 0, 4] and int(count) == 4
    owned = table[table >= 0].tolist()
    assert len(set(owned)) == 6 and not set(owned) & set(free[: int(count)].tolist())
    first = table.clone()
    ops.paged_release_(table, free, count, torch.tensor([5, 0, 3], **I32), page_size=4, backend=backend)
    assert (table >= 0).sum(1).tolist() == [2, 0, 1] and int(count) == 7
    assert torch.equal(table[2, :1], first[2, :1]), "kept pages must stay in place"
    assert sorted(free[: int(count)].tolist() + table[table >= 0].tolist()) == list(range(10))


def test_reserve_refuses_when_out_of_pages():
    table, free, count = _pool(4, 2, 4)
    snapshot = (table.clone(), free.clone(), count.clone())
    with pytest.raises(TridiffInputError, match="target_lens"):
        ops.paged_reserve_(table, free, count, torch.tensor([8, 9], **I32), page_size=4)
    assert all(torch.equal(x, y) for x, y in zip((table, free, count), snapshot))


# ---- property test: random op sequences against a trivial Python model ------------------------------

op_strategy = st.lists(
    st.tuples(st.sampled_from(["write", "append", "commit", "rollback", "compact", "reserve"]),
              st.lists(st.integers(0, 7), min_size=3, max_size=3), st.integers(0, 2**31 - 1)),
    min_size=1, max_size=25)


class PagedModel:
    """Page bookkeeping the allocator must respect: who holds which pages, what is free."""

    def __init__(self, B, num_pages, page):
        self.page, self.num_pages = page, num_pages
        self.held = [0] * B  # pages each row holds (a prefix of its table)

    def pages_for(self, tokens):
        return -(-tokens // self.page)

    def check(self, table, free, count):
        rows = table.cpu()
        owned = []
        for b, n in enumerate(self.held):
            row = rows[b].tolist()
            assert all(x >= 0 for x in row[:n]) and all(x == -1 for x in row[n:]), (b, row, n)
            owned += row[:n]
        free_now = free[: int(count)].cpu().tolist()
        assert sorted(owned + free_now) == list(range(self.num_pages)), "pages lost or duplicated"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_seq=op_strategy, paged=st.booleans())
def test_random_op_sequences_match_python_model(backend, ops_seq, paged):
    """Drives write/append/commit/rollback/compact (and, paged, page reserve/release through
    the device-side allocator) and compares every known slot and every length with a
    Python model; slots of released pages become unknown (another row may reuse them)."""
    B, Tmax, page = 3, 16, 4
    reason = _dispatch.backend_unavailable(backend)
    if reason:
        pytest.skip(reason)
    if paged:
        num_pages = B * Tmax // page
        table, free, count = _pool(num_pages, B, Tmax // page)
        pm = PagedModel(B, num_pages, page)
        kc = torch.zeros(num_pages, page, 1, 2, device=DEVICE)
    else:
        table = None
        kc = torch.zeros(B, Tmax, 1, 2, device=DEVICE)
    vc = kc.clone()
    lens = torch.zeros(B, **I32)
    model = [[0.0] * Tmax for _ in range(B)]  # row -> slot -> value id (None = unknown)
    model_lens = [0] * B
    counter = [1]

    def reserve(upto):
        """Paged: give rows pages for `upto` tokens (the model learns the new page counts)."""
        if not paged:
            return
        ops.paged_reserve_(table, free, count, torch.tensor(upto, **I32), page_size=page, backend=backend)
        for b in range(B):
            got = max(pm.held[b], pm.pages_for(upto[b]))
            for t in range(pm.held[b] * page, got * page):
                model[b][t] = None  # a fresh page holds whatever its last owner left
            pm.held[b] = got

    def release(keep):
        if not paged:
            return
        ops.paged_release_(table, free, count, torch.tensor(keep, **I32), page_size=page, backend=backend)
        for b in range(B):
            pm.held[b] = min(pm.held[b], pm.pages_for(keep[b]))

    def logical(cache, b):
        if table is None:
            return cache[b]
        rows = table[b, : pm.held[b]].long()
        return cache[rows].reshape(pm.held[b] * page, 1, 2)

    for name, nums, seed in ops_seq:
        if name in ("write", "append"):
            n = torch.tensor(nums, **I32)
            vals = torch.arange(counter[0], counter[0] + B * 7, dtype=torch.float32).view(B, 7, 1, 1)
            vals = torch.cat([vals, -vals], dim=-1).to(DEVICE)
            counter[0] += B * 7
            fits = all(model_lens[b] + nums[b] <= Tmax for b in range(B))
            fn = ops.kv_append_ if name == "append" else ops.kv_write_
            if not fits:
                with pytest.raises(TridiffInputError):
                    fn(kc, vc, vals, vals, lens, q_lens=n, block_table=table, backend=backend)
                continue
            reserve([model_lens[b] + nums[b] for b in range(B)])
            fn(kc, vc, vals, vals, lens, q_lens=n, block_table=table, backend=backend)
            for b in range(B):
                for i in range(nums[b]):
                    model[b][model_lens[b] + i] = float(vals[b, i, 0, 0])
                if name == "append":
                    model_lens[b] += nums[b]
        elif name == "commit":
            n = [x % 4 for x in nums]
            if any(model_lens[b] + n[b] > Tmax for b in range(B)):
                with pytest.raises(TridiffInputError):
                    ops.kv_commit_(lens, torch.tensor(n, **I32), capacity=Tmax, backend=backend)
                continue
            reserve([model_lens[b] + n[b] for b in range(B)])
            ops.kv_commit_(lens, torch.tensor(n, **I32), capacity=Tmax, backend=backend)
            model_lens = [model_lens[b] + n[b] for b in range(B)]
        elif name == "rollback":
            new = [max(0, model_lens[b] - nums[b]) for b in range(B)]
            ops.kv_rollback_(lens, torch.tensor(new, **I32), backend=backend)
            model_lens = new
            release(new)
        elif name == "reserve":
            reserve([min(Tmax, model_lens[b] + nums[b]) for b in range(B)])
        else:  # compact: keep every other slot of a random window
            width = 1 + seed % 3
            src = [[(i * 2 + (seed >> 3) % 2) for i in range(width)] for _ in range(B)]
            reach = [model_lens[b] + max(width, src[b][-1] + 1) for b in range(B)]
            if any(r > Tmax for r in reach):
                with pytest.raises(TridiffInputError):
                    ops.kv_compact_(kc, vc, lens, torch.tensor(src, **I32), block_table=table, backend=backend)
                continue
            reserve(reach)
            ops.kv_compact_(kc, vc, lens, torch.tensor(src, **I32), block_table=table, backend=backend)
            for b in range(B):
                p = model_lens[b]
                moved = [model[b][p + s] for s in src[b]]
                for i, val in enumerate(moved):
                    model[b][p + i] = val
        assert lens.tolist() == model_lens
        if paged:
            pm.check(table, free, count)
        for b in range(B):
            row = logical(kc, b)
            for t in range(row.shape[0]):
                want = model[b][t]
                if want is not None:
                    assert float(row[t, 0, 0]) == want and float(row[t, 0, 1]) == -want, (name, b, t)
            assert torch.equal(logical(vc, b), row)


# ---- engines' own caches: int64 index tensors, commit without capacity, paged layers ----------

def _engine_session(backend, dtype):
    """Every KV op once on a paged cache whose lengths, page table and free stack have
    `dtype`; returns every tensor the ops touched (the index tensors as int64)."""
    B, H, D, page, num_pages, max_pages = 2, 2, 4, 4, 7, 3
    idx = dict(dtype=dtype, device=DEVICE)
    pk, pv = ids_tensor(2, num_pages, page, H, D), ids_tensor(2, num_pages, page, H, D, start=90_000)
    table = torch.full((B, max_pages), -1, **idx)
    free = torch.arange(num_pages, **idx)
    count = torch.tensor([num_pages], **idx)
    lens = torch.tensor([0, 2], **idx)
    ops.paged_reserve_(table, free, count, torch.tensor([9, 6], **idx), page_size=page, backend=backend)
    k, v = ids_tensor(B, 5, H, D, start=-500), ids_tensor(B, 5, H, D, start=-900)
    for layer in range(2):
        ops.kv_write_(pk[layer], pv[layer], k, v, lens, q_lens=torch.tensor([5, 3], **idx), block_table=table,
                      backend=backend)
    ops.kv_append_(pk[0], pv[0], k, v, lens, q_lens=torch.tensor([4, 4], **idx), block_table=table,
                   backend=backend)
    ops.kv_rollback_(lens, torch.tensor([2, 3], **idx), backend=backend)
    ops.kv_compact_(pk, pv, lens, torch.tensor([[2, 0, -1], [1, 0, 2]], **idx), block_table=table,
                    backend=backend)
    ops.kv_commit_(lens, torch.tensor([3, 1], **idx), backend=backend)
    ops.paged_release_(table, free, count, lens - 2, page_size=page, backend=backend)
    for t in (table, free, count, lens):
        assert t.dtype == dtype  # mutated in place, dtype kept
    return [pk, pv] + [t.long() for t in (table, free, count, lens)]


@pytest.mark.parametrize("backend", BACKENDS + ([] if "triton" in BACKENDS else ["triton"]))
def test_int64_index_tensors_give_the_int32_result(backend):
    """An engine's int64 lengths, block table and free stack are taken by every KV op (converted
    once to int32, mutated ones written back) with exactly the int32 result."""
    if _dispatch.backend_unavailable(backend):
        pytest.skip(_dispatch.backend_unavailable(backend))
    want = _engine_session("torch", torch.int32)
    got = _engine_session(backend, torch.int64)
    for name, g, w in zip(["k", "v", "table", "free", "count", "lens"], got, want):
        assert torch.equal(g, w), name


def test_int64_lengths_are_range_checked_before_conversion():
    kc, vc = ids_tensor(1, 8, 1, 2), ids_tensor(1, 8, 1, 2, start=50)
    k = ids_tensor(1, 2, 1, 2, start=-10)
    lens = torch.tensor([2**32 + 1], dtype=torch.int64, device=DEVICE)  # wraps to 1 as int32
    before = kc.clone()
    with pytest.raises(TridiffInputError, match="^cache_lens: expected"):
        ops.kv_append_(kc, vc, k, k, lens)
    assert torch.equal(kc, before) and int(lens) == 2**32 + 1


def test_commit_capacity_is_optional():
    """Default capacity None: only n >= 0 and an int32-representable result are checked."""
    P = torch.tensor([2, 5], **I32)
    ops.kv_commit_(P, torch.tensor([3, 1], **I32))
    assert P.tolist() == [5, 6]
    with pytest.raises(TridiffInputError, match="^n: expected"):
        ops.kv_commit_(P, -1)
    with pytest.raises(TridiffInputError, match="^n: expected"):
        ops.kv_commit_(P, 2**31 - 6)  # 6 + n > 2**31 - 1
    with pytest.raises(TridiffInputError, match="^capacity: expected"):
        ops.kv_commit_(P, 1, capacity=8.0)
    assert P.tolist() == [5, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_paged_with_layer_dimension(backend):
    """[layers, num_pages, page, Hkv, D] with one block table: one call moves every layer,
    exactly as one call per layer does."""
    layers, page, H, D = 3, 4, 2, 2
    pk, pv = ids_tensor(layers, 6, page, H, D), ids_tensor(layers, 6, page, H, D, start=50_000)
    table = torch.tensor([[4, 1, -1], [0, 5, 2]], **I32)
    P = torch.tensor([3, 6], **I32)
    src = torch.tensor([[1, 3, -1], [4, 0, 1]], **I32)
    need(backend, "kv_compact_", pk, pv, P, src, table)
    want_k, want_v = pk.clone(), pv.clone()
    for i in range(layers):
        ops.kv_compact_(want_k[i], want_v[i], P, src, block_table=table, backend="torch")
    assert not torch.equal(want_k, pk)
    ops.kv_compact_(pk, pv, P, src, block_table=table, backend=backend)
    assert torch.equal(pk, want_k) and torch.equal(pv, want_v)


def test_paged_cache_compacts_all_layers_in_one_call(monkeypatch):
    from tridiff import cache as cache_mod

    c = cache_mod.PagedKVCache(3, 2, 16, 1, 2, page_size=4)
    c.reserve_(12)
    c.commit_(2)
    calls = []
    real = ops.kv_compact_
    monkeypatch.setattr(cache_mod.ops, "kv_compact_", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    c.compact_(torch.tensor([[1, 0], [2, 1]], **I32))
    assert calls == [c.k.shape]


# ---- torch.library ------------------------------------------------------------------------------------

def test_opcheck_kv_ops():
    from tridiff.ops import kv_cache as m

    kc, vc = ids_tensor(2, 8, 1, 2), ids_tensor(2, 8, 1, 2, start=99)
    k, v = ids_tensor(2, 3, 1, 2, start=-9), ids_tensor(2, 3, 1, 2, start=-99)
    P, n = torch.tensor([1, 4], **I32), torch.tensor([3, 2], **I32)
    torch.library.opcheck(m._kv_write_op, (kc, vc, k, v, P, n, None, "torch"))
    torch.library.opcheck(m._kv_append_op, (kc.clone(), vc.clone(), k, v, P.clone(), n, None, "torch"))
    torch.library.opcheck(m._kv_commit_op, (P.clone(), n, "torch"))
    torch.library.opcheck(m._kv_rollback_op, (P.clone(), torch.tensor([0, 1], **I32), "torch"))
    torch.library.opcheck(m._kv_compact_op, (kc, vc, P, torch.tensor([[1, 0]], **I32).expand(2, 2).contiguous(), None, "torch"))
    table, free, count = _pool(6, 2, 3)
    torch.library.opcheck(m._paged_reserve_op, (table, free, count, torch.tensor([3, 5], **I32), 2, "torch"))
    ops.paged_reserve_(table, free, count, torch.tensor([3, 5], **I32), page_size=2)
    torch.library.opcheck(m._paged_release_op, (table, free, count, torch.tensor([1, 0], **I32), 2, "torch"))
