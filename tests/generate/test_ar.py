"""AR decoding: greedy parity with full recomputation, NFE = generated tokens, eos stop."""
from gen_support import Patched, greedy_ar

from tridiff import Mode
from tridiff.generate import generate


def test_ar_matches_recomputed_greedy_and_counts_one_forward_per_token(model, prompts):
    p = prompts[1]
    want = greedy_ar(model, p, 10)
    pm = Patched(model)
    r = generate(pm, [p], mode="ar", max_new_tokens=10, eos_id=-1).results[0]
    assert r.tokens == want
    assert r.nfe == len(r.tokens) == 10 == len(pm.calls)
    assert all(c["modes"] == Mode.CAUSAL and not c["adapter"] for c in pm.calls)
    assert r.mean_accepted is None and r.tokens_per_forward == 1.0


def test_ar_stops_at_eos(model, prompts):
    p = prompts[0]
    ref = greedy_ar(model, p, 8)
    k = 3
    eos = ref[k]
    first = ref.index(eos)  # the chosen id may already occur earlier
    r = generate(model, [p], mode="ar", max_new_tokens=8, eos_id=eos).results[0]
    assert r.tokens == ref[:first + 1]
    assert r.nfe == first + 1
