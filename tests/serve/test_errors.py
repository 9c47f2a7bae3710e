"""Requests the server refuses, each with its status and an OpenAI error body naming the
field: 400 for bad JSON, bad types, unknown strategy, prompt too long for the cache,
max_tokens out of range, what the engine refuses; 404 for another model's name; 503 past
the queue limit. A client that disconnects (mid-stream or waiting for a whole answer)
has its request aborted in the engine and its pages freed. None of it stops the engine
thread: a good request is answered afterwards."""
import concurrent.futures as cf
import json
import threading

import pytest

from tests.serve.conftest import bundled_server
from tests.serve.support import gated, pages_all_free, slowed, wait_for

httpx = pytest.importorskip("httpx", reason="raw HTTP checks use httpx")
openai = pytest.importorskip("openai", reason="the server is tested with the real openai client")

GOOD = {"prompt": "x = ", "max_tokens": 4}
# (body, the field the error names, a fragment of its message)
BAD = {
    "unknown strategy": ({**GOOD, "strategy": "beam"}, "strategy", "expected one of"),
    "max_tokens 0": ({**GOOD, "max_tokens": 0}, "max_tokens", ">= 1"),
    "max_tokens past the context": ({**GOOD, "max_tokens": 100000}, "max_tokens", "in [1, 511]"),
    # auto reserves max_tokens + block (16) positions: 495 + 16 fits alone, not with the prompt
    "prompt + max_tokens past the context": ({**GOOD, "max_tokens": 495}, "prompt", "context of 512"),
    "max_tokens + block past the context": ({**GOOD, "max_tokens": 500}, "max_tokens", "context of 512"),
    "max_tokens not an int": ({**GOOD, "max_tokens": "4"}, "max_tokens", "expected an integer"),
    "max_tokens a bool": ({**GOOD, "max_tokens": True}, "max_tokens", "expected an integer"),
    "prompt too long for the cache": ({"prompt": [5] * 600, "max_tokens": 4}, "prompt", "context of 512"),
    "prompt a number": ({**GOOD, "prompt": 5}, "prompt", "string or a list of token ids"),
    "prompt missing": ({"max_tokens": 4}, "prompt", "required"),
    "prompt empty": ({**GOOD, "prompt": ""}, "prompt", "non-empty"),
    "prompt ids mixed": ({**GOOD, "prompt": [5, "a"]}, "prompt", "integers only"),
    "prompt id past the vocabulary": ({**GOOD, "prompt": [5, 4096]}, "prompt", "vocab_size=4096"),
    "batch of prompts": ({**GOOD, "prompt": ["a", "b"]}, "prompt", "one prompt per request"),
    "n=2": ({**GOOD, "n": 2}, "n", "only n=1"),
    "temperature a string": ({**GOOD, "temperature": "hot"}, "temperature", "expected a finite number"),
    "temperature infinite": ('{"prompt": "x", "max_tokens": 4, "temperature": Infinity}', "temperature", "finite"),
    "threshold NaN": ('{"prompt": "x", "max_tokens": 4, "strategy": "linear-spec", "threshold": NaN}',
                      "threshold", "finite"),
    "temperature negative": ({**GOOD, "temperature": -1}, "temperature", ">= 0"),
    "seed a float": ({**GOOD, "seed": 1.5}, "seed", "expected an integer"),
    "stream not a bool": ({**GOOD, "stream": "yes"}, "stream", "expected a boolean"),
    "stop of bad type": ({**GOOD, "stop": [1.5]}, "stop", "strings and/or token ids"),
    "stop id past the vocabulary": ({**GOOD, "stop": [99999]}, "stop", "vocab_size=4096"),
    "unknown field": ({**GOOD, "frobnicate": 1}, "frobnicate", "unknown field"),
    "logprobs": ({**GOOD, "logprobs": 5}, "logprobs", "not supported"),
    "unknown rule": ({**GOOD, "rule": "greedy"}, "rule", "expected one of"),
    "anchors of bad type": ({**GOOD, "anchors": "0,1"}, "anchors", "integer"),
    "quadratic with temperature (engine)": ({**GOOD, "strategy": "quadratic-spec", "max_tokens": 16,
                                             "temperature": 0.5}, "temperature", "greedy only"),
    "diffusion off the block (engine)": ({**GOOD, "strategy": "diffusion", "max_tokens": 5}, "max_tokens",
                                         "multiple of the block length 16"),
    "threshold for ar (engine)": ({**GOOD, "strategy": "ar", "threshold": 0.5}, "threshold", "None for ar"),
}


def _post(srv, body, path="/v1/completions", **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(srv.url + path, content=content, headers={"content-type": "application/json"},
                      timeout=60, **kw)


def _assert_error(r, status, param, fragment):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and fragment in err["message"], err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_400_naming_the_field(server, case):
    body, param, fragment = BAD[case]
    _assert_error(_post(server, body), 400, param, fragment)
    if param == "prompt" or isinstance(body, str):
        return  # chat has messages instead of a prompt, and parses the other fields the same way
    chat = {k: v for k, v in body.items() if k != "prompt"}
    chat["messages"] = [{"role": "user", "content": "hi"}]
    r = _post(server, chat, "/v1/chat/completions")
    # the body is checked before the (missing) chat template is looked up; what needs the
    # prompt (context, vocabulary) or the engine is refused for the template instead
    late = "(engine)" in case or "context" in case or "vocabulary" in case
    _assert_error(r, 400, "messages" if late else param, "no chat template" if late else fragment)


@pytest.mark.parametrize("raw,fragment", [(b"{not json", "invalid JSON"), (b"[1, 2]", "JSON object"),
                                          (b"\xff\xfe", "invalid JSON")])
def test_invalid_json_is_400(server, raw, fragment):
    r = _post(server, raw)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_other_model_name_is_404(server):
    _assert_error(_post(server, {**GOOD, "model": "gpt-4"}), 404, "model", "serves 'stdlib-7m'")


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="strategy"):
        client.completions.create(model="stdlib-7m", prompt="x", max_tokens=4, extra_body={"strategy": "beam"})


def test_engine_thread_survives_every_refusal(server):
    for body, _, _ in BAD.values():
        assert _post(server, body).status_code == 400
    r = _post(server, GOOD)
    assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) == 4
    assert server.state.loop.alive and pages_all_free(server.state)


def test_503_past_the_queue_limit(bundled_model):
    """max_rows 1 + max_queue 1: two requests in flight (the engine held still), the third
    is answered 503 at once, with Retry-After; the two finish once the engine moves."""
    with bundled_server(bundled_model, max_rows=1, max_queue=1) as srv, gated(srv.state.engine) as gate:
        with httpx.Client(timeout=60) as c, cf.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(c.post, srv.url + "/v1/completions", json={**GOOD, "prompt": f"x{i} = "})
                    for i in range(2)]
            wait_for(lambda: srv.state.inflight == 2, what="two requests in flight")
            r = c.post(srv.url + "/v1/completions", json=GOOD)
            _assert_error(r, 503, None, "max_rows 1 + max_queue 1")
            assert r.json()["error"]["type"] == "server_overloaded" and r.headers["retry-after"] == "1"
            with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0) as oc:
                with pytest.raises(openai.InternalServerError, match="overloaded"):
                    oc.completions.create(model="stdlib-7m", prompt="x", max_tokens=4)
            assert not any(f.done() for f in held)
            gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert pages_all_free(srv.state) and srv.state.inflight == 0


def _spy_aborts(engine):
    aborted, done = [], threading.Event()
    real = engine.abort

    def abort(rid):
        aborted.append(rid)
        done.set()
        return real(rid)

    engine.abort = abort
    return aborted, done


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_and_frees_pages(bundled_model, stream):
    with bundled_server(bundled_model) as srv:
        engine = srv.state.engine
        aborted, done = _spy_aborts(engine)
        body = {"prompt": "def f(x):\n", "max_tokens": 400, "strategy": "ar", "stream": stream}
        with slowed(engine, 0.02):  # 400 steps: ~8 s, far longer than the test waits
            if stream:
                with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
                    lines = r.iter_lines()
                    first = [next(lines) for _ in range(3)]  # two events and their blank line
                    assert first[0].startswith("data: {") and first[2].startswith("data: {")
                # the response is closed here, mid-stream
            else:
                with pytest.raises(httpx.ReadTimeout):  # the client gives up and disconnects
                    httpx.post(srv.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
            assert done.wait(30), "the server did not abort the request"
        assert aborted == [0]
        wait_for(lambda: pages_all_free(srv.state), what="pages back after the abort")
        assert srv.state.inflight == 0
        r = _post(srv, GOOD)  # and it serves the next one
        assert r.status_code == 200
