"""KVCache / PagedKVCache through the model: kv="none"|"write"|"commit", rollback,
QUADRATIC compaction, paged page accounting. Data movement is checked bit-exact."""
import pytest
import torch

from tridiff import Mode, ops
from tridiff._checks import TridiffInputError
from tridiff.cache import KVCache, PagedKVCache
from tests.model.support import DEVICE, assert_within_torch_error, ours, run_or_skip, tiny_config


@pytest.fixture(params=[pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
def paged(request):
    return request.param


def toks(B, T, seed=0):
    return torch.randint(0, 512, (B, T), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def logical(cache, layer):
    """[B, capacity, Hkv, D] view of a layer's keys, whatever the layout."""
    k, _ = cache.layer(layer)
    if cache.block_table is None:
        return k
    table = cache.block_table.long().clamp(min=0)
    return k[table].reshape(cache.batch, -1, *k.shape[2:])


def test_cache_layouts_and_views():
    m = ours(tiny_config(), torch.float32)
    c = m.new_cache(3, 40)
    assert isinstance(c, KVCache) and c.k.shape == (2, 3, 40, 2, 32) and c.capacity == 40
    assert c.lens.dtype == torch.int32 and c.lens.tolist() == [0, 0, 0]
    k0, v0 = c.layer(1)
    assert k0.data_ptr() == c.k[1].data_ptr() and v0.data_ptr() == c.v[1].data_ptr()
    p = m.new_cache(3, 40, paged=True, page_size=16)
    assert isinstance(p, PagedKVCache) and p.k.shape == (2, 9, 16, 2, 32) and p.capacity == 48
    assert p.block_table.shape == (3, 3) and int(p.free_count) == 9


def test_kv_none_write_commit(backend, paged):
    m = ours(tiny_config(), torch.float32)
    cache = m.new_cache(2, 64, paged=paged, page_size=8)
    x = toks(2, 20)
    run_or_skip(m, x, cache, modes=Mode.CAUSAL, q_lens=torch.tensor([20, 13], dtype=torch.int32, device=DEVICE),
                kv="commit", backend=backend)
    assert cache.lens.tolist() == [20, 13]
    new = toks(2, 6, seed=1)
    snap = (cache.k.clone(), cache.v.clone(), cache.lens.clone())
    a = m(new, cache, modes=Mode.BIDIR_BLOCK, kv="none", backend=backend)
    assert all(torch.equal(s, t) for s, t in zip(snap, (cache.k, cache.v, cache.lens)))

    before = [logical(cache, i).clone() for i in range(2)]
    b = m(new, cache, modes=Mode.BIDIR_BLOCK, kv="write", backend=backend)
    assert torch.equal(a, b) and cache.lens.tolist() == [20, 13]
    for i in range(2):
        after = logical(cache, i)
        for row, P in enumerate([20, 13]):
            assert torch.equal(after[row, :P], before[i][row, :P])           # committed keys untouched
            assert not torch.equal(after[row, P:P + 6], before[i][row, P:P + 6])  # new keys stored
            assert torch.equal(after[row, P + 6:], before[i][row, P + 6:])   # the rest untouched
    written = [logical(cache, i).clone() for i in range(2)]

    cache.rollback_(cache.lens.clone())  # no-op rollback keeps everything
    m(new, cache, modes=Mode.BIDIR_BLOCK, kv="commit", backend=backend)
    assert cache.lens.tolist() == [26, 19]
    for i in range(2):  # same bytes as the "write" forward
        assert torch.equal(logical(cache, i), written[i])


def test_rollback_then_decode_equals_shorter_sequence(backend, paged):
    """Commit a whole verify block, roll back to an accepted prefix, continue: equals a
    fresh causal run of the kept tokens (paged: pages past the kept length return)."""
    c = tiny_config()
    m32, m64 = ours(c, torch.float32), ours(c, torch.float64)
    x = toks(1, 90, seed=2)
    cache = m32.new_cache(1, 96, paged=paged, page_size=16)
    run_or_skip(m32, x[:, :50], cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
    m32(x[:, 50:82], cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
    assert cache.lens.tolist() == [82]
    if paged:
        assert int(cache.free_count) == cache.num_pages - 6
    cache.rollback_(57)
    assert cache.lens.tolist() == [57]
    if paged:
        assert (cache.block_table >= 0).sum().item() == 4 and int(cache.free_count) == cache.num_pages - 4
    nxt = x[:, 57:66]
    got = m32(nxt, cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
    truth = m64(x[:, :66], m64.new_cache(1, 66), backend=backend)[:, 57:]
    base = m32(x[:, :66], m32.new_cache(1, 66), backend=backend)[:, 57:]
    assert_within_torch_error(got, truth, base, "decode after rollback")


def test_quadratic_write_compact_commit_rollback(backend, paged):
    """QUADRATIC forward with kv="write", keep the d slots (compact_), commit L, roll
    back to P+accepted: the cache then serves exactly like a causal run of the kept
    drafts (their KV in a QUADRATIC forward is causal over cache + d_0..d_a)."""
    c = tiny_config()
    L, P_rows, acc = 3, [61, 40], [2, 3]
    m32, m64 = ours(c, torch.float32), ours(c, torch.float64)
    prompt = toks(2, max(P_rows), seed=3)
    drafts = toks(2, L, seed=4)
    cache = m32.new_cache(2, 96, paged=paged, page_size=16)
    run_or_skip(m32, prompt, cache, modes=Mode.CAUSAL, kv="commit", backend=backend,
                q_lens=torch.tensor(P_rows, dtype=torch.int32, device=DEVICE))
    S = L + 1
    new = torch.full((2, L * S), c.mask_token_id, dtype=torch.long, device=DEVICE)
    new[:, ::S] = drafts
    a = torch.arange(L, device=DEVICE).repeat_interleave(S)
    b = torch.arange(S, device=DEVICE).repeat(L)
    positions = cache.lens.long()[:, None] + (a + b)[None]
    m32(new, cache, modes=Mode.QUADRATIC, mode_args=L, positions=positions, kv="write", backend=backend)
    cache.compact_(ops.quadratic_verify_slots(L, 2, device=DEVICE))
    cache.commit_(L)
    cache.rollback_(torch.tensor([P + n for P, n in zip(P_rows, acc)], dtype=torch.int32, device=DEVICE))
    nxt = toks(2, 1, seed=5)
    got = m32(nxt, cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
    for row, (P, n) in enumerate(zip(P_rows, acc)):
        seq = torch.cat([prompt[row:row + 1, :P], drafts[row:row + 1, :n], nxt[row:row + 1]], 1)
        truth = m64(seq, m64.new_cache(1, seq.shape[1]), backend=backend)[:, -1]
        base = m32(seq, m32.new_cache(1, seq.shape[1]), backend=backend)[:, -1]
        assert_within_torch_error(got[row:row + 1, 0], truth, base, f"row {row} after quadratic compaction")


def test_paged_and_contiguous_give_identical_logits(backend):
    m = ours(tiny_config(), torch.float32)
    x = toks(2, 70, seed=6)
    out = []
    for paged in (False, True):
        cache = m.new_cache(2, 96, paged=paged, page_size=16)  # same capacity (96)
        first = run_or_skip(m, x[:, :40], cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
        second = m(x[:, 40:], cache, modes=Mode.CAUSAL_THEN_BIDIR, mode_args=8, kv="write", backend=backend)
        out.append((first, second))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_reset_and_bad_arguments():
    m = ours(tiny_config(), torch.float32)
    cache = m.new_cache(1, 32, paged=True, page_size=8)
    m(toks(1, 20), cache, kv="commit")
    assert int(cache.free_count) == 1
    cache.reset_()
    assert cache.lens.tolist() == [0] and int(cache.free_count) == 4 and (cache.block_table == -1).all()
    with pytest.raises(TridiffInputError, match="kv"):
        m(toks(1, 4), cache, kv="append")
    with pytest.raises(TridiffInputError, match="cache"):
        m(toks(2, 4), cache)
    with pytest.raises(TridiffInputError, match="tokens"):
        m(torch.full((1, 4), 512, device=DEVICE), cache)
    with pytest.raises(TridiffInputError, match="positions"):
        m(toks(1, 4), cache, positions=torch.zeros(1, 3, dtype=torch.long, device=DEVICE))
    full = m.new_cache(1, 8)
    with pytest.raises(TridiffInputError, match="cache_lens"):  # would write past capacity
        m(toks(1, 9), full, kv="commit")
    assert full.lens.tolist() == [0] and (full.k == 0).all()  # refused before writing
    with pytest.raises(TridiffInputError, match="target_lens"):  # not enough pages
        m(toks(1, 40), cache, kv="write")
