"""A batch of prompts with different lengths gives every row exactly what it gives alone,
in every mode, including rows that finish (eos) long before the others and a spaced
finish check (eos_check_every) that keeps finished rows idling for a while."""
import pytest
from gen_support import Patched, greedy_ar, oracle_edit

from tridiff.generate import generate

L, N = 4, 8
MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]


def _fields(r):
    return (r.prompt_ids, r.tokens, r.nfe, r.mean_accepted, r.iterations, r.forced_fills)


@pytest.fixture(scope="module")
def conts(model, prompts):
    return [p + greedy_ar(model, p, N + L) for p in prompts]


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_rows(model, prompts, conts, mode):
    V = model.config.vocab_size
    # Row 0 stops early on its own eos; the oracle drafts make acceptance differ by row.
    eos = conts[0][len(prompts[0]) + 1]
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=eos)
    if mode == "diffusion":
        kw["threshold"] = 0.5
    batch = generate(Patched(model, oracle_edit(conts, V=V)), prompts, eos_check_every=3, **kw)
    assert len(batch.results) == len(prompts)
    for b, p in enumerate(prompts):
        alone = generate(Patched(model, oracle_edit([conts[b]], V=V)), [p], **kw).results[0]
        assert _fields(batch.results[b]) == _fields(alone), f"row {b}"
    assert batch.results[0].tokens[-1] == eos or mode == "diffusion"
    assert batch.total_tokens == sum(len(r.tokens) for r in batch.results)
    assert batch.total_nfe == sum(r.nfe for r in batch.results)
