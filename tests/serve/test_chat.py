"""/v1/chat/completions: 400 for a model without a chat template (the bundled one); on a
tiny random checkpoint with tokenizer_config.json's chat_template, the openai client's
chat call (streamed and not) answers what tridiff.generate gives the rendered prompt,
and a template that refuses the messages (raise_exception) is a 400."""
import json

import pytest
import torch

from tests.serve.support import pages_all_free

openai = pytest.importorskip("openai", reason="the server is tested with the real openai client")
pytest.importorskip("jinja2", reason="chat templates render with jinja2 (pip install tridiff[serve])")

from tridiff.checkpoint import write_random_checkpoint  # noqa: E402
from tridiff.generate import generate  # noqa: E402
from tridiff.serve.server import BackgroundServer, make_state  # noqa: E402
from tridiff.tokenizer import Tokenizer  # noqa: E402

TEMPLATE = ("{% for m in messages %}{% if m.role == 'system' and loop.index0 > 0 %}"
            "{{ raise_exception('system goes first') }}{% endif %}"
            "{{ bos_token }}{{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
RENDERED = "<s>system: be brief\n<s>user: hello there\nassistant:"


def test_no_chat_template_is_400(client):
    with pytest.raises(openai.BadRequestError, match="no chat template") as info:
        client.chat.completions.create(model="stdlib-7m", messages=MESSAGES, max_tokens=4)
    assert info.value.body["code"] == "no_chat_template"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat-ckpt")
    write_random_checkpoint(d, "tiny", seed=1, with_tokenizer=True, dtype=torch.float32)
    with open(d / "tokenizer_config.json", "w") as fh:
        json.dump({"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}, fh)
    with BackgroundServer(make_state(str(d), device="cpu", max_rows=2, max_context=256)) as srv:
        yield srv, d


@pytest.fixture(scope="module")
def chat_client(chat_server):
    srv, _ = chat_server
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_chat_answers_generate_on_the_rendered_prompt(chat_server, chat_client):
    srv, d = chat_server
    tok = Tokenizer(d)
    ids = tok.encode(RENDERED, add_bos=False)
    assert ids.count(tok.bos_token_id) == 2  # "<s>" in the text became the special id, not bytes
    want = generate(srv.state.engine.model, [ids], mode="ar", max_new_tokens=8).results[0].tokens
    model_id = d.name
    res = chat_client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8,
                                              extra_body={"strategy": "ar"})
    (choice,) = res.choices
    assert res.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.token_ids == want
    eos = srv.state.engine.model.config.eos_token_id
    assert choice.message.content == tok.decode([t for t in want if t != eos])
    assert res.usage.prompt_tokens == len(ids) and res.usage.completion_tokens == len(want)

    chunks = list(chat_client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8,
                                                      stream=True, extra_body={"strategy": "ar"}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert sum((c.choices[0].token_ids for c in chunks), []) == want
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert pages_all_free(srv.state)


def test_template_refusal_is_400(chat_server, chat_client):
    srv, d = chat_server
    bad = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    with pytest.raises(openai.BadRequestError, match="system goes first"):
        chat_client.chat.completions.create(model=d.name, messages=bad, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="messages"):
        chat_client.chat.completions.create(model=d.name, messages=[], max_tokens=4)
