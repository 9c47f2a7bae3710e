"""Lazy loading of the compiled extensions, telling "not built" from "broken".

    load("cpp")  -> tridiff._cpp   (CPU build of csrc/, OpenMP)
    load("cuda") -> tridiff._cuda  (CUDA kernels)
Both return the module or raise ExtensionUnavailable whose message says why:
not built (and how to build it), failed to import (the import error text is kept),
or built against another torch/CUDA than the one running (rebuild). Results are
cached; importing this module imports no extension.
"""
from __future__ import annotations

import importlib

MODULES = {"cpp": "tridiff._cpp", "cuda": "tridiff._cuda"}
BUILD_HINT = {
    "cpp": "build it with `pip install --no-build-isolation -e .` (TRIDIFF_BUILD_CPP=1 to insist)",
    "cuda": ("build it on a machine with a CUDA torch and nvcc: `pip install --no-build-isolation -e .` "
             "(TRIDIFF_BUILD_CUDA=1 to insist)"),
}

# Dtype codes of the C ABI (csrc/common/macros.cuh: td::Dtype).
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}


class ExtensionUnavailable(RuntimeError):
    """The compiled module cannot be used; the message says why."""


_cache: dict[str, tuple[object, str | None]] = {}


def _check_versions(name: str, mod) -> str | None:
    import torch

    built = getattr(mod, "built_torch_version", None)
    if built is None:
        return f"tridiff extension {MODULES[name]} records no build versions: rebuild it"
    if built != torch.__version__:
        return (f"tridiff extension {MODULES[name]} was built against torch {built} but torch "
                f"{torch.__version__} is running: rebuild ({BUILD_HINT[name]})")
    if name == "cuda":
        built_cuda = getattr(mod, "built_cuda_version", "")
        if built_cuda != (torch.version.cuda or ""):
            return (f"tridiff extension {MODULES[name]} was built for CUDA {built_cuda or 'none'} but torch "
                    f"uses CUDA {torch.version.cuda or 'none'}: rebuild")
    return None


def _load(name: str):
    if name in _cache:
        return _cache[name]
    modname = MODULES[name]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            result = (None, f"{modname} is not built: {BUILD_HINT[name]}")
        else:
            result = (None, f"{modname} is broken: importing it failed: {exc!r}")
    except (ImportError, OSError) as exc:  # missing symbol, wrong ABI, missing libcudart...
        result = (None, f"{modname} is broken: importing it failed: {exc!r}")
    else:
        reason = _check_versions(name, mod)
        result = (None, reason) if reason else (mod, None)
    _cache[name] = result
    return result


def load(name: str):
    """The compiled module `name` ("cpp" or "cuda"), or raise ExtensionUnavailable."""
    mod, reason = _load(name)
    if mod is None:
        raise ExtensionUnavailable(reason)
    return mod


def reason(name: str) -> str | None:
    """None if the module loads, else why not (never raises)."""
    return _load(name)[1]


def built(name: str) -> bool:
    """Whether a compiled file for `name` exists at all (even if it fails to load)."""
    import importlib.util

    try:
        return importlib.util.find_spec(MODULES[name]) is not None
    except (ImportError, ValueError):
        return False


def dtype_code(dtype) -> int:
    return DTYPE_CODES[str(dtype).replace("torch.", "")]
