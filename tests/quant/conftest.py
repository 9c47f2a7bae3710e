"""Quantized checkpoints shared by tests/quant (written once per session): the tiny preset
(float32, with a drafter adapter) and its int4-g64 asymmetric copy; the bundled model's
int4-g128 copy."""
import pytest
import torch

from tridiff import models
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
def bundled_q4(tmp_path_factory):
    q = tmp_path_factory.mktemp("bundled") / "stdlib-7m-int4-g128"
    quantize_checkpoint(models.path(), q, bits=4, group_size=128)
    return q

