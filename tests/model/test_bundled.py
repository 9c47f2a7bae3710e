"""The bundled trained model: it loads from the package like a released checkpoint,
its config and drafter adapter are the released layout, the adapter (on by default)
leaves the AR path alone, and greedy self-speculation on it equals AR."""
import json
import os

import pytest
import torch

from tridiff import Mode, models
from tridiff.checkpoint import (ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, adapter_shapes, expected_shapes,
                                normalise_adapter_key, open_checkpoint, scan, weight_files)
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


def _demo_ids(tok, d, count=2):
    with open(os.path.join(d, "demo_prompts.json")) as fh:
        return [tok.encode(p["text"], add_bos=False) for p in json.load(fh)[:count]]


def test_bundled_adapter_is_the_released_layout_and_on_by_default(bundled):
    model, _, d = bundled
    adir = os.path.join(d, ADAPTER_DIR)
    assert sorted(os.listdir(adir)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert sum(os.path.getsize(os.path.join(adir, f)) for f in os.listdir(adir)) <= 2 * 2 ** 20
    with open(os.path.join(adir, ADAPTER_CONFIG)) as fh:
        meta = json.load(fh)
    assert meta["peft_type"] == "LORA" and meta["target_modules"] == ["o_proj"]
    found = open_checkpoint(d)   # adapter="auto" takes it
    assert model.has_adapter and model.config.lora == found.config.lora
    assert model.config.lora.rank == meta["r"] and model.config.lora.alpha == meta["lora_alpha"]
    stored = {normalise_adapter_key(k): v[1] for k, v in found.adapter.items()}
    assert stored == adapter_shapes(model.config, meta["r"])
    # trained, not PEFT's zero start: every layer's B moved
    assert all(float(layer.lora_B.weight.abs().max()) > 0 for layer in model.linear_spec_lora)
    assert not Model.from_pretrained(d, dtype=torch.float32, adapter=False).has_adapter


def test_adapter_leaves_the_ar_path_unchanged(bundled):
    """Prefill / commit / verify run without the adapter: the same causal logits (so the
    same held-out AR loss) and the same AR output as the model loaded without it; the
    draft forward is where it acts."""
    model, tok, d = bundled
    plain = Model.from_pretrained(d, dtype=torch.float32, adapter=False)
    prompts = _demo_ids(tok, d)
    on = generate(model, prompts, mode="ar", max_new_tokens=24).results
    off = generate(plain, prompts, mode="ar", max_new_tokens=24).results
    assert [r.tokens for r in on] == [r.tokens for r in off]
    ids = torch.tensor([prompts[0]])
    causal = [m(ids, m.new_cache(1, ids.shape[1]), modes=Mode.CAUSAL) for m in (model, plain)]
    assert torch.equal(causal[0], causal[1])
    nll = [torch.nn.functional.cross_entropy(c[0, :-1], ids[0, 1:]) for c in causal]
    assert float(nll[0]) == float(nll[1])
    block = torch.full((1, 16), model.config.mask_token_id)
    block[0, 0] = ids[0, -1]
    cache = model.new_cache(1, ids.shape[1] + 16)
    model(ids[:, :-1], cache, modes=Mode.CAUSAL, kv="commit")
    drafts = [model(block, cache, modes=Mode.BIDIR_BLOCK, adapter=a) for a in (True, False)]
    assert (drafts[0] - drafts[1]).abs().max() > 1e-2


def test_unknown_bundled_name_is_refused():
    with pytest.raises(ValueError, match="name: expected a bundled model"):
        models.path("no-such-model")


@pytest.mark.parametrize("mode,threshold", [("linear-spec", None), ("linear-spec", 0.9), ("quadratic-spec", None)])
def test_greedy_self_speculation_equals_ar_on_the_bundled_model(bundled, mode, threshold):
    model, tok, _ = bundled
    assert model.has_adapter   # the drafts below are the adapter's
    prompts = [tok.encode("import os\n\n\ndef read_lines(path):\n", add_bos=True),
               tok.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self",
                          add_bos=True)]
    n, L = 32, 16
    ar = generate(model, prompts, mode="ar", max_new_tokens=n + L - 1).results
    spec = generate(model, prompts, mode=mode, max_new_tokens=n, block_length=L, threshold=threshold).results
    for a, s in zip(ar, spec):
        assert len(s.tokens) >= min(n, len(a.tokens)) and s.tokens == a.tokens[:len(s.tokens)]
    if threshold is None:   # a trained model accepts drafts: fewer forwards than tokens (one draft forward each)
        assert sum(len(s.tokens) for s in spec) > sum(s.nfe for s in spec)


def test_cli_no_adapter_drafts_without_it(bundled, capsys):
    from tridiff.cli import main

    model, tok, d = bundled
    plain = Model.from_pretrained(d, dtype=torch.float32, adapter=False)
    prompt = "import os\n\n\ndef read_lines(path):\n"
    got = {}
    for off in (False, True):
        argv = ["generate", "--prompt", prompt, "--max-new-tokens", "32", "--device", "cpu", "--json"]
        assert main(argv + (["--no-adapter"] if off else [])) == 0
        got[off] = json.loads(capsys.readouterr().out)["results"][0]
    refs = {off: generate(m, [tok.encode(prompt)], mode="linear-spec", max_new_tokens=32, threshold=0.0).results[0]
            for off, m in ((False, model), (True, plain))}
    assert refs[False].nfe != refs[True].nfe   # the adapter changes the drafts here, so the flag is visible
    for off in (False, True):
        assert (got[off]["tokens"], got[off]["nfe"]) == (refs[off].tokens, refs[off].nfe)
    assert got[False]["tokens"][:32] == got[True]["tokens"][:32]   # both AR greedy (linear may overshoot)
