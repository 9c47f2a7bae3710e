"""Shared preamble of the tests that run Triton kernels (fixtures: tests/triton/conftest.py).

Importing this module skips the importing test module, with the reason, where no kernel
can run: without triton, or with neither a CUDA device nor TRITON_INTERPRET=1 (which
tests/conftest.py sets on machines without CUDA). Import it before anything that loads
kernels. Numpy warnings of the interpreter's masked-off lanes and uint32 wrap-around are
filtered in pyproject.toml, for the triton.runtime.interpreter module only.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

TRITON = pytest.mark.parametrize("backend", [pytest.param("triton", id="triton")])  # the "[triton]" test id
NEEDS_CUDA = pytest.mark.skipif(not CUDA, reason="needs CUDA")
I32 = dict(dtype=torch.int32, device=DEV)


def logits(*shape, dtype=torch.float32, seed=0, scale=3.0):
    """scale * standard normal logits of `shape`, drawn on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype).to(DEV)
