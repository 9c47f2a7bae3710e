import sys

import pytest

from tests.cupy.support import Recorder, fake_cupy


@pytest.fixture
def launched(monkeypatch):
    """Run launchers against the stand-in cupy; yields the list of recorded launches."""
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    import tridiff.cupy as tc

    monkeypatch.setattr(tc, "_module", rec)
    return rec.calls
