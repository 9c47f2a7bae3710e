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


def backends_serving(op: str):
    """Backends that implement `op` at all: the torch reference always, the GPU backends
    only where a GPU can run them (on CPU, Triton's interpreter has its own tiny-shape
    tests in tests/triton). Backends lacking `op` are left out rather than skipped."""
    names = ["torch", "cpp", "sdpa"] + (["triton", "cuda"] if torch.cuda.is_available() else [])
    served = []
    for name in names:
        mod = _dispatch.backend_module(name)
        if name == "torch" or (mod is not None and hasattr(mod, op)):
            served.append(name)
    return served


def require_backend(name: str, op: str, args: tuple = ()) -> None:
    """Skip (with the dispatcher's own reason) when `name` cannot serve `op`."""
    reason = _dispatch.why_not(name, op, args, {})
    if reason:
        pytest.skip(reason)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
