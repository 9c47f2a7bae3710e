"""Shared helpers for the "cuda" backend tests (skipped without a GPU or the extension)."""
import pytest
import torch

from tridiff import _ext


def _reason():
    if not torch.cuda.is_available():
        return "needs CUDA"
    return _ext.reason("cuda")


REASON = _reason()
# ids "[cuda]": `pytest -k cuda` selects exactly these tests.
CUDA = [pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(REASON is not None, reason=str(REASON)))]
needs_cuda_ext = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def gen(seed=1234):
    return torch.Generator(device="cuda").manual_seed(seed) if torch.cuda.is_available() else None


def randn(shape, dtype, g):
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)
