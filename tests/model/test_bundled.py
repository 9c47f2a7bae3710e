"""The bundled trained model: it loads from the package like a released checkpoint,
its config is the released layout, and greedy self-speculation on it equals AR."""
import json
import os

import pytest
import torch

from tridiff import models
from tridiff.checkpoint import expected_shapes, scan, weight_files
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def bundled():
    d = models.path()
    return Model.from_pretrained(d, dtype=torch.float32), Tokenizer.from_pretrained(d), d


def test_bundled_checkpoint_is_the_released_layout(bundled):
    _, tok, d = bundled
    with open(os.path.join(d, "config.json")) as fh:
        raw = json.load(fh)
    assert raw["model_type"] == "nemotron_labs_diffusion" and raw["block_size"] == 16
    assert raw["rope_parameters"]["rope_type"] == "yarn" and raw["tie_word_embeddings"] is False
    assert (raw["mask_token_id"], raw["eos_token_id"], raw["bos_token_id"]) == (100, 11, 1)
    found = scan(weight_files(d))
    cfg = bundled[0].config
    assert {k: v[1] for k, v in found.items()} == expected_shapes(cfg)
    assert os.path.getsize(os.path.join(d, "model.safetensors")) <= 16 * 2 ** 20
    assert tok.vocab_size == cfg.vocab_size
    assert tok.decode(tok.encode("def f(x):\n    return x\n")) == "def f(x):\n    return x\n"


def test_unknown_bundled_name_is_refused():
    with pytest.raises(ValueError, match="name: expected a bundled model"):
        models.path("no-such-model")


@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_greedy_self_speculation_equals_ar_on_the_bundled_model(bundled, mode):
    model, tok, _ = bundled
    prompts = [tok.encode("import os\n\n\ndef read_lines(path):\n", add_bos=True),
               tok.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self",
                          add_bos=True)]
    n, L = 32, 16
    ar = generate(model, prompts, mode="ar", max_new_tokens=n + L - 1).results
    spec = generate(model, prompts, mode=mode, max_new_tokens=n, block_length=L).results
    for a, s in zip(ar, spec):
        assert len(s.tokens) >= min(n, len(a.tokens)) and s.tokens == a.tokens[:len(s.tokens)]
    # a trained model accepts drafts: fewer forwards than tokens
    assert sum(len(s.tokens) for s in spec) > sum(s.nfe for s in spec)
