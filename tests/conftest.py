"""Session-wide test setup.

Without a CUDA device, Triton kernels can only run in its interpreter, and triton
reads TRITON_INTERPRET when kernels are defined, so it is set here before anything
imports triton. On a GPU machine the compiled path is tested instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tridiff import _dispatch  # noqa: E402


def backend_params(op: str, sample_args=None, backends=None):
    """pytest params over backends, ids "[name]"-style via the id itself."""
    names = backends or _dispatch.BACKENDS
    return [pytest.param(name, id=name) for name in names]


def require_backend(name: str, op: str, args: tuple = ()) -> None:
    """Skip (with the dispatcher's own reason) when `name` cannot serve `op`."""
    reason = _dispatch.why_not(name, op, args, {})
    if reason:
        pytest.skip(reason)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
