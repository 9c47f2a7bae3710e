"""accept_linear / accept_quadratic / accept_rejection: hand-built exact cases, eos handling,
batch = per-row calls, the rejection rule bit for bit and its losslessness in distribution,
bad input, torch.library registration."""
import pytest
import torch

from tests.ops.stats import chi2_test, power_against
from tests.ops.support import DEVICE, I32, I64, assert_names_argument, need, opcheck
from tridiff import ops
from tridiff.reference.philox import ACCEPT, RESIDUAL, SAMPLE, gumbel, uniform

FIELDS = ("n_accepted", "tokens", "n_emitted", "next_token", "new_cache_lens", "hit_eos")
QFIELDS = ("n_accepted", "tokens", "n_emitted", "next_draft", "new_cache_lens", "hit_eos")


def peaked_logits(argmax_ids, V, gen, dtype=torch.float32):
    """Logits whose argmax is argmax_ids (any shape [..]) -> [.., V]; noise elsewhere."""
    ids = torch.as_tensor(argmax_ids)
    x = torch.rand(*ids.shape, V, generator=gen) * 2 - 1
    x.scatter_(-1, ids[..., None], 3.0)
    return x.to(dtype).to(DEVICE)


def as_lists(res, fields):
    return {f: getattr(res, f).tolist() for f in fields}


def assert_same(a, b, fields=FIELDS):
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f


# ---- accept_linear -----------------------------------------------------------------------------------

# ar = the verify argmax per row (n+1 = 5 positions), drafts n = 4, eos = 9.
LINEAR_AR = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 9, 3, 4, 5], [1, 2, 9, 4, 5], [1, 2, 3, 9, 5]]
LINEAR_DRAFT = [[1, 2, 3, 4], [0, 2, 3, 4], [1, 2, 0, 4], [1, 9, 3, 0], [1, 2, 0, 0], [1, 0, 3, 9]]
LINEAR_P = [0, 5, 17, 100, 3, 8]


def linear_case(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (peaked_logits(LINEAR_AR, 10, g, dtype), torch.tensor(LINEAR_DRAFT, **I64),
            torch.tensor(LINEAR_P, **I32))


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
def test_linear_hand_built(backend, dtype):
    logits, draft, P = linear_case(dtype)
    need(backend, "accept_linear", logits, draft, P, 9, 0.0, None, None)
    res = ops.accept_linear(logits, draft, P, eos_id=9, backend=backend)
    assert isinstance(res, ops.AcceptResult)
    assert as_lists(res, FIELDS) == {
        # rows: all accepted, none, middle (a later match does not count), eos inside the
        # accepted run, eos as the correction token, eos only past the accepted range
        "n_accepted": [5, 1, 3, 4, 3, 2],
        "tokens": [[1, 2, 3, 4, 5], [1, -1, -1, -1, -1], [1, 2, 3, -1, -1], [1, 9, -1, -1, -1],
                   [1, 2, 9, -1, -1], [1, 2, -1, -1, -1]],
        "n_emitted": [5, 1, 3, 2, 3, 2],
        "next_token": [5, 1, 3, 4, 9, 2],
        "new_cache_lens": [5, 6, 20, 104, 6, 10],
        "hit_eos": [False, False, False, True, True, False],
    }
    assert res.n_accepted.dtype == torch.int32 and res.n_emitted.dtype == torch.int32
    assert res.new_cache_lens.dtype == torch.int32 and res.hit_eos.dtype == torch.bool
    assert res.tokens.dtype == torch.int64 and res.next_token.dtype == torch.int64


def test_linear_eos_disabled(backend):
    logits, draft, P = linear_case()
    need(backend, "accept_linear", logits, draft, P, -1, 0.0, None, None)
    res = ops.accept_linear(logits, draft, P, eos_id=-1, backend=backend)
    assert res.tokens.tolist()[3:5] == [[1, 9, 3, 4, -1], [1, 2, 9, -1, -1]]
    assert res.n_emitted.tolist() == res.n_accepted.tolist() == [5, 1, 3, 4, 3, 2]
    assert not bool(res.hit_eos.any())


def test_linear_batch_equals_per_row_calls(backend):
    logits, draft, P = linear_case()
    need(backend, "accept_linear", logits, draft, P, 9, 0.0, None, None)
    whole = ops.accept_linear(logits, draft, P, eos_id=9, backend=backend)
    for b in range(logits.shape[0]):
        one = ops.accept_linear(logits[b:b + 1], draft[b:b + 1], P[b:b + 1], eos_id=9, backend=backend)
        for f in FIELDS:
            assert torch.equal(getattr(one, f)[0], getattr(whole, f)[b]), (b, f)


def test_linear_without_drafts(backend):
    g = torch.Generator().manual_seed(2)
    logits = peaked_logits([[4], [7]], 8, g)
    draft, P = torch.zeros(2, 0, **I64), torch.tensor([3, 0], **I32)
    need(backend, "accept_linear", logits, draft, P, 7, 0.0, None, None)
    res = ops.accept_linear(logits, draft, P, eos_id=7, backend=backend)
    assert as_lists(res, FIELDS) == {"n_accepted": [1, 1], "tokens": [[4], [7]], "n_emitted": [1, 1],
                                     "next_token": [4, 7], "new_cache_lens": [4, 1], "hit_eos": [False, True]}


def test_linear_sampled_verify_uses_the_sample_stream(backend):
    # T > 0 (the reference's lossy rule): ar[i] is exactly ops.sample's token at position i.
    g = torch.Generator().manual_seed(3)
    B, n, V, temp = 32, 6, 16, 0.5
    logits = (torch.randn(B, n + 1, V, generator=g) * 3).to(DEVICE)
    seed, offset = torch.arange(B, **I64) + 40, torch.arange(B, **I64) % 3
    ar = ops.sample(logits, temperature=temp, seed=seed, offset=offset)
    # Drafts that follow ar for a random number of positions, then differ.
    k = torch.randint(0, n + 1, (B, 1), generator=g).to(DEVICE)
    col = torch.arange(n, device=DEVICE)[None, :]
    draft = torch.where(col < k, ar[:, :n], (ar[:, :n] + 1) % V)
    P = torch.zeros(B, **I32)
    need(backend, "accept_linear", logits, draft, P, -1, temp, seed, offset)
    res = ops.accept_linear(logits, draft, P, eos_id=-1, temperature=temp, seed=seed, offset=offset,
                            backend=backend)
    assert torch.equal(res.n_accepted.long(), k[:, 0] + 1)
    emitted = torch.arange(n + 1, device=DEVICE)[None, :] < k + 1
    assert torch.equal(res.tokens, torch.where(emitted, ar, -1))
    assert torch.equal(res.next_token, ar.gather(1, k)[:, 0])


# ---- accept_quadratic --------------------------------------------------------------------------------

QL, QV, QEOS = 3, 12, 9
Q_DRAFT = [[4, 5, 6], [4, 5, 6], [4, 5, 6], [4, 9, 6], [9, 5, 6]]
# PRED[b][a] = (pred[a, 0], pred[a, 2], pred[a, 3]): slot 0 = the AR prediction after d_a.
Q_PRED = [[(5, 1, 2), (6, 3, 4), (7, 8, 0)],
          [(7, 1, 2), (6, 3, 4), (7, 8, 0)],
          [(5, 1, 2), (0, 3, 4), (7, 8, 0)],
          [(9, 1, 2), (6, 3, 4), (2, 5, 1)],
          [(5, 1, 2), (6, 3, 4), (3, 3, 3)]]


def quadratic_case():
    """logits [B, L*(L+1), V] with the PRED argmaxes. Slot 1's own argmax is never pred[a, 0]:
    it is the next draft token where slot 0 rejects it (so reading slot 1 would accept), else 11."""
    B = len(Q_DRAFT)
    ids = torch.zeros(B, QL, QL + 1, dtype=torch.int64)
    for b in range(B):
        for a in range(QL):
            p0, p2, p3 = Q_PRED[b][a]
            nxt = Q_DRAFT[b][a + 1] if a + 1 < QL else None
            ids[b, a] = torch.tensor([p0, nxt if nxt is not None and nxt != p0 else 11, p2, p3])
    logits = peaked_logits(ids, QV, torch.Generator().manual_seed(4)).reshape(B, QL * (QL + 1), QV)
    return logits, torch.tensor(Q_DRAFT, **I64), torch.tensor([10, 0, 7, 2, 5], **I32)


def test_quadratic_hand_built(backend):
    logits, draft, P = quadratic_case()
    need(backend, "accept_quadratic", logits, draft, P, QEOS)
    res = ops.accept_quadratic(logits, draft, P, eos_id=QEOS, backend=backend)
    assert isinstance(res, ops.QuadraticAcceptResult)
    assert as_lists(res, QFIELDS) == {
        # rows: all accepted; slot 0 rejects d1 (slot 1 would accept it); one accepted;
        # eos inside the accepted drafts; eos as d_0
        "n_accepted": [3, 1, 2, 3, 3],
        "tokens": [[4, 5, 6], [4, -1, -1], [4, 5, -1], [4, 9, -1], [9, -1, -1]],
        "n_emitted": [3, 1, 2, 2, 1],
        # next_draft = pred[accepted-1, 1:] with slot 1 replaced by slot 0's prediction
        "next_draft": [[7, 8, 0], [7, 1, 2], [0, 3, 4], [2, 5, 1], [3, 3, 3]],
        "new_cache_lens": [13, 1, 9, 5, 8],
        "hit_eos": [False, False, False, True, True],
    }


def test_quadratic_batch_equals_per_row_and_eos_disabled(backend):
    logits, draft, P = quadratic_case()
    need(backend, "accept_quadratic", logits, draft, P, -1)
    whole = ops.accept_quadratic(logits, draft, P, eos_id=-1, backend=backend)
    assert whole.tokens.tolist()[3:] == [[4, 9, 6], [9, 5, 6]] and not bool(whole.hit_eos.any())
    for b in range(logits.shape[0]):
        one = ops.accept_quadratic(logits[b:b + 1], draft[b:b + 1], P[b:b + 1], eos_id=-1, backend=backend)
        for f in QFIELDS:
            assert torch.equal(getattr(one, f)[0], getattr(whole, f)[b]), (b, f)


def test_quadratic_block_of_one(backend):
    g = torch.Generator().manual_seed(5)
    logits = peaked_logits([[3, 8]], 10, g).reshape(1, 2, 10)  # L = 1: slots (d_0, next)
    draft, P = torch.tensor([[6]], **I64), torch.tensor([4], **I32)
    need(backend, "accept_quadratic", logits, draft, P, -1)
    res = ops.accept_quadratic(logits, draft, P, eos_id=-1, backend=backend)
    # The only next-draft slot is slot 1, which takes slot 0's prediction (3), not its own (8).
    assert as_lists(res, QFIELDS) == {"n_accepted": [1], "tokens": [[6]], "n_emitted": [1],
                                      "next_draft": [[3]], "new_cache_lens": [5], "hit_eos": [False]}


# ---- accept_rejection --------------------------------------------------------------------------------

def rejection_inputs(B, n, V, gen, spread=1.5):
    tl = (torch.randn(B, n + 1, V, generator=gen) * spread).to(DEVICE)
    dl = (tl[:, :n].cpu() + torch.randn(B, n, V, generator=gen) * spread).to(DEVICE)
    return tl, dl


def draw_drafts(draft_logits, temp, gen):
    """Drafts sampled from p_d = softmax(draft_logits / T) with an independent torch.Generator."""
    B, n, V = draft_logits.shape
    p = torch.softmax(draft_logits.double().cpu() / temp, -1).reshape(B * n, V)
    return torch.multinomial(p, 1, generator=gen).view(B, n).to(DEVICE)


def test_rejection_at_temperature_zero_is_linear_greedy(backend):
    g = torch.Generator().manual_seed(6)
    B, n, V = 8, 5, 20
    tl, dl = rejection_inputs(B, n, V, g)
    ar = tl.argmax(-1)
    k = torch.randint(0, n + 1, (B, 1), generator=g).to(DEVICE)
    draft = torch.where(torch.arange(n, device=DEVICE)[None] < k, ar[:, :n], (ar[:, :n] + 3) % V)
    draft[2, 1] = 5
    P = torch.arange(B, **I32)
    need(backend, "accept_rejection", tl, dl, draft, P, int(ar[0, 0]), 0.0, None, None)
    got = ops.accept_rejection(tl, dl, draft, P, eos_id=int(ar[0, 0]), temperature=0.0, backend=backend)
    want = ops.accept_linear(tl, draft, P, eos_id=int(ar[0, 0]), backend="torch")
    assert_same(got, want)


def plain_rejection(tl, dl, draft, P, eos_id, temp, seed, offset):
    """The contract's rule written as per-row loops (independent of the vectorised reference)."""
    B, n1, V = tl.shape
    T = torch.tensor(temp, device=tl.device)
    v = torch.arange(V, device=tl.device)
    out = {f: [] for f in FIELDS}
    for b in range(B):
        toks = []
        for i in range(n1 - 1):
            et = (tl[b, i].float() / T - (tl[b, i].float() / T).max()).exp()
            ed = (dl[b, i].float() / T - (dl[b, i].float() / T).max()).exp()
            pt, pd = et / et.sum(), ed / ed.sum()
            x = int(draft[b, i])
            if bool(uniform(seed[b], 0, i, ACCEPT, offset[b]) * pd[x] < pt[x]):
                toks.append(x)
                continue
            r = (pt - pd).clamp(min=0)
            r = r if bool((r > 0).any()) else pt
            toks.append(int(torch.argmax(torch.log(r) + gumbel(seed[b], v, i, RESIDUAL, offset[b]))))
            break
        else:
            g = gumbel(seed[b], v, n1 - 1, SAMPLE, offset[b])
            toks.append(int(torch.argmax(tl[b, n1 - 1].float() / T + g)))
        emitted = toks
        if eos_id in toks:
            emitted = toks[:toks.index(eos_id) + 1]
        out["n_accepted"].append(len(toks))
        out["tokens"].append(emitted + [-1] * (n1 - len(emitted)))
        out["n_emitted"].append(len(emitted))
        out["next_token"].append(toks[-1])
        out["new_cache_lens"].append(int(P[b]) + len(toks))
        out["hit_eos"].append(eos_id in toks)
    return out


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
def test_rejection_matches_the_rule_bit_for_bit(backend, dtype):
    g = torch.Generator().manual_seed(7)
    B, n, V, temp = 24, 4, 37, 0.9
    tl, dl = rejection_inputs(B, n, V, g)
    tl, dl = tl.to(dtype), dl.to(dtype)
    draft = draw_drafts(dl.float(), temp, g)
    P = torch.arange(B, **I32) * 3
    seed, offset = torch.arange(B, **I64) * 1000 + 1, torch.arange(B, **I64) % 2
    need(backend, "accept_rejection", tl, dl, draft, P, 5, temp, seed, offset)
    res = ops.accept_rejection(tl, dl, draft, P, eos_id=5, temperature=temp, seed=seed, offset=offset,
                               backend=backend)
    want = plain_rejection(tl, dl, draft, P, 5, temp, seed, offset)
    assert as_lists(res, FIELDS) == want
    # The case mixes outcomes: some rows reject early, some accept everything, some hit eos.
    assert {1, n + 1} <= set(want["n_accepted"]) and any(want["hit_eos"])


def test_rejection_invariants_and_rows_independent(backend):
    g = torch.Generator().manual_seed(8)
    B, n, V, temp = 64, 5, 50, 1.3
    tl, dl = rejection_inputs(B, n, V, g)
    draft = draw_drafts(dl, temp, g)
    P = torch.randint(0, 1000, (B,), generator=g).to(**I32)
    seed, offset = torch.randint(-2**62, 2**62, (B,), generator=g).to(DEVICE), torch.arange(B, **I64)
    need(backend, "accept_rejection", tl, dl, draft, P, -1, temp, seed, offset)
    res = ops.accept_rejection(tl, dl, draft, P, eos_id=-1, temperature=temp, seed=seed, offset=offset,
                               backend=backend)
    acc = res.n_accepted.long()
    assert bool(((acc >= 1) & (acc <= n + 1)).all())
    col = torch.arange(n + 1, device=DEVICE)[None, :]
    live = col < acc[:, None]
    assert torch.equal(res.tokens[:, :n][col[:, :n] < acc[:, None] - 1], draft[col[:, :n] < acc[:, None] - 1])
    assert bool((res.tokens[live] >= 0).all() and (res.tokens[live] < V).all())
    assert bool((res.tokens[~live] == -1).all())
    assert torch.equal(res.next_token, res.tokens.gather(1, acc[:, None] - 1)[:, 0])
    assert torch.equal(res.n_emitted, res.n_accepted) and torch.equal(res.new_cache_lens, P + res.n_accepted)
    again = ops.accept_rejection(tl, dl, draft, P, eos_id=-1, temperature=temp, seed=seed, offset=offset,
                                 backend=backend)
    assert_same(again, res)
    for b in (0, 17, 63):
        one = ops.accept_rejection(tl[b:b + 1], dl[b:b + 1], draft[b:b + 1], P[b:b + 1], eos_id=-1,
                                   temperature=temp, seed=seed[b:b + 1], offset=offset[b:b + 1], backend=backend)
        for f in FIELDS:
            assert torch.equal(getattr(one, f)[0], getattr(res, f)[b]), (b, f)


def test_rejection_exact_limits(backend):
    g = torch.Generator().manual_seed(9)
    B, n, V, temp = 16, 3, 24, 0.8
    tl, _ = rejection_inputs(B, n, V, g)
    draft = draw_drafts(tl[:, :n], temp, g)
    P = torch.zeros(B, **I32)
    seed, offset = torch.arange(B, **I64), torch.zeros(B, **I64)
    need(backend, "accept_rejection", tl, tl[:, :n], draft, P, -1, temp, seed, offset)
    # p_d == p_t: every draft is accepted (u < 1), and the bonus is ops.sample's token at t = n.
    same = ops.accept_rejection(tl, tl[:, :n].clone(), draft, P, eos_id=-1, temperature=temp, seed=seed,
                                offset=offset, backend=backend)
    assert same.n_accepted.tolist() == [n + 1] * B
    bonus = ops.sample(tl, temperature=temp, seed=seed, offset=offset)[:, n]
    assert torch.equal(same.tokens, torch.cat([draft, bonus[:, None]], 1))
    # p_t(draft) == 0: the first draft is always rejected and never re-emitted by the residual.
    tl0 = tl.clone()
    tl0[:, 0].scatter_(-1, draft[:, :1], float("-inf"))
    rej = ops.accept_rejection(tl0, tl[:, :n], draft, P, eos_id=-1, temperature=temp, seed=seed,
                               offset=offset, backend=backend)
    assert rej.n_accepted.tolist() == [1] * B
    assert bool((rej.tokens[:, 0] != draft[:, 0]).all())


# Target / draft logits of the distribution test (V = 6, n = 2 drafts, T = 0.8).
DIST_T = torch.tensor([[1.0, 0.2, -0.5, 0.8, 0.0, -1.0],
                       [-0.3, 1.1, 0.4, -0.8, 0.9, 0.1],
                       [0.5, -0.6, 0.3, 1.2, -0.2, 0.7]], dtype=torch.float64)
DIST_D = torch.tensor([[0.2, 1.0, 0.3, -0.5, 0.6, 0.1],
                       [0.8, 0.0, -0.7, 0.6, 0.2, 1.0]], dtype=torch.float64)


def test_rejection_is_lossless_in_distribution(backend):
    R, temp = 100_000, 0.8
    pt, pd = torch.softmax(DIST_T / temp, -1), torch.softmax(DIST_D / temp, -1)
    tl = DIST_T.float().to(DEVICE).expand(R, 3, 6).contiguous()
    dl = DIST_D.float().to(DEVICE).expand(R, 2, 6).contiguous()
    gen = torch.Generator().manual_seed(2024)
    draft = torch.stack([torch.multinomial(pd[i], R, replacement=True, generator=gen) for i in range(2)],
                        1).to(DEVICE)
    P = torch.zeros(R, **I32)
    seed, offset = torch.arange(R, **I64), torch.full((R,), 7, **I64)
    need(backend, "accept_rejection", tl, dl, draft, P, -1, temp, seed, offset)
    res = ops.accept_rejection(tl, dl, draft, P, eos_id=-1, temperature=temp, seed=seed, offset=offset,
                               backend=backend)
    acc, tok = res.n_accepted.cpu(), res.tokens.cpu()
    first = torch.bincount(tok[:, 0], minlength=6).double()
    second = torch.bincount(tok[acc >= 2, 1], minlength=6).double()
    third = torch.bincount(tok[acc == 3, 2], minlength=6).double()
    # Emitted token i follows p_t(i) whatever the drafts were: lossless.
    assert chi2_test(first, pt[0]) > 1e-6
    assert chi2_test(second, pt[1]) > 1e-6
    assert chi2_test(third, pt[2]) > 1e-6
    # Acceptance rates sum_x min(p_t, p_d) (binomial, 5 standard deviations).
    beta = torch.minimum(pt[:2], pd).sum(-1)
    for got, n_trials, b in ((float((acc >= 2).double().mean()), R, beta[0]),
                             (float((acc == 3).sum() / (acc >= 2).sum()), int((acc >= 2).sum()), beta[1])):
        assert abs(got - float(b)) < 5 * float((b * (1 - b) / n_trials).sqrt())

    # The same tests reject the usual mistakes. Mean chi-square statistics they would produce
    # (5 degrees of freedom, the 1e-6 cut is at 36): residual from p_t 1.2e4, residual with
    # swapped operands 1.1e5, residual from p_d 7.3e4, p_t residual at position 1 4.2e3, bonus
    # from p_t(n-1) 8.4e4, no temperature 2.1e3.
    def residual_variant(i, r):
        return torch.minimum(pt[i], pd[i]) + (1 - beta[i]) * r / r.sum()
    wrong = {
        # residual sampled from p_t instead of max(0, p_t - p_d)
        "residual = p_t": (first, pt[0], residual_variant(0, pt[0])),
        # residual max(0, p_d - p_t) (operands swapped)
        "residual swapped": (first, pt[0], residual_variant(0, (pd[0] - pt[0]).clamp(min=0))),
        # no residual at all: resample from p_d
        "residual = p_d": (first, pt[0], residual_variant(0, pd[0])),
        # second position's residual from p_t
        "residual = p_t (pos 1)": (second, pt[1], residual_variant(1, pt[1])),
        # bonus from the last draft position's target distribution instead of position n
        "bonus from p_t(n-1)": (third, pt[2], pt[1]),
        # probabilities without the temperature: everything then follows softmax(l) instead
        "no temperature": (first, pt[0], torch.softmax(DIST_T[0], -1)),
    }
    for name, (counts, p, q) in wrong.items():
        assert power_against(int(counts.sum()), p, q) < 1e-9, name


# ---- bad input -------------------------------------------------------------------------------------

def _bad_calls():
    B, n, V = 2, 3, 10
    tl, dl = torch.randn(B, n + 1, V), torch.randn(B, n, V)
    d, P = torch.zeros(B, n, dtype=torch.int64), torch.zeros(B, dtype=torch.int32)
    s = torch.zeros(B, dtype=torch.int64)
    ql, qd = torch.randn(B, 12, V), torch.zeros(B, 3, dtype=torch.int64)
    lin = ops.accept_linear
    return [
        ("target_logits", lambda: lin(tl.long(), d, P, eos_id=1)),
        ("target_logits", lambda: lin(tl[0], d, P, eos_id=1)),
        ("target_logits", lambda: lin(torch.randn(B, 0, V), d[:, :0], P, eos_id=1)),
        ("draft_tokens", lambda: lin(tl, d.int(), P, eos_id=1)),
        ("draft_tokens", lambda: lin(tl, d[:, :2], P, eos_id=1)),
        ("draft_tokens", lambda: lin(tl, d + V, P, eos_id=1)),
        ("draft_tokens", lambda: lin(tl, d - 1, P, eos_id=1)),
        ("cache_lens", lambda: lin(tl, d, P.long(), eos_id=1)),
        ("cache_lens", lambda: lin(tl, d, P[:1], eos_id=1)),
        ("cache_lens", lambda: lin(tl, d, P - 1, eos_id=1)),
        ("eos_id", lambda: lin(tl, d, P, eos_id=V)),
        ("eos_id", lambda: lin(tl, d, P, eos_id=-2)),
        ("eos_id", lambda: lin(tl, d, P, eos_id=1.0)),
        ("eos_id", lambda: lin(tl, d, P, eos_id=True)),
        ("temperature", lambda: lin(tl, d, P, eos_id=1, temperature=-1.0)),
        ("seed", lambda: lin(tl, d, P, eos_id=1, temperature=1.0, offset=s)),
        ("offset", lambda: lin(tl, d, P, eos_id=1, temperature=1.0, seed=s, offset=s[:1])),
        ("draft_logits", lambda: ops.accept_rejection(tl, dl[:, :2], d, P, eos_id=1, temperature=1.0,
                                                      seed=s, offset=s)),
        ("draft_logits", lambda: ops.accept_rejection(tl, dl.long(), d, P, eos_id=1, temperature=1.0,
                                                      seed=s, offset=s)),
        ("draft_tokens", lambda: ops.accept_rejection(tl, dl, d + V, P, eos_id=1, temperature=1.0,
                                                      seed=s, offset=s)),
        ("seed", lambda: ops.accept_rejection(tl, dl, d, P, eos_id=1, temperature=0.5)),
        ("temperature", lambda: ops.accept_rejection(tl, dl, d, P, eos_id=1, temperature=float("inf"),
                                                     seed=s, offset=s)),
        ("logits", lambda: ops.accept_quadratic(ql[0], qd, P, eos_id=1)),
        ("draft", lambda: ops.accept_quadratic(ql, qd[:, :2], P, eos_id=1)),
        ("draft", lambda: ops.accept_quadratic(ql, qd.int(), P, eos_id=1)),
        ("draft", lambda: ops.accept_quadratic(ql, qd + V, P, eos_id=1)),
        ("cache_lens", lambda: ops.accept_quadratic(ql, qd, P.long(), eos_id=1)),
        ("eos_id", lambda: ops.accept_quadratic(ql, qd, P, eos_id=V)),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_input_names_the_argument(i):
    assert_names_argument(*_bad_calls()[i])


# ---- torch.library registration ----------------------------------------------------------------------

def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    B, n, V = 3, 4, 11
    tl, dl = rejection_inputs(B, n, V, g)
    d = draw_drafts(dl, 1.0, g)
    P = torch.tensor([0, 4, 9], **I32)
    s, o = torch.tensor([5, 6, 7], **I64), torch.tensor([0, 1, 0], **I64)
    ql, qd = quadratic_case()[:2]
    return [
        ("accept_linear", (tl, d, P, 3, 0.0, None, None)),
        ("accept_linear", (tl.half(), d, P, -1, 0.7, s, o)),
        ("accept_rejection", (tl, dl, d, P, 3, 0.0, None, None)),
        ("accept_rejection", (tl.bfloat16(), dl, d, P, 3, 1.1, s, o)),
        ("accept_quadratic", (ql, qd, torch.arange(5, **I32), QEOS)),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_cases())))
def test_opcheck(backend, case):
    opcheck(backend, *_opcheck_cases()[case])


# ---- torch.compile -----------------------------------------------------------------------------------

def _decode_step(tl, dl, d, P, s, o, blk, x0, cf, ql, qd):
    lin = ops.accept_linear(tl, d, P, eos_id=2)
    rej = ops.accept_rejection(tl, dl, d, P, eos_id=2, temperature=0.7, seed=s, offset=o)
    tok = ops.sample(tl[:, 0], temperature=0.5, seed=s, offset=o)
    x, c = ops.diffusion_confidence(tl, temperature=0.0)
    unm = ops.diffusion_unmask(blk, x0, cf, mask_id=5, threshold=0.9)
    quad = ops.accept_quadratic(ql, qd, P, eos_id=2)
    return (*lin, *rej, tok, x, c, *unm, *quad)


def test_ops_compile_fullgraph_and_match_eager():
    g = torch.Generator().manual_seed(0)
    B, n, V, L = 2, 3, 10, 2
    args = (torch.randn(B, n + 1, V, generator=g), torch.randn(B, n, V, generator=g),
            torch.randint(0, V, (B, n), generator=g), torch.tensor([0, 4], dtype=torch.int32),
            torch.arange(B), torch.zeros(B, dtype=torch.int64), torch.full((B, 4), 5),
            torch.randint(0, 9, (B, 4), generator=g), torch.rand(B, 4, generator=g),
            torch.randn(B, L * (L + 1), V, generator=g), torch.randint(0, V, (B, L), generator=g))
    args = tuple(a.to(DEVICE) for a in args)
    want = _decode_step(*args)
    got = torch.compile(_decode_step, backend="aot_eager", fullgraph=True)(*args)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
