"""The server through the real openai client on the bundled model: every strategy's
greedy answer (streamed and not) equals tridiff.generate's for the same prompt and
settings, token for token; usage carries the counts; token-id prompts, stop ids and
stop strings, sampling with a seed, concurrent requests each get their own answer,
/v1/models and /health. After each request the engine's pages are all free."""
import concurrent.futures as cf

import pytest

from tests.serve.support import engine_stats, pages_all_free, wait_for

openai = pytest.importorskip("openai", reason="the server is tested with the real openai client")
httpx = pytest.importorskip("httpx", reason="raw HTTP checks use httpx")

from tridiff.generate import generate  # noqa: E402

PROMPT = "def add(a, b):\n"
L = 16  # the bundled model's block


def _solo(model, ids, strategy, max_tokens, **kw):
    mode = "ar" if strategy == "auto" else strategy
    return generate(model, [ids], mode=mode, max_new_tokens=max_tokens, **kw).results[0]


def _text(tok, ids, eos):
    return tok.decode(ids[:-1] if ids and ids[-1] == eos else ids)


# quadratic pruned to 2 anchors (L(k+1) rows a forward instead of L(L+1): a fast test), diffusion
# with a threshold: the extra fields reach the engine (generate with the same settings agrees)
SETTINGS = [("auto", {}), ("ar", {}), ("linear-spec", {}), ("quadratic-spec", {"anchors": 2}),
            ("diffusion", {"threshold": 0.9})]


@pytest.mark.parametrize("strategy,settings", SETTINGS, ids=[s for s, _ in SETTINGS])
def test_every_strategy_equals_solo_generate(client, server, bundled_model, bundled_tok, strategy, settings):
    res = client.completions.create(model="stdlib-7m", prompt=PROMPT, max_tokens=L,
                                    extra_body={"strategy": strategy, **settings})
    ids = bundled_tok.encode(PROMPT)
    want = _solo(bundled_model, ids, strategy, L, **settings)
    (choice,) = res.choices
    assert choice.token_ids == want.tokens
    assert choice.text == _text(bundled_tok, want.tokens, bundled_model.config.eos_token_id)
    assert choice.finish_reason == ("stop" if want.tokens[-1] == bundled_model.config.eos_token_id else "length")
    u = res.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (len(ids), len(want.tokens),
                                                                      len(ids) + len(want.tokens))
    extra = u.model_extra
    assert extra["strategy"] == strategy
    if strategy != "auto":  # auto's steps may run linear-spec (its NFE is then not AR's)
        assert extra["nfe"] == want.nfe
    assert extra["tokens_per_forward"] == pytest.approx(len(want.tokens) / extra["nfe"])
    if strategy in ("linear-spec", "quadratic-spec"):
        assert len(extra["accepted_lengths"]) > 0 and extra["mean_accepted"] >= 1.0
    if strategy == "auto":
        assert set(extra["strategies_run"]) <= {"ar", "linear-spec"} and extra["strategies_run"]
    assert pages_all_free(server.state)


@pytest.mark.parametrize("strategy", ["auto", "linear-spec"])
def test_stream_equals_non_stream(client, server, bundled_tok, strategy):
    kw = dict(model="stdlib-7m", prompt=PROMPT, max_tokens=24, extra_body={"strategy": strategy})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    assert len(chunks) > 1  # streamed in pieces, not in one
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert sum((c.choices[0].token_ids for c in chunks), []) == whole.choices[0].token_ids
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    if strategy != "auto":  # auto's choices follow the timing table and the load: its NFE may differ
        assert chunks[-1].usage.model_extra["nfe"] == whole.usage.model_extra["nfe"]
    assert len({c.id for c in chunks}) == 1
    assert pages_all_free(server.state)


def test_stream_options_include_usage(client):
    chunks = list(client.completions.create(model="stdlib-7m", prompt=PROMPT, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"strategy": "ar"}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-2].usage.completion_tokens == 8


def test_token_id_prompt_and_stop_id(client, server, bundled_model, bundled_tok):
    ids = bundled_tok.encode("import os\nimport sys\n")
    full = _solo(bundled_model, ids, "ar", L).tokens
    stop = full[5]
    cut = full[:full.index(stop) + 1]
    res = client.completions.create(model="stdlib-7m", prompt=ids, max_tokens=L, stop=[stop],
                                    extra_body={"strategy": "ar"})
    (choice,) = res.choices
    assert choice.token_ids == cut and choice.finish_reason == "stop"
    assert choice.text == bundled_tok.decode(cut[:-1])  # the stop id ends the text, it is not in it
    assert res.usage.prompt_tokens == len(ids)
    assert pages_all_free(server.state)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string(client, server, bundled_model, bundled_tok, stream):
    ids = bundled_tok.encode(PROMPT)
    full = _solo(bundled_model, ids, "ar", 2 * L).tokens
    text = _text(bundled_tok, full, bundled_model.config.eos_token_id)
    stop = text[len(text) // 3:len(text) // 3 + 4]
    assert stop.strip() and stop in text
    kw = dict(model="stdlib-7m", prompt=PROMPT, max_tokens=2 * L, stop=stop, extra_body={"strategy": "ar"})
    if stream:
        chunks = list(client.completions.create(stream=True, **kw))
        got = "".join(c.choices[0].text for c in chunks)
        ids_got = sum((c.choices[0].token_ids for c in chunks), [])
        reason = chunks[-1].choices[0].finish_reason
    else:
        res = client.completions.create(**kw)
        got, ids_got, reason = res.choices[0].text, res.choices[0].token_ids, res.choices[0].finish_reason
    assert got == text[:text.index(stop)] and reason == "stop"
    assert ids_got == full[:len(ids_got)] and stop in bundled_tok.decode(ids_got)
    assert stop not in bundled_tok.decode(ids_got[:-1])  # ids through the token that completed the stop
    wait_for(lambda: pages_all_free(server.state), what="the stopped request's pages")  # aborted, freed


def test_sampling_follows_the_seed(client, bundled_model, bundled_tok):
    ids = bundled_tok.encode(PROMPT)
    outs = [client.completions.create(model="stdlib-7m", prompt=PROMPT, max_tokens=L, temperature=0.9, seed=s,
                                      extra_body={"strategy": "ar"}).choices[0].token_ids for s in (3, 3, 4)]
    want = [_solo(bundled_model, ids, "ar", L, temperature=0.9, seed=s).tokens for s in (3, 4)]
    assert outs == [want[0], want[0], want[1]]


def test_concurrent_requests_each_get_their_own_answer(server, client, bundled_model, bundled_tok):
    """Six requests on four rows (two wait in the engine's queue), strategies mixed."""
    prompts = ["import os\n", "class A:\n", "def f(x):\n", "for i in range(", "x = [", "return "]
    strategies = ["ar", "linear-spec", "auto", "quadratic-spec", "ar", "diffusion"]
    extra = [{}, {}, {}, {"anchors": 2}, {}, {}]

    def one(i):
        return client.completions.create(model="stdlib-7m", prompt=prompts[i], max_tokens=L,
                                         extra_body={"strategy": strategies[i], **extra[i]}).choices[0].token_ids

    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(one, range(len(prompts))))
    for i, ids in enumerate(got):
        assert ids == _solo(bundled_model, bundled_tok.encode(prompts[i]), strategies[i], L, **extra[i]).tokens, i
    assert pages_all_free(server.state)


def test_models_and_health(client, server):
    (m,) = client.models.list().data
    assert m.id == "stdlib-7m" and m.owned_by == "tridiff"
    h = httpx.get(server.url + "/health", timeout=30)
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok" and body["model"] == "stdlib-7m" and body["max_inflight"] == 4 + 8
    assert body["free_pages"] == body["total_pages"] == engine_stats(server.state)["total_pages"] > 0
