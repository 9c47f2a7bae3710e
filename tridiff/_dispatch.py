"""Backend selection for every public op.

OPS is the one table of ops: op name -> the family module that defines it (the
reference's and the Triton backend's submodules carry these names; csrc/ groups the
same families). Everything that needs the list of ops reads it from here.

Backend protocol. A backend is the module named in BACKEND_MODULES. It exports, as
plain module attributes written out in its source (no module __getattr__, no
injection into globals()):
  * <op>: for each op of OPS it serves, a function with the reference's exact
    positional signature (tridiff.reference is the torch backend and serves them all);
  * supports_<op>(*args) (optional): None, or the reason it cannot take these inputs;
  * unavailable() (optional): None, or why the whole backend is missing (not
    installed, not built, no device).
Nothing in a backend module may need a GPU, triton or a compiled extension at import
time beyond what unavailable() reports: the compiled extension loads on first call.
A backend that is a package with per-op submodules named like its ops exports from a
separate module (tridiff.triton.backend), so an op name never resolves to a submodule.

"auto" tries AUTO_ORDER for the device of the first tensor argument (refined per op by
AUTO_ORDER_PER_OP) and picks the first backend that is available and supports the
inputs; the torch reference serves everything, so "auto" always finds one. Asking for
a named backend that cannot serve raises BackendUnavailable with the reason.

TRIDIFF_BACKEND=<name> (ENV) stands in for "auto", for the ops that backend implements:
those resolve to it (a refusal raises BackendUnavailable naming the variable), the
ops it lacks (decoder_layers_ under sdpa, say) keep the automatic choice. Unset, empty
or "auto": no effect. An explicitly named backend is never replaced.
"""
from __future__ import annotations

import importlib
import os

import torch

BACKEND_MODULES = {
    "torch": "tridiff.reference",
    "triton": "tridiff.triton.backend",
    "cuda": "tridiff.cuda",
    "cpp": "tridiff.cpp",
    "sdpa": "tridiff.sdpa",   # attention only, CPU: torch SDPA with the mode mask
}
BACKENDS = tuple(BACKEND_MODULES)
OPS = {
    "attention": "attention",
    "kv_write_": "kv_cache", "kv_append_": "kv_cache", "kv_commit_": "kv_cache", "kv_rollback_": "kv_cache",
    "kv_compact_": "kv_cache", "paged_reserve_": "kv_cache", "paged_release_": "kv_cache",
    "sample": "sample", "diffusion_confidence": "sample", "diffusion_unmask": "sample",
    "accept_linear": "accept", "accept_rejection": "accept", "accept_quadratic": "accept",
    "decoder_layers_": "decoder",
    "quant_linear": "quant", "quant_linear_a8": "quant", "mixed_linear": "quant",
}

# Fastest first, per device type, refined per op. The CPU entries follow
# bench/bench_cpu_backends.py and bench/bench_cpu_attention.py; the numbers behind each
# are in bench/NOTES.md, "Backend order on CPU: why".
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpp", "torch"),
}
# Per-op overrides of AUTO_ORDER: {op_name: {device_type: (backends...)}}.
AUTO_ORDER_PER_OP: dict[str, dict[str, tuple[str, ...]]] = {
    # Token parity: the C++ confidence can differ from torch's softmax by one ulp.
    "diffusion_confidence": {"cpu": ("torch",)},
    # CPU: SDPA is fastest at every decoding shape measured; CUDA: Triton until tests/cuda pass on a GPU.
    "attention": {"cpu": ("sdpa", "torch", "cpp"), "cuda": ("triton", "cuda", "torch")},
    # CPU: metadata only or a few rows; torch ties or wins.
    "kv_commit_": {"cpu": ("torch", "cpp")},
    "kv_rollback_": {"cpu": ("torch", "cpp")},
    "accept_quadratic": {"cpu": ("torch", "cpp")},
}


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    """The backends "auto" tries, in order, for `op` on a device of this type."""
    return AUTO_ORDER_PER_OP.get(op, {}).get(device_type) or AUTO_ORDER.get(device_type, ("torch",))


ENV = "TRIDIFF_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot serve this call; the message says why."""


_modules: dict[str, object] = {}
_import_errors: dict[str, str] = {}
_unavailable: dict[str, str] = {}


def backend_module(name: str):
    """Import a backend module, or return None and remember why it failed."""
    if name in _modules:
        return _modules[name]
    if name in _import_errors:
        return None
    try:
        mod = importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:
        _import_errors[name] = f"backend {name!r} cannot be imported: {exc}"
        return None
    except Exception as exc:  # a broken backend (e.g. a failing triton import) must not break tridiff.ops
        _import_errors[name] = f"backend {name!r} failed to import: {exc!r}"
        return None
    _modules[name] = mod
    return mod


def load_all() -> None:
    """Import every backend module now (no GPU is needed, and no compiled extension is
    loaded: backends load those on first use).

    Called when tridiff.ops is imported so that torch.compile can trace backend
    resolution: Dynamo cannot trace an import, but it traces the dict look-ups and
    supports_<op> checks that follow one.
    """
    for name in BACKEND_MODULES:
        backend_module(name)


@torch.compiler.assume_constant_result
def backend_unavailable(name: str) -> str:
    """'' if backend `name` is usable in this process, else why not. Cached: whether a
    backend is installed/built/has a device does not change while a process runs,
    and torch.compile takes the answer as a constant instead of tracing imports."""
    if name not in _unavailable:
        mod = backend_module(name)
        if mod is None:
            _unavailable[name] = _import_errors[name]
        else:
            check = getattr(mod, "unavailable", None)
            reason = check() if check is not None else None
            _unavailable[name] = f"backend {name!r} is unavailable: {reason}" if reason else ""
    return _unavailable[name]


def why_not(name: str, op: str, args: tuple, kwargs: dict):
    """None if backend `name` can serve op(*args, **kwargs), else the reason."""
    if op not in OPS:
        return f"{op!r} is not an op of tridiff._dispatch.OPS"
    reason = backend_unavailable(name)
    if reason:
        return reason
    mod = _modules[name]
    if not hasattr(mod, op):
        return f"backend {name!r} does not implement {op}"
    supports = getattr(mod, f"supports_{op}", None)
    reason = supports(*args, **kwargs) if supports is not None else None
    if reason:
        return f"backend {name!r} cannot serve {op} for these inputs: {reason}"
    return None


def forced() -> str | None:
    """The backend TRIDIFF_BACKEND names, or None when it is unset, empty or "auto"."""
    name = os.environ.get(ENV, "")
    if name in ("", "auto"):
        return None
    if name not in BACKEND_MODULES:
        raise BackendUnavailable(f"{ENV}: expected one of auto/{'/'.join(BACKENDS)} (or unset), got {name!r}")
    return name


def resolve(op: str, backend: str, device: torch.device, args: tuple, kwargs: dict) -> str:
    """Turn "auto" or a backend name into the concrete backend that will run."""
    if backend == "auto":
        name = forced()
        # a backend that failed to import may implement op: its import error is the answer
        if name is not None and (backend_module(name) is None or hasattr(_modules[name], op)):
            reason = why_not(name, op, args, kwargs)
            if reason:
                raise BackendUnavailable(f"{reason} ({ENV}={name})")
            return name
    if backend != "auto":
        if backend not in BACKEND_MODULES:
            raise BackendUnavailable(f"backend: expected one of auto/{'/'.join(BACKENDS)}, got {backend!r}")
        reason = why_not(backend, op, args, kwargs)
        if reason:
            raise BackendUnavailable(reason)
        return backend
    for name in auto_order(op, device.type):
        if why_not(name, op, args, kwargs) is None:
            return name
    return "torch"


def traced() -> bool:
    """Whether torch.compile is tracing or a dispatch mode (FakeTensorMode, ...) is active.
    Then an op must run through its torch.library registration (schema + fake
    implementation); otherwise calling the backend function directly is the same
    computation without the dispatcher's per-call cost."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0


def implementation(op: str, backend: str):
    mod = backend_module(backend)
    if mod is None:
        raise BackendUnavailable(_import_errors[backend])
    return getattr(mod, op)
