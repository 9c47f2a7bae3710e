"""The model's one-call layer stack (tridiff.layer_stack, ops.decoder_layers_ on the "cpp"
backend) against its op-by-op layers: the same logits and cache for every kind of
forward, the same greedy tokens in every decoding mode, and the rule choosing it."""
import pytest
import torch

import tridiff.cpp
from tests.model.support import ours, tiny_config, with_lora
from tridiff import _dispatch, layer_stack
from tridiff.generate import generate
from tridiff.modes import Mode
from tridiff.ops import TridiffInputError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer stack is a CPU path")


@pytest.fixture
def stack_calls(monkeypatch):
    """Counts calls of the C++ stack (skips, with the reason, where it is not built)."""
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    calls = []
    real = tridiff.cpp.decoder_layers_

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(tridiff.cpp, "decoder_layers_", counted)
    return calls


FORWARDS = [
    pytest.param(dict(T=7), id="prefill-causal"),
    pytest.param(dict(T=1), id="decode-step"),
    pytest.param(dict(T=4, modes=Mode.BIDIR_BLOCK), id="bidir-block"),
    pytest.param(dict(T=6, modes=Mode.QUADRATIC, mode_args=2), id="quadratic-L2"),
    pytest.param(dict(T=5, adapter=True), id="adapter"),
    pytest.param(dict(T=3, paged=True), id="paged"),
]


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("fwd", FORWARDS)
def test_stack_forward_matches_layers(monkeypatch, stack_calls, dtype, fwd):
    fwd = dict(fwd)
    T, paged = fwd.pop("T"), fwd.pop("paged", False)
    model = ours(with_lora(tiny_config()), dtype, seed=3)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    tokens = torch.randint(0, model.config.vocab_size, (2, T), generator=g)
    out = {}
    for choice in ("0", "1"):
        monkeypatch.setenv(layer_stack.ENV, choice)
        cache = model.new_cache(2, 32, paged=paged, page_size=4)
        model(prompt, cache, kv="commit")
        logits = model(tokens, cache, kv="commit", **fwd)
        out[choice] = (logits, cache.k.clone(), cache.v.clone(), cache.lens.clone())
    assert len(stack_calls) == 2, "the stack ran for the prompt and the forward with TRIDIFF_CPU_LAYER_STACK=1 only"
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name, a, b in zip(("logits", "k", "v"), out["0"][:3], out["1"][:3]):
        err = (a - b).abs().max().item()
        assert err <= tol * max(1.0, a.abs().max().item()), f"{name}: {err}"
    assert torch.equal(out["0"][3], out["1"][3])


STRATEGIES = [
    pytest.param(dict(mode="ar"), id="ar"),
    pytest.param(dict(mode="diffusion", block_length=4, threshold=0.9), id="diffusion"),
    pytest.param(dict(mode="linear-spec", block_length=4), id="linear-spec"),
    pytest.param(dict(mode="quadratic-spec", block_length=3), id="quadratic-spec"),
    pytest.param(dict(mode="quadratic-spec", block_length=4, anchors=2), id="anchored-k2"),
]


@pytest.mark.parametrize("kw", STRATEGIES)
def test_generate_tokens_equal_with_and_without_stack(monkeypatch, stack_calls, kw):
    """fp64: the two paths differ by rounding only, far below any logit gap."""
    model = ours(with_lora(tiny_config()), torch.float64, seed=1)
    prompts = [[5, 9, 13, 2, 7], [3, 3, 8]]
    runs = {}
    for choice in ("0", "1"):
        monkeypatch.setenv(layer_stack.ENV, choice)
        res = generate(model, prompts, max_new_tokens=12, eos_id=-1, **kw)
        runs[choice] = [r.tokens for r in res.results]
    assert stack_calls, "the stack never ran"
    assert runs["0"] == runs["1"]


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")])
def test_tiny_preset_adapter_through_the_stack(monkeypatch, stack_calls, tmp_path, dtype):
    """The tiny preset's drafter adapter as a checkpoint ships it (PEFT layout, loaded by
    from_pretrained): the stack's forward with the adapter equals the op-by-op layers', and
    the adapter changes the result (it is really applied)."""
    from tridiff.checkpoint import write_random_checkpoint
    from tridiff.model import Model
    write_random_checkpoint(str(tmp_path), "tiny", seed=3, with_tokenizer=False, with_adapter=True)
    model = Model.from_pretrained(str(tmp_path), dtype=dtype)
    assert model.has_adapter
    tokens = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(2))
    out = {}
    for choice, adapter in (("0", True), ("1", True), ("1", False)):
        monkeypatch.setenv(layer_stack.ENV, choice)
        cache = model.new_cache(2, 16)
        out[choice, adapter] = model(tokens, cache, kv="commit", adapter=adapter)
    assert len(stack_calls) == 2
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    a, b = out["0", True], out["1", True]
    assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())
    assert (out["1", False] - b).abs().max().item() > 100 * tol, "the adapter made no difference"


@pytest.mark.parametrize("projection", ["linear", "wxt", "bmm"])
@pytest.mark.parametrize("stack", ["0", "1"])
def test_batch_equals_solo_in_fp32(monkeypatch, projection, stack):
    """fp32, as the CLI and demo run: a batch of prompts gives each row the tokens it gets
    alone, with every CPU projection formulation forced (TRIDIFF_CPU_PROJECTION: auto picks
    one of these by timing, per weight shape and row bucket, so a batch and a solo run may
    take different ones) and with the stack off and on."""
    if stack == "1" and _dispatch.backend_unavailable("cpp"):
        pytest.skip(_dispatch.backend_unavailable("cpp"))
    monkeypatch.setenv("TRIDIFF_CPU_PROJECTION", projection)
    monkeypatch.setenv(layer_stack.ENV, stack)
    model = ours(with_lora(tiny_config()), torch.float32, seed=1)
    prompts = [[5, 9, 13, 2, 7], [3, 3, 8]]
    for kw in (dict(mode="ar"), dict(mode="linear-spec", block_length=4)):
        batch = generate(model, prompts, max_new_tokens=6, eos_id=-1, **kw)
        for b, p in enumerate(prompts):
            alone = generate(model, [p], max_new_tokens=6, eos_id=-1, **kw)
            assert batch.results[b].tokens == alone.results[0].tokens, f"{kw['mode']}: row {b}"


def test_auto_rule_and_env(monkeypatch):
    cpu, f32 = torch.device("cpu"), torch.float32
    monkeypatch.delenv(layer_stack.ENV, raising=False)
    limit, most = layer_stack.MAX_ROW_WEIGHTS, layer_stack.MAX_ROWS
    assert layer_stack.wanted(cpu, f32, 1, limit)
    assert not layer_stack.wanted(cpu, f32, 2, limit), "rows x weights per layer over the limit"
    assert layer_stack.wanted(cpu, f32, most, limit // most)
    assert not layer_stack.wanted(cpu, f32, most + 1, 1), "more rows than MAX_ROWS"
    assert not layer_stack.wanted(cpu, torch.bfloat16, 1, 10), "the C++ stack takes fp32/fp64 only"
    assert not layer_stack.wanted(torch.device("cuda"), f32, 1, 10)
    monkeypatch.setenv(layer_stack.ENV, "1")
    assert layer_stack.wanted(cpu, f32, 10 ** 6, limit)
    monkeypatch.setenv(layer_stack.ENV, "0")
    assert not layer_stack.wanted(cpu, f32, 1, 10)
    monkeypatch.setenv(layer_stack.ENV, "yes")
    with pytest.raises(ValueError, match=layer_stack.ENV):
        layer_stack.wanted(cpu, f32, 1, 10)


def test_auto_takes_the_stack_for_a_decode_step(monkeypatch, stack_calls):
    monkeypatch.delenv(layer_stack.ENV, raising=False)
    model = ours(tiny_config(), torch.float32)
    cache = model.new_cache(1, 16)
    model(torch.tensor([[1, 2, 3]]), cache, kv="commit")
    assert len(stack_calls) == 1
    model(torch.tensor([[1, 2, 3]]), cache, kv="commit", backend="torch")
    assert len(stack_calls) == 1, "backend='torch' keeps the op-by-op reference layers"


def test_weights_rechecked_after_a_parameter_moves(monkeypatch, stack_calls):
    """A parameter given new storage (here: a wrong shape) is noticed before the stack runs."""
    monkeypatch.setenv(layer_stack.ENV, "1")
    model = ours(tiny_config(), torch.float32)
    cache = model.new_cache(1, 16)
    model(torch.tensor([[1, 2]]), cache, kv="commit")
    down = model.encoder.layers[1].mlp.down_proj.weight
    down.data = down.data[:, :-1].clone()
    k0 = cache.k.clone()
    with pytest.raises(TridiffInputError, match=r"^weights\[13\] \(down of layer 1\): expected shape"):
        model(torch.tensor([[4]]), cache, kv="commit")
    assert torch.equal(cache.k, k0)
