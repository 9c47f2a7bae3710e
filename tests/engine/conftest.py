"""Fixtures of the engine tests: the tiny random checkpoint in float64 (as the decoding
tests use it: cached and batched paths agree far below any argmax gap), prompts, and
generate's solo answers, memoised per (strategy settings, prompt)."""
import pytest
import torch

from tests.generate.conftest import model, tiny_dir  # noqa: F401  (the decoding tests' tiny fp64 model)
from tridiff.generate import generate

L = 4
NEW = 16
# (strategy, settings): every strategy and its variants; generate's mode for each
CONFIGS = [
    ("ar", {}),
    ("ar", {"temperature": 0.9, "seed": 3}),
    ("linear-spec", {}),
    ("linear-spec", {"threshold": 0.6}),
    ("linear-spec", {"temperature": 1.0, "seed": 5}),
    ("linear-spec", {"temperature": 1.0, "rule": "reference", "seed": 2}),
    ("linear-spec", {"temperature": 1.0, "threshold": 0.5}),
    ("diffusion", {"threshold": 0.5}),
    ("diffusion", {}),
    ("diffusion", {"temperature": 1.0, "threshold": 0.7, "seed": 9}),
    ("quadratic-spec", {}),
    ("quadratic-spec", {"anchors": 2}),
    ("quadratic-spec", {"anchors": (0, 2)}),
    ("auto", {}),
]


@pytest.fixture(scope="session")
def prompts(model):
    """Prompts of different lengths, one longer than two prefill chunks of 16."""
    g = torch.Generator().manual_seed(7)
    V = model.config.vocab_size
    return [[model.config.bos_token_id] + [int(x) for x in torch.randint(200, V, (n,), generator=g)]
            for n in (5, 11, 40)]


@pytest.fixture(scope="session")
def solo(model):
    """solo(config_index, prompt) -> generate's tokens for that request alone."""
    memo = {}

    def get(i, prompt, backend="auto"):
        key = (i, tuple(prompt), backend)
        if key not in memo:
            strategy, kw = CONFIGS[i]
            mode = "ar" if strategy == "auto" else strategy
            memo[key] = generate(model, [prompt], mode=mode, max_new_tokens=NEW, block_length=L, backend=backend,
                                 **kw).results[0].tokens
        return memo[key]
    return get
