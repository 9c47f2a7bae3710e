"""Fixtures of the server tests: the bundled model loaded once, and a server over it
(small engine: 4 rows, 512 positions per request) started in this process. Test modules
import tests.serve.support first: it skips them, with the reason, without the serve stack."""
import pytest

from tridiff import models


@pytest.fixture(scope="session")
def bundled_model():
    from tridiff.serve.server import load_model

    return load_model(models.path(), device="cpu")


@pytest.fixture(scope="session")
def bundled_tok():
    from tridiff.tokenizer import Tokenizer

    return Tokenizer(models.path())


def bundled_server(model, **kw):
    """A BackgroundServer over the bundled model (already loaded) with a small engine."""
    from tridiff.serve.server import BackgroundServer, make_state

    kw = {"max_rows": 4, "max_context": 512, "max_queue": 8, **kw}
    return BackgroundServer(make_state(models.path(), model=model, **kw))


@pytest.fixture(scope="module")
def server(bundled_model):
    with bundled_server(bundled_model) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="the server is tested with the real openai client")
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c
