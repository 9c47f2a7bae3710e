"""Shared fixtures for the decoding tests: one tiny random checkpoint per session,
loaded in float64 so that cached and cache-free paths agree far below any argmax gap."""
import pytest
import torch

from tridiff.checkpoint import write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-ckpt")
    write_random_checkpoint(d, "tiny", seed=0, with_tokenizer=True, dtype=torch.float32)
    return d


@pytest.fixture(scope="session")
def model(tiny_dir):
    from tridiff.model import Model

    return Model.from_pretrained(tiny_dir, dtype=torch.float64)


@pytest.fixture(scope="session")
def prompts(model):
    """Three prompts of different lengths (ids avoid the special tokens)."""
    g = torch.Generator().manual_seed(7)
    V = model.config.vocab_size
    specials = {model.config.mask_token_id, model.config.eos_token_id, model.config.bos_token_id}
    out = []
    for n in (5, 11, 8):
        ids = [int(x) for x in torch.randint(200, V, (n,), generator=g)]
        out.append([model.config.bos_token_id] + [t for t in ids if t not in specials])
    return out


@pytest.fixture(scope="session")
def cuda_model(tiny_dir):
    """The tiny checkpoint on the GPU in float32 (eager and graphed runs must agree
    bit for bit, so the dtype only has to be the same for both)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tridiff.model import Model

    return Model.from_pretrained(tiny_dir, device="cuda", dtype=torch.float32)
