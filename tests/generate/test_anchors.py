"""tridiff.decode.anchors against plain-Python transcriptions of docs/spec.md section 3.5
and of the ANCHORED_QUADRATIC layout (tridiff.modes), on random inputs."""
import itertools

import pytest
import torch

from tridiff.decode import anchors as anc
from tridiff.reference.attention import _anchored


def _conf(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, L, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("L", [pytest.param(L, id=f"L{L}") for L in (2, 5, 16)])
def test_acceptance_scores_are_the_stated_product(L):
    conf = _conf(3, L, L)
    got = anc.acceptance_scores(conf)
    for b in range(3):
        c = [float(x) for x in conf[b]] + [0.0]          # c_L = 0
        for a in range(L):
            want = 1.0
            for j in range(1, a + 1):
                want *= c[j]
            want *= 1.0 - c[a + 1]
            assert abs(float(got[b, a]) - want) < 1e-6
    # a distribution over the acceptance lengths 1..L
    assert torch.allclose(got.sum(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("L, k", [pytest.param(L, k, id=f"L{L}-k{k}") for L, k in ((4, 1), (6, 2), (8, 3), (8, 8))])
def test_choose_anchors_is_the_best_set_containing_zero(L, k):
    """Brute force: among all k-sets containing 0, the chosen one has the largest total
    estimated probability (the most likely acceptance lengths)."""
    conf = _conf(5, L, 10 * L + k)
    got = anc.choose_anchors(conf, k)
    score = anc.acceptance_scores(conf)
    assert got.shape == (5, k) and got.dtype == torch.int64
    for b in range(5):
        S = got[b].tolist()
        assert S == sorted(set(S)) and S[0] == 0 and S[-1] < L
        best = max(sum(float(score[b, a]) for a in (0,) + rest)
                   for rest in itertools.combinations(range(1, L), k - 1))
        assert sum(float(score[b, a]) for a in S) == pytest.approx(best, rel=1e-6)


def test_choose_anchors_breaks_ties_towards_small_anchors():
    conf = torch.ones(1, 8)          # every score 0 but the last: anchor 7 then 1, 2
    assert anc.choose_anchors(conf, 4).tolist() == [[0, 1, 2, 7]]
    assert anc.choose_anchors(torch.zeros(1, 8), 3).tolist() == [[0, 1, 2]]


def test_bitmask_and_offsets_match_the_attention_layout():
    """anchor_bitmask + slot_offsets describe the same groups the reference visibility
    decodes from mode_args (bit 31 included)."""
    L = 32
    S = torch.tensor([[0, 5, 31], [0, 1, 2]])
    bits = anc.anchor_bitmask(S)
    assert bits.dtype == torch.int32
    assert [int(x) & 0xFFFFFFFF for x in bits] == [1 | 1 << 5 | 1 << 31, 0b111]
    off = anc.slot_offsets(S, L)
    assert off.shape == (2, 4 * L)
    for b in range(2):
        want = list(range(L)) + [a + 1 + i for a in S[b].tolist() for i in range(L)]
        assert off[b].tolist() == want
    n = 4 * L
    i = torch.arange(n)[None, :, None]
    vis = _anchored(bits, torch.full((2,), n), i, torch.arange(n)[None, None, :])
    for b in range(2):
        for g, a in enumerate(S[b].tolist()):
            row = L + g * L          # the group's first mask row sees clean slots 0..a
            assert vis[b, row, :L].nonzero().flatten().tolist() == list(range(a + 1))


def _next_draft_transcribed(first, x0, conf, S, n, mask):
    L = len(x0[0])
    a = max(s for s in S if s <= n - 1)
    g = S.index(a)
    draft, c = [first], [1.0]
    for j in range(1, L):
        src = (n - 1) + j - a      # token j is at position P+n+j; slot i of group a at P+a+1+i
        draft.append(x0[g][src] if src < L else mask)
        c.append(conf[g][src] if src < L else 0.0)
    return draft, c


@pytest.mark.parametrize("L, k", [pytest.param(L, k, id=f"L{L}-k{k}") for L, k in ((4, 2), (8, 3), (16, 1))])
def test_next_draft_matches_the_transcription(L, k):
    g = torch.Generator().manual_seed(L + k)
    B = 6
    S = torch.stack([torch.cat([torch.zeros(1, dtype=torch.int64), 1 + torch.randperm(L - 1, generator=g)[:k - 1]
                                .sort().values]) for _ in range(B)])
    x0 = torch.randint(0, 1000, (B, k, L), generator=g)
    conf = torch.rand(B, k, L, generator=g)
    first = torch.randint(0, 1000, (B,), generator=g)
    for n_val in range(1, L + 1):
        n = torch.full((B,), n_val, dtype=torch.int32)
        draft, c = anc.next_draft(first, x0, conf, S, n, mask_id=7777)
        for b in range(B):
            want_d, want_c = _next_draft_transcribed(int(first[b]), x0[b].tolist(), conf[b].tolist(),
                                                     S[b].tolist(), n_val, 7777)
            assert draft[b].tolist() == want_d
            assert torch.allclose(c[b], torch.tensor(want_c, dtype=c.dtype))
