"""Per-step host work of the decoding loop on CPU: arguments are checked once per
generate call, so inside the loop no op runs a value check (tridiff._checks.trusted with
cpu=True), and each forward checks its attention arguments once, not once per layer."""
import importlib

import pytest
import torch

from tridiff import _checks as chk
from tridiff.generate import generate

attention_module = importlib.import_module("tridiff.ops.attention")   # tridiff.ops.attention is the op


@pytest.mark.parametrize("mode,kw", [("ar", {}), ("linear-spec", {"block_length": 4}),
                                     ("quadratic-spec", {"block_length": 2}),
                                     ("diffusion", {"block_length": 4})])
def test_no_value_checks_inside_the_loop(model, prompts, monkeypatch, mode, kw):
    answers = []
    real = chk.values_checkable

    def recording(x):
        answers.append(real(x))
        return answers[-1]

    monkeypatch.setattr(chk, "values_checkable", recording)
    generate(model, prompts[:2], mode=mode, max_new_tokens=4, **kw)
    assert answers and not any(answers), f"{sum(answers)} of {len(answers)} value checks ran in the loop"
    answers.clear()
    cpu = torch.zeros(2, dtype=torch.int32)
    assert chk.values_checkable(cpu)             # outside generate CPU values are checked
    with chk.trusted():
        assert chk.values_checkable(cpu)         # the device-only scope keeps them
    with chk.trusted(cpu=True):
        assert not chk.values_checkable(cpu)


def test_attention_arguments_checked_once_per_forward(model, prompts, monkeypatch):
    calls = []
    real = attention_module.normalize_attention_args

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(attention_module, "normalize_attention_args", counting)
    out = generate(model, prompts[:1], mode="ar", max_new_tokens=5)
    forwards = out.results[0].nfe   # prefill + 4 steps
    assert len(calls) == forwards == 5
    assert model.config.num_hidden_layers > 1
