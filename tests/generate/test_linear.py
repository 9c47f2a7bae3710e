"""Linear self-speculation at temperature 0: lossless (= AR greedy), NFE per docs/spec.md section 3.3,
multi-token acceptance with rollback, the threshold draft and its no-hang rule, eos."""
import pytest
from gen_support import Patched, check_eos_truncates, greedy_ar, oracle_edit, peak

from tridiff import Mode
from tridiff.generate import generate

L = 4


def _check_forwards(pm, r):
    """Prefill + per iteration (draft forwards + 1 verify); adapter only on drafts."""
    assert r.nfe == len(pm.calls)
    verifies = [c for c in pm.calls[1:] if c["modes"] == Mode.CAUSAL]
    drafts = [c for c in pm.calls[1:] if c["modes"] == Mode.BIDIR_BLOCK]
    assert len(verifies) == r.iterations and len(drafts) + len(verifies) + 1 == len(pm.calls)
    assert all(c["adapter"] for c in drafts) and not any(c["adapter"] for c in verifies)
    assert pm.calls[0]["modes"] == Mode.CAUSAL and not pm.calls[0]["adapter"]


def test_linear_random_weights_equals_ar(model, prompts):
    p, n = prompts[0], 6
    ar = greedy_ar(model, p, n + L)
    pm = Patched(model)
    r = generate(pm, [p], mode="linear-spec", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    assert n <= len(r.tokens) <= n + L - 1  # may overshoot by up to L-1 (docs/spec.md section 3.3)
    assert r.tokens == ar[:len(r.tokens)]
    _check_forwards(pm, r)
    assert r.nfe == 1 + 2 * r.iterations  # threshold 0: one draft forward per iteration
    assert r.mean_accepted * r.iterations == len(r.tokens) - 1  # all but the prefill's seed


@pytest.mark.parametrize("threshold", [0.0, 0.6], ids=["thr0", "thr0.6"])
def test_linear_multi_token_acceptance_is_lossless(model, prompts, threshold):
    """Drafts follow the true greedy continuation except every 5th position: long runs
    are accepted, then a rejection forces a rollback of the committed verify KV."""
    p, n = prompts[1], 12
    ar = greedy_ar(model, p, n + L)
    pm = Patched(model, oracle_edit([p + ar], V=model.config.vocab_size))
    r = generate(pm, [p], mode="linear-spec", max_new_tokens=n, block_length=L, threshold=threshold,
                 eos_id=-1).results[0]
    assert r.tokens == ar[:len(r.tokens)] and len(r.tokens) >= n
    assert 1.5 < r.mean_accepted < L  # several drafts accepted, some rejected
    assert r.mean_accepted * r.iterations == len(r.tokens) - 1
    _check_forwards(pm, r)
    assert r.forced_fills == 0


def test_linear_threshold_draft_no_hang(model, prompts):
    """A drafter whose most confident guess is always the mask id would loop forever in
    the reference; tridiff fills the masks with the best non-mask token instead."""
    p, n = prompts[2], 8
    ar = greedy_ar(model, p, n + L)
    conts = p + ar
    mask = model.config.mask_token_id

    def edit(logits, info):
        if info["modes"] == Mode.BIDIR_BLOCK:
            for t in range(logits.shape[1]):
                peak(logits, 0, t, mask, second=conts[int(info["positions"][0, t])])
        return logits

    pm = Patched(model, edit)
    r = generate(pm, [p], mode="linear-spec", max_new_tokens=n, block_length=L, threshold=0.5,
                 eos_id=-1).results[0]
    assert r.tokens == ar[:len(r.tokens)] and mask not in r.tokens
    assert r.forced_fills == r.iterations > 0
    assert r.mean_accepted == L  # the forced fills are the true continuation
    _check_forwards(pm, r)
    assert r.nfe == 1 + 2 * r.iterations  # one (stuck) draft pass per iteration


def test_linear_eos_truncates(model, prompts):
    check_eos_truncates(model, prompts[1], mode="linear-spec", n=12, eos_at=6, L=L)
