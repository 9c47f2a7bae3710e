"""Shared by tests/quant: quantized checkpoints (written once per session): the tiny preset
(float32, with a drafter adapter) and its int4-g64 asymmetric copy; the bundled model's
int4-g128 copies (head as stored, head packed); stack_rows, which records the path of every model forward."""
import pytest
import torch

import tridiff.cpp
from tridiff import layer_stack, models
from tridiff.model import Model
from tridiff.checkpoint import write_random_checkpoint
from tridiff.quant.export import quantize_checkpoint


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory):
    """(full-precision directory, int4-g64 asymmetric directory)."""
    full = tmp_path_factory.mktemp("tiny-full")
    write_random_checkpoint(full, "tiny", seed=1, with_adapter=True, dtype=torch.float32)
    q = tmp_path_factory.mktemp("tiny-q4") / "q"
    quantize_checkpoint(full, q, bits=4, group_size=64, sym=False)
    return full, q


@pytest.fixture(scope="session")
def bundled_q4_head(tmp_path_factory):
    """The bundled model int4-g128 with its head packed too (lm_head=true)."""
    q = tmp_path_factory.mktemp("bundled-head") / "stdlib-7m-int4-g128-head"
    quantize_checkpoint(models.path(), q, bits=4, group_size=128, lm_head=True)
    return q


@pytest.fixture(scope="session")
def bundled_q4(tmp_path_factory):
    q = tmp_path_factory.mktemp("bundled") / "stdlib-7m-int4-g128"
    quantize_checkpoint(models.path(), q, bits=4, group_size=128)
    return q



@pytest.fixture
def stack_rows(monkeypatch):
    """Rows of every forward the C++ stack ran (TRIDIFF_CPU_LAYER_STACK=1: every forward it
    can take); a forward on any other path is recorded as -rows."""
    monkeypatch.setenv(layer_stack.ENV, "1")
    rows = []
    real_kernel, real_choice = tridiff.cpp.decoder_layers_, Model._layer_stack
    ran = []

    def counted(*args):
        ran.append(True)
        return real_kernel(*args)

    def chosen(self, x, ctx, use_lora, backend):
        plan = real_choice(self, x, ctx, use_lora, backend)
        n = x.shape[0] * x.shape[1]
        if plan is None:
            rows.append(-n)
            return None

        def run_plan():
            before = len(ran)
            out = plan()
            rows.append(n if len(ran) == before + 1 else -n)
            return out
        return run_plan

    monkeypatch.setattr(tridiff.cpp, "decoder_layers_", counted)
    monkeypatch.setattr(Model, "_layer_stack", chosen)
    return rows
