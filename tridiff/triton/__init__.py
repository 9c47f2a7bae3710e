"""The "triton" backend: launchers (checks, strides, grids) for tridiff.kernels.

Each op lives in the submodule named in _OP_MODULES and is imported on first use,
so a missing or broken submodule only disables its own ops.
"""
from __future__ import annotations

import importlib
import os

_OP_MODULES = {
    "attention": "attention",
    "kv_write_": "kv_cache", "kv_append_": "kv_cache", "kv_commit_": "kv_cache",
    "kv_rollback_": "kv_cache", "kv_compact_": "kv_cache",
    "paged_reserve_": "kv_cache", "paged_release_": "kv_cache",
    "accept_linear": "accept", "accept_rejection": "accept", "accept_quadratic": "accept",
    "sample": "sample", "diffusion_confidence": "sample", "diffusion_unmask": "sample",
}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable():
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def device_reason(*tensors):
    """None if Triton can run on these tensors' device, else why not."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        return f"Triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {t.device}"
    return None


def __getattr__(name):
    base = name[len("supports_"):] if name.startswith("supports_") else name
    sub = _OP_MODULES.get(base)
    if sub is None:
        raise AttributeError(name)
    try:
        mod = importlib.import_module(f"tridiff.triton.{sub}")
    except ImportError as exc:
        # No triton (or a missing submodule): the op is simply not served here;
        # unavailable() tells the user why.
        raise AttributeError(f"{name} (tridiff.triton.{sub} cannot be imported: {exc})") from exc
    if not hasattr(mod, name):
        raise AttributeError(name)
    return getattr(mod, name)
