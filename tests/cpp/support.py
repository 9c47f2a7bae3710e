"""Shared helpers for the "cpp" backend tests: the backend parameter and its skip."""
import pytest
import torch

from tridiff import _ext

REASON = _ext.reason("cpp")
# ids "[cpp]": `pytest -k cpp` selects exactly these tests.
CPP = [pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(REASON is not None, reason=str(REASON)))]


def randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
