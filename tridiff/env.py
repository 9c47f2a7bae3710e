"""Environment report: `python -m tridiff.env [--json]`.

Prints the torch / CUDA / triton / cupy versions, the GPU, and for each compiled
extension whether it is built, for which CUDA archs, and if unusable, why. --json
prints one object (keys: torch, cuda, triton, cupy, cuda_extension_built,
cuda_extension_error, cpu_extension_built, cpu_extension_error, cuda_extension_archs,
gpu, python, tridiff, backend_forced: the backend TRIDIFF_BACKEND names or null,
backend_forced_error: why its value is refused, or null).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys


def _version(module: str):
    try:
        mod = __import__(module)
    except Exception as exc:  # noqa: BLE001 - report, never fail
        return None, f"{module} is not importable: {exc}"
    return getattr(mod, "__version__", "unknown"), None


def _gpu(torch):
    try:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


def _forced():
    """(the backend TRIDIFF_BACKEND names or None, why its value is refused or None)."""
    from tridiff import _dispatch

    try:
        return _dispatch.forced(), None
    except _dispatch.BackendUnavailable as exc:
        return None, str(exc)


def report() -> dict:
    import torch

    import tridiff
    from tridiff import _ext

    triton, triton_err = _version("triton")
    cupy_info = {"version": None, "error": None, "available": False}
    try:
        from tridiff import cupy as td_cupy

        cupy_info.update(td_cupy.status())
    except Exception as exc:  # noqa: BLE001
        cupy_info["error"] = str(exc)
    out = {
        "tridiff": tridiff.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton,
        "triton_error": triton_err,
        "cupy": cupy_info["version"],
        "cupy_available": cupy_info["available"],
        "cupy_error": cupy_info["error"],
        "gpu": _gpu(torch),
    }
    out["backend_forced"], out["backend_forced_error"] = _forced()
    for key, name in (("cpu_extension", "cpp"), ("cuda_extension", "cuda")):
        err = _ext.reason(name)
        out[f"{key}_built"] = _ext.built(name)
        out[f"{key}_error"] = err
        mod = None if err else _ext.load(name)
        out[f"{key}_torch"] = getattr(mod, "built_torch_version", None)
        if name == "cuda":
            out["cuda_extension_archs"] = getattr(mod, "built_archs", None)
    return out


def _text(r: dict) -> str:
    lines = [f"tridiff {r['tridiff']} (python {r['python']})",
             f"torch   {r['torch']} (CUDA {r['cuda'] or 'none: CPU build'})",
             f"triton  {r['triton'] or 'not available: ' + str(r['triton_error'])}",
             f"cupy    {r['cupy'] or 'not available'}" + (f" ({r['cupy_error']})" if r["cupy_error"] else ""),
             f"gpu     {r['gpu'] or 'none visible'}"]
    if r["backend_forced"] or r["backend_forced_error"]:
        lines.append(r["backend_forced_error"] or f"TRIDIFF_BACKEND={r['backend_forced']}: stands in for "
                     f"backend 'auto' for the ops {r['backend_forced']!r} implements")
    for key, label in (("cpu_extension", "cpp extension (tridiff._cpp)"), ("cuda_extension", "cuda extension (tridiff._cuda)")):
        if r[f"{key}_error"] is None:
            extra = f", archs {r['cuda_extension_archs']}" if key == "cuda_extension" else ""
            lines.append(f"{label}: ready (built against torch {r[f'{key}_torch']}{extra})")
        else:
            lines.append(f"{label}: {'built but unusable' if r[f'{key}_built'] else 'not built'}: {r[f'{key}_error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tridiff.env", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    r = report()
    print(json.dumps(r, indent=None, sort_keys=True) if args.json else _text(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
