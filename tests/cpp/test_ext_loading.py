"""tridiff._ext tells "not built" from "broken" from "built for another torch", keeps
the import error text, and the cpp/cuda backends report it through unavailable()."""
import sys
import types

import pytest
import torch

from tridiff import _ext


@pytest.fixture
def fake_ext(monkeypatch):
    """Point the "cpp" slot at a module name we control, with a fresh cache."""
    monkeypatch.setattr(_ext, "_cache", {})
    monkeypatch.setitem(_ext.MODULES, "cpp", "tridiff_test_fake_ext")
    yield "tridiff_test_fake_ext"
    sys.modules.pop("tridiff_test_fake_ext", None)


def test_not_built(fake_ext):
    reason = _ext.reason("cpp")
    assert "not built" in reason and "--no-build-isolation" in reason
    with pytest.raises(_ext.ExtensionUnavailable, match="not built"):
        _ext.load("cpp")


def test_broken_keeps_import_error(fake_ext, monkeypatch, tmp_path):
    (tmp_path / f"{fake_ext}.py").write_text("raise ImportError('undefined symbol: _ZN3foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reason = _ext.reason("cpp")
    assert "broken" in reason and "undefined symbol: _ZN3foo" in reason


def test_version_guard(fake_ext, monkeypatch):
    mod = types.ModuleType(fake_ext)
    mod.built_torch_version = "0.0.1-other"
    monkeypatch.setitem(sys.modules, fake_ext, mod)
    reason = _ext.reason("cpp")
    assert "0.0.1-other" in reason and torch.__version__ in reason and "rebuild" in reason


def test_matching_version_loads(fake_ext, monkeypatch):
    mod = types.ModuleType(fake_ext)
    mod.built_torch_version = torch.__version__
    monkeypatch.setitem(sys.modules, fake_ext, mod)
    assert _ext.reason("cpp") is None and _ext.load("cpp") is mod


def test_backends_report_reason():
    import tridiff.cpp
    import tridiff.cuda

    assert tridiff.cpp.unavailable() == _ext.reason("cpp")
    reason = tridiff.cuda.unavailable()
    if not torch.cuda.is_available():
        assert reason  # the cuda backend never claims to be usable without a GPU


def test_cupy_import_never_fails():
    import tridiff.cupy as tc

    st = tc.status()
    assert set(st) == {"version", "available", "error"}
    if not torch.cuda.is_available():
        assert st["available"] is False and st["error"]
        with pytest.raises(RuntimeError, match="unavailable"):
            tc.sample(None)


def test_auto_picks_cpp_on_cpu():
    """With the extension built, "auto" on CPU tensors runs the cpp backend where the CPU
    order puts it first (bench/bench_cpu_backends.py): sampling and KV writes, while
    accept_quadratic stays on torch."""
    from tridiff import _dispatch

    if _ext.reason("cpp") is not None:
        pytest.skip(_ext.reason("cpp"))
    x = torch.zeros(2, 1, 16)
    seed = offset = torch.zeros(2, dtype=torch.int64)
    assert _dispatch.resolve("sample", "auto", x.device, (x, 0.7, seed, offset), {}) == "cpp"
    assert _dispatch.resolve("sample", "auto", x.device, (x, 0.0, None, None), {}) == "cpp"
    drafts, lens4 = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, dtype=torch.int32)
    assert _dispatch.resolve("accept_quadratic", "auto", x.device, (torch.zeros(2, 2, 16), drafts, lens4, -1),
                             {}) == "torch"
    kc = torch.zeros(2, 8, 1, 16)
    lens = torch.zeros(2, dtype=torch.int32)
    assert _dispatch.resolve("kv_write_", "auto", x.device, (kc, kc.clone(), kc[:, :1], kc[:, :1], lens, lens + 1,
                                                             None), {}) == "cpp"
    # ...and refuses CUDA-only situations with a reason instead of crashing.
    import tridiff.cpp

    assert "cpu" in tridiff.cpp.supports_sample(x.to("meta"), 0.0, None, None)
