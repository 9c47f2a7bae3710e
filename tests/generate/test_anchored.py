"""Pruned (anchored) quadratic self-speculation, generate(mode="quadratic-spec", anchors=...):
the output is AR greedy's for every anchor choice, block length and batch; with every
anchor it drafts exactly what full quadratic drafts; its forwards have the documented
layout; bad anchors are refused."""
import pytest
import torch
from gen_support import Patched, check_eos_truncates, greedy_ar, oracle_edit, peak

from tridiff import Mode
from tridiff._checks import TridiffInputError
from tridiff.generate import generate


def _bits(mode_args, b):
    return int(torch.as_tensor(mode_args).reshape(-1)[b]) & 0xFFFFFFFF


def _check_forwards(pm, r, L, k):
    """Forward 0 is the CAUSAL_THEN_BIDIR draft; then one ANCHORED_QUADRATIC forward of
    L(k+1) tokens per iteration: the draft in the clean slots at P..P+L-1, then the masks
    of each anchor a at P+a+1..P+a+L, anchor 0 always present."""
    assert r.nfe == len(pm.calls) == 1 + r.iterations
    assert pm.calls[0]["modes"] == Mode.CAUSAL_THEN_BIDIR
    for c in pm.calls[1:]:
        assert c["modes"] == Mode.ANCHORED_QUADRATIC and c["tokens"].shape[1] == L * (k + 1)
        for b in range(c["tokens"].shape[0]):
            bits = _bits(c["mode_args"], b)
            S = [a for a in range(32) if bits >> a & 1]
            assert len(S) == k and S[0] == 0 and S[-1] < L
            P = int(c["positions"][b, 0])
            want = list(range(P, P + L)) + [P + a + 1 + i for a in S for i in range(L)]
            assert c["positions"][b].tolist() == want


def _calibrated_oracle(conts, V, wrong=lambda p: p % 5 == 3):
    """oracle_edit whose confidences tell the truth: a right draft token is a sharp peak,
    a wrong one wins with probability about one fifth (four runners-up just below it)."""
    base = oracle_edit(conts, V=V, wrong=wrong)

    def edit(logits, info):
        logits = base(logits, info)
        B, T = info["tokens"].shape
        for b in range(B):
            for t in range(T):
                p = int(info["positions"][b, t])
                if wrong(p) and float(logits[b, t].max()) == 20.0:   # an oracle-written wrong peak
                    tok = int(logits[b, t].argmax())
                    logits[b, t] = -20.0
                    logits[b, t, tok] = 1.0
                    for r in range(1, 5):
                        logits[b, t, (tok + r) % V] = 1.0 - 1e-3
        return logits

    return edit


@pytest.mark.parametrize("L", [pytest.param(L, id=f"L{L}") for L in (8, 16, 32)])
@pytest.mark.parametrize("anchors", [pytest.param(1, id="k1"), pytest.param(2, id="k2"), pytest.param(4, id="k4"),
                                     pytest.param("fixed", id="fixed0137")])
def test_anchored_equals_ar_with_multi_token_acceptance(model, prompts, L, anchors):
    p, n = prompts[1], 2 * L
    ar = greedy_ar(model, p, n + L)
    pm = Patched(model, oracle_edit([p + ar], V=model.config.vocab_size))
    S = (0, 1, 3, 7) if anchors == "fixed" else anchors
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                 anchors=S).results[0]
    assert r.tokens == ar[:n]
    assert r.mean_accepted > 1.5 and r.iterations < n
    _check_forwards(pm, r, L, len(S) if isinstance(S, tuple) else S)


@pytest.mark.parametrize("anchors", [pytest.param(1, id="k1"), pytest.param(3, id="k3"),
                                     pytest.param((0, 2), id="fixed02")])
def test_anchored_random_weights_equals_ar(model, prompts, anchors):
    p, n, L = prompts[2], 8, 4
    pm = Patched(model)
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                 anchors=anchors).results[0]
    assert r.tokens == greedy_ar(model, p, n)
    _check_forwards(pm, r, L, len(anchors) if isinstance(anchors, tuple) else anchors)


@pytest.mark.parametrize("anchors", [pytest.param(2, id="k2"), pytest.param((0, 3, 5), id="fixed035")])
def test_anchored_batch_rows_equal_their_solo_runs(model, prompts, anchors):
    L, n = 8, 16
    batch = prompts + [prompts[0][:3]]
    conts = [p + greedy_ar(model, p, n + L) for p in batch]
    edit = oracle_edit(conts, V=model.config.vocab_size)
    got = generate(Patched(model, edit), batch, mode="quadratic-spec", max_new_tokens=n, block_length=L,
                   eos_id=-1, anchors=anchors).results
    for b, p in enumerate(batch):
        solo = generate(Patched(model, oracle_edit([conts[b]], V=model.config.vocab_size)), [p],
                        mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                        anchors=anchors).results[0]
        assert got[b].tokens == solo.tokens == conts[b][len(p):len(p) + n]
        assert (got[b].nfe, got[b].iterations, got[b].mean_accepted) == \
            (solo.nfe, solo.iterations, solo.mean_accepted)


def _drafts(pm, quadratic, L):
    """The draft each verify forward checks, in order."""
    out = []
    for c in pm.calls[1:]:
        tok = c["tokens"][0]
        out.append(tok.reshape(L, L + 1)[:, 0].tolist() if quadratic else tok[:L].tolist())
    return out


def test_every_anchor_drafts_what_full_quadratic_drafts(model, prompts):
    p, n, L = prompts[0], 24, 8
    conts = [p + greedy_ar(model, p, n + L)]
    full = Patched(model, oracle_edit(conts, V=model.config.vocab_size))
    rq = generate(full, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    every = Patched(model, oracle_edit(conts, V=model.config.vocab_size))
    ra = generate(every, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                  anchors=tuple(range(L))).results[0]
    assert ra.tokens == rq.tokens
    dq, da = _drafts(full, True, L), _drafts(every, False, L)
    # anchored emits the AR prediction when it is made, so it may need one verify less
    assert len(da) in (len(dq), len(dq) - 1) and da == dq[:len(da)]


def test_confidence_chosen_anchors_match_full_quadratic_acceptance(model, prompts):
    """When the drafter's confidence marks its mistakes, k = 2 anchors (0 and the one
    before the first doubtful token) draft exactly as full quadratic does."""
    p, n, L = prompts[1], 32, 8
    conts = [p + greedy_ar(model, p, n + L)]
    V = model.config.vocab_size
    full = Patched(model, _calibrated_oracle(conts, V))
    rq = generate(full, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    two = Patched(model, _calibrated_oracle(conts, V))
    r2 = generate(two, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                  anchors=2).results[0]
    assert r2.tokens == rq.tokens == conts[0][len(p):len(p) + n]
    dq, d2 = _drafts(full, True, L), _drafts(two, False, L)
    assert len(d2) in (len(dq), len(dq) - 1) and d2 == dq[:len(d2)]
    assert rq.mean_accepted > 2.5


def test_anchored_eos_truncates(model, prompts):
    check_eos_truncates(model, prompts[0], mode="quadratic-spec", n=16, eos_at=6, L=8, anchors=2)


def test_anchored_eos_as_first_token(model, prompts):
    """The first AR token is emitted by the drafting forward; eos there ends the row."""
    p = prompts[2]
    first = greedy_ar(model, p, 1)[0]
    pm = Patched(model)
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=8, block_length=4, eos_id=first,
                 anchors=2).results[0]
    assert r.tokens == [first] and r.nfe == 1 and len(pm.calls) == 1


def test_mask_id_tail_is_verified_not_trusted(model, prompts):
    """With anchor 0 only, a draft accepted past slot 0 continues with the mask id,
    which AR greedy rejects: the output is still AR's."""
    p, n, L = prompts[1], 16, 4
    ar = greedy_ar(model, p, n + L)
    mask = model.config.mask_token_id
    pm = Patched(model, oracle_edit([p + ar], V=model.config.vocab_size))
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1,
                 anchors=(0,)).results[0]
    assert r.tokens == ar[:n]
    assert any(mask in c["tokens"][0, :L].tolist() for c in pm.calls[1:])


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(mode="linear-spec", anchors=2), "anchors: expected None for linear-spec", id="other-mode"),
    pytest.param(dict(anchors=0), r"anchors: expected an int k in \[1, 4\]", id="zero"),
    pytest.param(dict(anchors=5), r"anchors: expected an int k in \[1, 4\]", id="above-L"),
    pytest.param(dict(anchors=True), r"anchors: expected an int k", id="bool"),
    pytest.param(dict(anchors=(1, 2)), "include 0", id="no-zero"),
    pytest.param(dict(anchors=(0, 4)), r"in \[0, 4\)", id="anchor-L"),
    pytest.param(dict(anchors=(0, 1, 1)), "distinct", id="duplicate"),
    pytest.param(dict(anchors=()), "non-empty", id="empty"),
    pytest.param(dict(anchors=2, block_length=40, max_new_tokens=40), "block_length <= 32", id="L40"),
])
def test_anchored_refuses_bad_anchors(model, prompts, kw, match):
    args = dict(mode="quadratic-spec", max_new_tokens=8, block_length=4) | kw
    with pytest.raises(TridiffInputError, match=match):
        generate(model, [prompts[0]], **args)


def test_anchors_equal_to_block_length_is_full_quadratic(model, prompts):
    pm = Patched(model)
    generate(pm, [prompts[0]], mode="quadratic-spec", max_new_tokens=8, block_length=4, eos_id=-1, anchors=4)
    assert all(c["modes"] == Mode.QUADRATIC for c in pm.calls[1:])


def test_oracle_peaks_are_sharp_at_20():
    # _calibrated_oracle relies on oracle_edit writing its peaks through gen_support.peak at 20.0
    x = torch.zeros(1, 1, 8)
    peak(x, 0, 0, 3)
    assert float(x[0, 0].max()) == 20.0 and int(x[0, 0].argmax()) == 3
