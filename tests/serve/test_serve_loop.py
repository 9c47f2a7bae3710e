"""The engine thread's failure paths, on a scripted stand-in engine (tests/serve/support.py)
behind the real app: a step that raises fails the running requests with 500 and the
loop serves the next ones; add_request's refusal is a 400 for that request alone; a
request aborted as soon as it was queued is aborted in the engine and gets nothing more."""
import asyncio
import concurrent.futures as cf
import json

import pytest

from tests.serve.support import ScriptedEngine, slowed, wait_for

httpx = pytest.importorskip("httpx", reason="the server tests talk HTTP through httpx")

from tridiff.serve.app import ServeState  # noqa: E402
from tridiff.serve.loop import EngineLoop  # noqa: E402
from tridiff.serve.server import BackgroundServer  # noqa: E402


def _server(engine, **kw):
    return BackgroundServer(ServeState(engine, model_id="scripted", **kw))


def _post(srv, body, path="/v1/completions"):
    return httpx.post(srv.url + path, content=json.dumps(body), timeout=30)


def test_step_failure_fails_running_requests_and_loop_goes_on():
    engine = ScriptedEngine(fail_steps={1})
    with _server(engine) as srv:
        r = _post(srv, {"prompt": [5, 6], "max_tokens": 3})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["type"] == "internal_error" and "scripted failure at step 1" in err["message"]
        assert engine.aborted == [0]  # the engine was told to drop what ran
        r = _post(srv, {"prompt": [5, 6], "max_tokens": 3})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["token_ids"] == [7, 8, 9] and choice["finish_reason"] == "length"
        assert srv.state.loop.alive and httpx.get(srv.url + "/health").status_code == 200


def test_step_failure_mid_stream_ends_the_stream_with_an_error_event():
    engine = ScriptedEngine(fail_steps={3})
    with _server(engine) as srv:
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                          content=json.dumps({"prompt": [1], "max_tokens": 10, "stream": True})) as r:
            assert r.status_code == 200
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert [c["choices"][0]["token_ids"] for c in chunks[:-1]] == [[2], [3]]
        assert "scripted failure at step 3" in chunks[-1]["error"]["message"]
        assert _post(srv, {"prompt": [1], "max_tokens": 2}).json()["choices"][0]["token_ids"] == [2, 3]


def test_add_request_refusal_is_answered_to_that_request_alone():
    engine = ScriptedEngine()
    with _server(engine) as srv:
        with slowed(engine, 0.05), httpx.Client(timeout=30) as client:  # the good one runs ~1 s
            with cf.ThreadPoolExecutor(1) as pool:
                good = pool.submit(client.post, srv.url + "/v1/completions",
                                   content=json.dumps({"prompt": [9], "max_tokens": 20}))
                wait_for(lambda: srv.state.loop.stats["active"] == 1, what="the good request added")
                bad = client.post(srv.url + "/v1/completions",
                                  content=json.dumps({"prompt": [9], "max_tokens": 101}))
                assert bad.status_code == 400
                err = bad.json()["error"]
                assert err["param"] == "max_tokens" and "at most 100" in err["message"]
                assert not good.done()  # refused while the good one was still running
                assert good.result().json()["choices"][0]["token_ids"] == [(9 + i) % 64 for i in range(1, 21)]


def test_abort_queued_with_its_add_frees_it_and_delivers_nothing_more():
    engine = ScriptedEngine()
    loop = EngineLoop(engine)

    async def go():
        handle = loop.submit([1, 2], {"max_new_tokens": 4})
        loop.abort(handle)  # both commands wait in the queue (the thread has not started)
        loop.start()
        first = await asyncio.wait_for(handle.next(), 10)
        await asyncio.sleep(0.2)
        return handle, first

    handle, first = asyncio.run(go())
    loop.stop()
    assert first == ("added", 0) and handle._events.empty()  # no output after the abort
    assert engine.aborted == [0] and not engine.has_work()
