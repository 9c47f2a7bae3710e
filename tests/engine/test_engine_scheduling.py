"""Admission by free pages, abort, chunked prefill, bad arguments, the step's host reads."""
import pytest
import torch

from tests.engine.conftest import L, NEW
from tests.generate.test_sync_audit import READS   # every Tensor -> host conversion
from tridiff._checks import TridiffInputError
from tridiff.engine import Engine


def test_admission_waits_for_pages(model, prompts):
    """With pages for two requests' worst case, a third waits until one leaves; all finish."""
    page = 8
    need = -(-(len(prompts[0]) + NEW) // page)          # AR: prompt + max_new
    eng = Engine(model, max_rows=8, max_context=256, page_size=page, num_pages=2 * need, prefill_chunk=16)
    ids = [eng.add_request(prompts[0], strategy="ar", max_new_tokens=NEW) for _ in range(3)]
    eng.step()
    assert eng.num_running == 2 and eng.num_waiting == 1
    done = eng.run_until_done()
    assert set(done) == set(ids) and all(done[i].tokens == done[ids[0]].tokens for i in ids)
    assert eng.free_pages == eng.total_pages


def test_rows_bound_admission(model, prompts):
    eng = Engine(model, max_rows=1, max_context=256, prefill_chunk=16)
    a = eng.add_request(prompts[0], strategy="ar", max_new_tokens=4)
    b = eng.add_request(prompts[1], strategy="ar", max_new_tokens=4)
    outs = eng.step()
    assert eng.num_running == 1 and eng.num_waiting == 1 and {o.request_id for o in outs} == {a}
    done = eng.run_until_done()
    assert set(done) == {a, b}


def test_abort_frees_pages_at_once(model, prompts):
    eng = Engine(model, max_rows=4, max_context=256, page_size=4, prefill_chunk=16)
    rid = eng.add_request(prompts[1], strategy="linear-spec", max_new_tokens=NEW, block_length=L)
    keep = eng.add_request(prompts[0], strategy="ar", max_new_tokens=NEW)
    eng.step()
    eng.step()
    before = eng.free_pages
    assert eng.abort(rid)
    assert eng.free_pages > before, "the aborted request's pages are back before the next step"
    outs = {o.request_id: o for o in eng.step()}
    assert outs[rid].finished and outs[rid].finish_reason == "abort"
    assert not eng.abort(rid), "an ended request cannot be aborted again"
    eng.run_until_done()
    assert eng.free_pages == eng.total_pages and keep not in eng.running


def test_abort_a_waiting_request(model, prompts):
    eng = Engine(model, max_rows=1, max_context=256, prefill_chunk=16)
    eng.add_request(prompts[0], strategy="ar", max_new_tokens=4)
    waiting = eng.add_request(prompts[0], strategy="ar", max_new_tokens=4)
    assert eng.abort(waiting)
    outs = eng.run_until_done()
    assert outs[waiting].finish_reason == "abort" and outs[waiting].tokens == []


def test_long_prompt_is_prefilled_in_chunks(model, prompts):
    """A running request emits a token at every step while a long prompt joins in chunks."""
    eng = Engine(model, max_rows=4, max_context=512, prefill_chunk=8, prefill_budget=8)
    run = eng.add_request(prompts[0], strategy="ar", max_new_tokens=NEW)
    eng.step()
    long = eng.add_request(prompts[2], strategy="ar", max_new_tokens=NEW)    # 41 tokens: 6 chunks of 8
    seen_long = None
    for s in range(8):
        outs = {o.request_id: o for o in eng.step()}
        assert len(outs[run].new_tokens) == 1, f"step {s}: the running request advanced"
        if long in outs and seen_long is None:
            seen_long = s
    assert seen_long == 5, "the long prompt's first token came after its 6 chunks"


def test_stop_ids_end_a_request(model, prompts, solo):
    want = solo(0, prompts[0])
    stop = want[3]
    eng = Engine(model, max_rows=2, max_context=256, prefill_chunk=16)
    rid = eng.add_request(prompts[0], strategy="linear-spec", max_new_tokens=NEW, block_length=L, stop_ids=[stop])
    out = eng.run_until_done()[rid]
    assert out.finish_reason == "stop" and out.tokens == want[:want.index(stop) + 1]


@pytest.mark.parametrize("kw, arg", [
    ({"strategy": "beam"}, "strategy"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 6, "strategy": "diffusion"}, "max_new_tokens"),
    ({"strategy": "quadratic-spec", "temperature": 0.5, "max_new_tokens": 32}, "temperature"),
    ({"strategy": "ar", "anchors": 2}, "anchors"),
    ({"strategy": "ar", "threshold": 0.5}, "threshold"),
    ({"temperature": -1.0}, "temperature"),
    ({"rule": "fast"}, "rule"),
    ({"stop_ids": [10 ** 9]}, "stop_ids"),
    ({"max_new_tokens": 10 ** 6}, "max_new_tokens"),
    ({"max_new_tokens": 252, "strategy": "ar"}, "prompt_ids"),
])
def test_bad_requests_are_named_and_queue_nothing(model, prompts, kw, arg):
    eng = Engine(model, max_rows=2, max_context=256, prefill_chunk=16)
    kw = {"max_new_tokens": 8, **kw}
    with pytest.raises(TridiffInputError, match=arg):
        eng.add_request(prompts[0], **kw)
    assert not eng.has_work()


def test_bad_prompts(model):
    eng = Engine(model, max_rows=2, max_context=256)
    for bad in ([], "text", [model.config.vocab_size], [1, -1], [True]):
        with pytest.raises(TridiffInputError, match="prompt_ids"):
            eng.add_request(bad)


def test_more_pages_than_the_pool_is_refused(model, prompts):
    eng = Engine(model, max_rows=2, max_context=256, page_size=4, num_pages=3)
    with pytest.raises(TridiffInputError, match="pages"):
        eng.add_request(prompts[0], strategy="ar", max_new_tokens=NEW)




@pytest.mark.parametrize("strategy, kw, extra", [
    ("ar", {}, 0), ("linear-spec", {}, 0), ("quadratic-spec", {}, 0), ("quadratic-spec", {"anchors": 2}, 0),
    ("diffusion", {"threshold": 0.5}, 0), ("auto", {}, 0), ("linear-spec", {"threshold": 0.6}, None),
])
def test_one_host_read_per_step(model, prompts, monkeypatch, strategy, kw, extra):
    """Counts Tensor -> host conversions inside step(): one per step (the readback), plus one
    per extra draft pass of a threshold draft (extra=None: at most L-1 per step)."""
    eng = Engine(model, max_rows=4, max_context=256, prefill_chunk=16, backend="torch")
    for p in prompts[:2]:
        eng.add_request(p, strategy=strategy, max_new_tokens=NEW, block_length=L, **kw)
    count = {"n": 0}
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            count["n"] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 0
    while eng.has_work():
        before, reads_before = count["n"], eng.host_reads
        eng.step()
        steps += 1
        made = count["n"] - before
        assert made == eng.host_reads - reads_before, "every host read is one the engine counts"
        if extra == 0:
            assert made == 1, f"step {steps}: {made} host reads"
        else:
            assert 1 <= made <= L, f"step {steps}: {made} host reads"
    monkeypatch.undo()
    assert steps > 3
