"""The `backend` fixture of the op tests: one run per backend in tests.ops.support.BACKENDS
(ids [torch], [cpp], ...; a backend that cannot serve skips inside the test with a reason)."""
import pytest

from tests.ops.support import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
