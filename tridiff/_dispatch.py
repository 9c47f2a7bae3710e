"""Backend selection for every public op.

A backend is a Python module that defines, for each op it serves, a function with
the reference's exact signature, and optionally `supports_<op>(*args, **kwargs)`
returning None or the reason it cannot take these inputs. The module may also
define `unavailable()` returning None or the reason the whole backend is missing
(not installed, not built, no device). Modules are imported lazily, so importing
tridiff never needs triton, a GPU or a compiled extension.

"auto" tries AUTO_ORDER for the device of the first tensor argument (refined per op by
AUTO_ORDER_PER_OP) and picks the first backend that is available and supports the
inputs; the torch reference
serves everything, so "auto" always finds one. Asking for a named backend that
cannot serve raises BackendUnavailable with the reason.
"""
from __future__ import annotations

import importlib
import os
import types

import torch

BACKEND_MODULES = {
    "torch": "tridiff.reference",
    "triton": "tridiff.triton",
    "cuda": "tridiff.cuda",
    "cpp": "tridiff.cpp",
    "sdpa": "tridiff.sdpa",   # attention only, CPU: torch SDPA with the mode mask
}
BACKENDS = tuple(BACKEND_MODULES)
OPS = ("attention", "kv_write_", "kv_append_", "kv_commit_", "kv_rollback_", "kv_compact_",
       "paged_reserve_", "paged_release_", "accept_linear", "accept_rejection", "accept_quadratic",
       "sample", "diffusion_confidence", "diffusion_unmask")

# Fastest first, per device type; refined per op as benchmarks show (bench/NOTES.md).
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpp", "torch"),
}
# Per-op overrides of AUTO_ORDER: {op_name: {device_type: (backends...)}}.
# CPU entries follow bench/bench_cpu_backends.py (2-core Xeon, vocab 131072, 32-token
# blocks, Hkv 8, D 128; ratio = torch ms / cpp ms, > 1: cpp faster, two runs each). Ops
# without a CPU entry keep cpp first: kv_write_/kv_append_ 20-80x, kv_compact_ 8-35x (26
# layers in one call 8-30x), paged_reserve_/paged_release_ 20-50x, diffusion_unmask 4-5.6x,
# greedy sample / accept_linear / accept_rejection 1.1-3.0x (vectorised argmax pass),
# sampled ones 1.1-19x (the torch reference's per-logit Philox is slow).
AUTO_ORDER_PER_OP: dict[str, dict[str, tuple[str, ...]]] = {
    # Diffusion decoding ranks positions by conf rounded to the logits dtype; the C++
    # kernel sums in double and can differ from torch's softmax by one ulp, which may
    # flip a threshold or top-k decision. Token parity with the reference wins on CPU
    # (torch is also 2-5x faster there: [4, 32, V] fp32 41-49 vs 175-227 ms).
    "diffusion_confidence": {"cpu": ("torch",)},
    # CPU: SDPA with the mode mask over the committed keys (tridiff.sdpa) is the fastest
    # at every decoding shape measured by bench/bench_cpu_attention.py (1-32 rows, caches
    # 32-160, the two bench_cpu_e2e models; bench/NOTES.md "CPU attention per shape"):
    # 3-8x the reference, 1-7x the C++ kernel. The C++ kernel beats the reference only at
    # short caches and is 2.5x slower on 3B verify shapes (134 vs 54 ms, 32 tokens over a
    # 4k cache), so it goes last. CUDA: the hand-written kernel has not yet run on a GPU;
    # Triton goes first until tests/cuda pass there.
    "attention": {"cpu": ("sdpa", "torch", "cpp"), "cuda": ("triton", "cuda", "torch")},
    # CPU, metadata only (B int32 lengths): both take 3-8 us, ratio 0.94-1.08 -- noise.
    "kv_commit_": {"cpu": ("torch", "cpp")},
    "kv_rollback_": {"cpu": ("torch", "cpp")},
    # CPU: [B, 20, V] (L=4) ratio 0.59-1.02: torch's argmax over so few rows wins or ties.
    "accept_quadratic": {"cpu": ("torch", "cpp")},
}


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    """The backends "auto" tries, in order, for `op` on a device of this type."""
    return AUTO_ORDER_PER_OP.get(op, {}).get(device_type) or AUTO_ORDER.get(device_type, ("torch",))


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
    _modules[name] = mod
    return mod


def load_all() -> None:
    """Import every backend module and its per-op submodules now (no GPU is needed,
    and no compiled extension is loaded: backends load those on first use).

    Called when tridiff.ops is imported so that torch.compile can trace backend
    resolution: Dynamo cannot trace an import, but it traces the dict look-ups and
    supports_<op> checks that follow one.
    """
    for name in BACKEND_MODULES:
        mod = backend_module(name)
        for op in OPS if mod is not None else ():
            for attr in (op, f"supports_{op}"):
                try:
                    hasattr(mod, attr)  # resolves lazily imported per-op submodules now
                except Exception as exc:  # a broken backend must not break `import tridiff.ops`
                    _import_errors.setdefault(name, f"backend {name!r} failed to load {attr}: {exc}")


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


def resolve(op: str, backend: str, device: torch.device, args: tuple, kwargs: dict) -> str:
    """Turn "auto" or a backend name into the concrete backend that will run.
    """
    forced = os.environ.get("TRIDIFF_BACKEND")
    if backend == "auto" and forced:
        backend = forced
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
    fn = getattr(mod, op)
    if isinstance(fn, types.ModuleType):
        # A backend package whose per-op submodule shares the op's name (tridiff.triton.attention):
        # once imported, the package attribute is the submodule, not the function.
        fn = getattr(fn, op)
    return fn
