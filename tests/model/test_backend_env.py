"""TRIDIFF_BACKEND end to end: a short generate in every mode on the tiny preset (with
its drafter adapter) under every value of the variable.

A forced backend means "this backend for the ops it implements": every op it exports
resolves to it (a refusal is raised, naming the variable), the ops it lacks keep the
automatic choice, and the model's choice of the one-call layer stack
(ops.decoder_layers_, the cpp backend's) falls back to the op-by-op layers wherever the
forced backend is another one or cannot take the inputs. Float64, so every backend
that runs gives the tokens of the unforced run.
"""
import pytest
import torch

from tridiff import _dispatch
from tridiff.config import LoraConfig, preset
from tridiff.generate import generate
from tridiff.model import Model

ENV = "TRIDIFF_BACKEND"
MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
VALUES = ["", "auto", *_dispatch.BACKENDS]
PROMPTS = [[1, 300, 301, 302, 303], [1, 400, 401]]
KW = dict(max_new_tokens=8, block_length=4, eos_id=-1)


def tiny(dtype=torch.float64, **overrides) -> Model:
    config = preset("tiny", lora=LoraConfig(rank=8, alpha=32.0), **overrides)
    return Model(config, device="cpu", dtype=dtype).init_random_(0)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def unforced(model):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV, raising=False)
        return {mode: generate(model, PROMPTS, mode=mode, **KW) for mode in MODES}


@pytest.fixture
def resolved(monkeypatch):
    """Every (op, backend) the dispatcher resolved (or refused: backend None)."""
    log = []
    real = _dispatch.resolve

    def spy(op, backend, device, args, kwargs):
        try:
            name = real(op, backend, device, args, kwargs)
        except _dispatch.BackendUnavailable:
            log.append((op, None))
            raise
        log.append((op, name))
        return name
    monkeypatch.setattr(_dispatch, "resolve", spy)
    return log


def implements(name: str, op: str) -> bool:
    return hasattr(_dispatch.backend_module(name), op)


def cpu_refusal(value: str):
    """None if `value` can run a CPU forward here, else a fragment of the expected error."""
    if value in ("", "auto", "torch", "sdpa"):
        return None
    if value == "cpp":
        return _dispatch.backend_unavailable("cpp") or None
    # the GPU backends refuse CPU tensors (triton takes them in its interpreter, but not
    # in float64), or are not there at all
    return f"backend {value!r}"


def tokens(out):
    return [(r.tokens, r.nfe) for r in out.results]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", VALUES, ids=lambda v: v or "unset")
def test_every_value_end_to_end(model, unforced, resolved, monkeypatch, value, mode):
    monkeypatch.setenv(ENV, value)
    refusal = cpu_refusal(value)
    if refusal is not None:
        with pytest.raises(_dispatch.BackendUnavailable, match=f"{ENV}={value}") as info:
            generate(model, PROMPTS, mode=mode, **KW)
        assert refusal in str(info.value)
        return
    out = generate(model, PROMPTS, mode=mode, **KW)
    assert tokens(out) == tokens(unforced[mode])
    assert resolved and all(name is not None for _, name in resolved), resolved
    ops = {op for op, _ in resolved}
    assert "kv_commit_" in ops and ops & {"attention", "decoder_layers_"}
    if value in ("", "auto"):
        return
    for op, name in resolved:   # the forced backend for the ops it implements, auto for the rest
        if implements(value, op):
            assert name == value, (op, name)
        else:
            assert name in _dispatch.auto_order(op, "cpu"), (op, name)
    if value == "cpp":
        assert ("decoder_layers_", "cpp") in resolved   # few rows: the one-call stack ran
    else:   # another backend forced: the op-by-op layers (its attention, not the stack's)
        assert "decoder_layers_" not in ops and "attention" in ops


def test_forced_backend_where_the_stack_refuses(model, unforced, resolved, monkeypatch):
    """TRIDIFF_BACKEND=cpp and inputs the C++ stack refuses: the model runs its op-by-op
    layers (cpp for each op) instead of raising the stack's refusal."""
    if _dispatch.backend_unavailable("cpp"):
        pytest.skip(_dispatch.backend_unavailable("cpp"))
    monkeypatch.setenv(ENV, "cpp")
    monkeypatch.setattr(_dispatch.backend_module("cpp"), "supports_decoder_layers_",
                        lambda *args: "refused by this test")
    out = generate(model, PROMPTS, mode="linear-spec", **KW)
    assert tokens(out) == tokens(unforced["linear-spec"])
    assert ("decoder_layers_", None) in resolved   # asked, refused, not raised
    assert ("attention", "cpp") in resolved and ("decoder_layers_", "cpp") not in resolved


def test_forced_cpp_with_a_head_dim_the_stack_cannot_take(resolved, monkeypatch):
    """The issue's case: head_dim 24. The stack's refusal is not raised; the op-by-op
    layers run cpp for the ops it serves, so what remains is attention's own answer:
    it runs, or a refusal that names attention and the variable."""
    if _dispatch.backend_unavailable("cpp"):
        pytest.skip(_dispatch.backend_unavailable("cpp"))
    model = tiny(head_dim=24)
    monkeypatch.setenv(ENV, "cpp")
    try:
        out = generate(model, PROMPTS, mode="ar", **KW)
    except _dispatch.BackendUnavailable as exc:
        assert "cannot serve attention" in str(exc) and f"{ENV}=cpp" in str(exc), exc
        assert resolved[-1] == ("attention", None)
    else:
        assert all(len(r.tokens) == KW["max_new_tokens"] for r in out.results)
    assert ("decoder_layers_", None) in resolved and ("decoder_layers_", "cpp") not in resolved


@pytest.mark.parametrize("value", ["bogus", "Torch"])
def test_an_unknown_value_is_named(model, monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(_dispatch.BackendUnavailable, match=f"{ENV}: expected one of auto/torch/.*got {value!r}"):
        generate(model, PROMPTS, mode="ar", **KW)


def test_an_explicit_backend_is_not_replaced(model, resolved, monkeypatch):
    """The variable stands in for "auto" only: backend="torch" stays torch."""
    monkeypatch.setenv(ENV, "cpp")
    generate(model, PROMPTS, mode="ar", backend="torch", **KW)
    assert resolved and {name for _, name in resolved} == {"torch"}


def test_forced_triton_runs_a_cpu_generate_in_its_interpreter(monkeypatch):
    """The one value the float64 runs above only see refusing: triton's interpreter takes
    float32 CPU tensors (slow, so one short diffusion run)."""
    from tridiff.triton._common import interpreting

    if _dispatch.backend_unavailable("triton") or not interpreting():
        pytest.skip("triton takes CPU tensors only in its interpreter (TRITON_INTERPRET=1, set by "
                    "tests/conftest.py on a machine without CUDA)")
    model = tiny(torch.float32)
    kw = dict(KW, max_new_tokens=4)
    monkeypatch.delenv(ENV, raising=False)
    unforced = generate(model, PROMPTS, mode="diffusion", **kw)
    log = []
    real = _dispatch.resolve
    monkeypatch.setattr(_dispatch, "resolve", lambda *a: log.append((a[0], real(*a))) or log[-1][1])
    monkeypatch.setenv(ENV, "triton")
    out = generate(model, PROMPTS, mode="diffusion", **kw)
    assert tokens(out) == tokens(unforced)
    assert ("attention", "triton") in log and all(name == "triton" for op, name in log if implements("triton", op))
