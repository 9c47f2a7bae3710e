"""The engine's defining property: a request's output equals what generate gives it alone
(same settings and seed), whatever shares its steps, for every strategy, with requests
joining and leaving (finishing or aborted) at random steps."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.conftest import CONFIGS, L, NEW
from tests.engine.support import assert_batch_equals_solo
from tridiff.engine import Engine


def _engine(model, backend, **kw):
    return Engine(model, max_rows=kw.pop("max_rows", 64), max_context=512, prefill_chunk=16, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_every_strategy_at_once(model, prompts, solo, backend):
    """Every strategy x every prompt in one engine, all joining at step 0."""
    eng = _engine(model, backend)
    want = {}
    for i, (strategy, kw) in enumerate(CONFIGS):
        for p in prompts:
            rid = eng.add_request(p, strategy=strategy, max_new_tokens=NEW, block_length=L, **kw)
            want[rid] = (i, p)
    done = eng.run_until_done()
    for rid, (i, p) in want.items():
        assert done[rid].tokens == solo(i, p, backend), (CONFIGS[i], rid)
        assert done[rid].finish_reason in ("stop", "length")
    assert eng.free_pages == eng.total_pages and not eng.running


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_join_and_leave_at_random_steps(model, prompts, solo, data):
    """Requests of random strategies join at random steps; some are aborted at random steps;
    pages are few, so some wait for admission. Every request that finishes equals its solo run."""
    backend = data.draw(st.sampled_from(["auto", "torch"]), label="backend")
    n = data.draw(st.integers(2, 7), label="requests")
    reqs = [(data.draw(st.integers(0, len(CONFIGS) - 1)), data.draw(st.integers(0, len(prompts) - 1)),
             data.draw(st.integers(0, 8)), data.draw(st.one_of(st.none(), st.integers(0, 10))))
            for _ in range(n)]
    eng = _engine(model, backend, max_rows=data.draw(st.integers(1, 4), label="rows"),
                  num_pages=data.draw(st.integers(12, 40), label="pages"), page_size=8)
    ids, aborts, done = {}, {}, {}
    step = 0
    while step < 400 and (eng.has_work() or any(j >= step for _, _, j, _ in reqs)):
        for k, (i, pi, join, abort_at) in enumerate(reqs):
            if join == step:
                strategy, kw = CONFIGS[i]
                ids[k] = eng.add_request(prompts[pi], strategy=strategy, max_new_tokens=NEW, block_length=L, **kw)
                if abort_at is not None:
                    aborts[join + abort_at] = aborts.get(join + abort_at, []) + [ids[k]]
        for rid in aborts.get(step, []):
            eng.abort(rid)
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
        step += 1
    assert len(done) == len(ids), "every request ends (finished or aborted)"
    for k, rid in ids.items():
        i, pi = reqs[k][0], reqs[k][1]
        out = done[rid]
        if out.finish_reason == "abort":
            want = solo(i, prompts[pi], backend)
            assert out.tokens == want[:len(out.tokens)], "an aborted request's tokens are a prefix of its solo run"
        else:
            assert out.tokens == solo(i, prompts[pi], backend), (CONFIGS[i], out)
    assert eng.free_pages == eng.total_pages


def test_streamed_tokens_are_the_output(model, prompts, solo):
    eng = _engine(model, "auto")
    rid = eng.add_request(prompts[0], strategy="linear-spec", max_new_tokens=NEW, block_length=L)
    other = eng.add_request(prompts[2], strategy="diffusion", max_new_tokens=NEW, block_length=L, threshold=0.5)
    pieces = list(eng.stream(rid))
    assert len(pieces) > 1
    assert sum(pieces, []) == solo(2, prompts[0])
    rest = eng.run_until_done()
    assert rest[other].tokens == solo(7, prompts[2])


def test_fp32_bundled_model_batch_equals_solo():
    """The dtype the CLI and the demo run: the bundled model in float32, greedy, a few
    strategies sharing steps, each equal to its solo generate."""
    from tridiff.model import Model
    from tridiff.models import path

    assert_batch_equals_solo(Model.from_pretrained(path(), dtype=torch.float32))
