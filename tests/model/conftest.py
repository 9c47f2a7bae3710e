"""Fixtures for tests/model (helpers live in tests/model/support.py)."""
import pytest

from tests.model.support import BACKENDS


@pytest.fixture(params=[pytest.param(b, id=b) for b in BACKENDS])
def backend(request):
    """Attention/KV backend name; the id carries it ("[torch]", "[cpp]", ...)."""
    return request.param
