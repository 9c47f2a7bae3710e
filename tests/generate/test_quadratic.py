"""Quadratic self-speculation at temperature 0: lossless, exactly max_new_tokens tokens,
one forward per iteration, multi-token acceptance with KV compaction, eos."""
import pytest
from gen_support import Patched, check_eos_truncates, greedy_ar, oracle_edit

from tridiff import Mode
from tridiff._checks import TridiffInputError
from tridiff.generate import generate

L = 4


def _check_forwards(pm, r, L):
    assert r.nfe == len(pm.calls) == 1 + r.iterations
    assert pm.calls[0]["modes"] == Mode.CAUSAL_THEN_BIDIR and int(pm.calls[0]["mode_args"]) == L
    for c in pm.calls[1:]:
        assert c["modes"] == Mode.QUADRATIC and int(c["mode_args"]) == L
        assert c["tokens"].shape[1] == L * (L + 1)
        # slot (a, b) sits at P + a + b
        P = int(c["positions"][0, 0])
        want = [P + a + b for a in range(L) for b in range(L + 1)]
        assert c["positions"][0].tolist() == want


def test_quadratic_random_weights_equals_ar(model, prompts):
    p, n = prompts[2], 8
    ar = greedy_ar(model, p, n)
    pm = Patched(model)
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    assert r.tokens == ar  # exactly max_new_tokens, equal to AR greedy
    _check_forwards(pm, r, L)


def test_quadratic_multi_token_acceptance_is_lossless(model, prompts):
    p, n = prompts[1], 16
    ar = greedy_ar(model, p, n + L)
    pm = Patched(model, oracle_edit([p + ar], V=model.config.vocab_size))
    r = generate(pm, [p], mode="quadratic-spec", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    assert r.tokens == ar[:n]
    assert r.mean_accepted > 1.5 and r.iterations < n
    _check_forwards(pm, r, L)
    # accepted lengths cover the output (the last iteration may be trimmed to n)
    assert n <= round(r.mean_accepted * r.iterations) < n + L


def test_quadratic_eos_truncates(model, prompts):
    check_eos_truncates(model, prompts[0], mode="quadratic-spec", n=8, eos_at=5, L=L)


def test_quadratic_refuses_bad_arguments(model, prompts):
    with pytest.raises(TridiffInputError, match="max_new_tokens"):
        generate(model, [prompts[0]], mode="quadratic-spec", max_new_tokens=10, block_length=L)
    with pytest.raises(TridiffInputError, match="temperature"):
        generate(model, [prompts[0]], mode="quadratic-spec", max_new_tokens=8, block_length=L,
                 temperature=0.7)
