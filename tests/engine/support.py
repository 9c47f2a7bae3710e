"""Shared by the engine tests and the quantized-model tests."""
from tridiff.engine import Engine
from tridiff.generate import generate

PROMPTS = [[1, 300, 301, 302, 40, 41], [1, 500, 501, 90, 91, 92, 93, 94, 95, 96]]


def assert_batch_equals_solo(model, prompts=PROMPTS, new_tokens=16):
    """AR, linear, quadratic and auto requests for every prompt in one engine, greedy:
    each request's tokens equal its solo generate (auto: AR's)."""
    eng = Engine(model, max_rows=8, max_context=512, prefill_chunk=16)
    want = {}
    for mode in ("ar", "linear-spec", "quadratic-spec", "auto"):
        for p in prompts:
            rid = eng.add_request(p, strategy=mode, max_new_tokens=new_tokens)
            want[rid] = generate(model, [p], mode="ar" if mode == "auto" else mode,
                                 max_new_tokens=new_tokens).results[0].tokens
    done = eng.run_until_done()
    for rid, toks in want.items():
        assert done[rid].tokens == toks
