"""Fixtures for tests/triton (the shared preamble and helpers: tests/triton/support.py)."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _interpreter_ranges(monkeypatch, n):
    # the row scan's vocabulary split under the interpreter (programs per row)
    from tridiff.triton import _common
    monkeypatch.setattr(_common, "TARGET_PROGRAMS_INTERPRET", n)


@pytest.fixture(params=[pytest.param(1, id="S1"), pytest.param(64, id="Smany")])
def ranges(request, monkeypatch):
    """One vocabulary range per row, or as many as there are chunks (exercises combining)."""
    _interpreter_ranges(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=[pytest.param((torch.float32, 1), id="float32-S1"),
                        pytest.param((torch.float16, 64), id="float16-Smany")])
def noisy_dtype(request, monkeypatch):
    """Logits dtype of a noisy (Gumbel) case. Those cost seconds each under the interpreter:
    two (dtype, ranges) pairs cover both dtypes and both range layouts."""
    dtype, n = request.param
    _interpreter_ranges(monkeypatch, n)
    return dtype


@pytest.fixture(scope="session")
def compiled_python():
    """run(*args, timeout) -> CompletedProcess of `python *args` in the repository root with
    TRITON_INTERPRET unset (triton compiles instead of interpreting); skips without triton's
    NVIDIA backend and its ptxas (sm_90 code is compiled, not run: no GPU needed)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(90)
    except Exception as exc:  # triton missing, or built without the NVIDIA backend or its ptxas
        pytest.skip(f"needs triton's NVIDIA backend with ptxas: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def run(*args, timeout):
        return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    return run
