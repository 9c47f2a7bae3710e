"""The backend protocol of tridiff._dispatch: one table of ops, explicit exports."""
import inspect
import types

import pytest

import tridiff.reference as reference
from tridiff import _dispatch

OP_SIGNATURES = {op: inspect.signature(getattr(reference, op)) for op in _dispatch.OPS}


def test_reference_serves_every_op_of_the_table():
    assert all(callable(getattr(reference, op, None)) for op in _dispatch.OPS)


@pytest.mark.parametrize("name", _dispatch.BACKENDS)
def test_backend_exports_ops_as_functions_with_the_reference_signature(name):
    mod = _dispatch.backend_module(name)
    if mod is None:
        pytest.skip(_dispatch._import_errors[name])
    assert getattr(mod, "__getattr__", None) is None, "exports are plain attributes, not a module __getattr__"
    served = [op for op in _dispatch.OPS if hasattr(mod, op)]
    assert served, f"backend {name!r} serves no op"
    for op in served:
        fn = getattr(mod, op)
        assert not isinstance(fn, types.ModuleType), f"{name}.{op} is a module, not the op"
        params = list(inspect.signature(fn).parameters.values())
        want = list(OP_SIGNATURES[op].parameters)
        assert [p.name for p in params[:len(want)]] == want, f"{name}.{op}"
        assert all(p.default is not inspect.Parameter.empty or p.kind is p.KEYWORD_ONLY
                   for p in params[len(want):]), f"{name}.{op} adds a required parameter"
    for attr in dir(mod):  # a supports_ check for an op outside the table is a typo
        if attr.startswith("supports_"):
            assert attr[len("supports_"):] in _dispatch.OPS, f"{name}.{attr}"


def test_an_op_named_like_a_backend_submodule_resolves_to_the_function():
    pytest.importorskip("triton")
    import tridiff.triton.attention  # noqa: F401  (the submodule named like the op, imported)

    fn = _dispatch.implementation("attention", "triton")
    assert callable(fn) and not isinstance(fn, types.ModuleType)
