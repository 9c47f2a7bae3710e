"""Build script: pure-Python package, plus the compiled extensions when possible.

TRIDIFF_BUILD_CUDA=auto|0|1 decides the CUDA extension:
  auto  build it only if the importable torch is a CUDA build and nvcc works
  0     never build it
  1     build it or fail loudly
A CPU-only torch never attempts the CUDA build. In an isolated build (plain
`pip install .`) torch is not importable, so nothing is compiled: CUDA builds
need `pip install --no-build-isolation .` so the installed torch is used.
TORCH_CUDA_ARCH_LIST defaults to 9.0a when no GPU is visible.
"""
import os
import shutil
import subprocess

from setuptools import setup


def _flag() -> str:
    value = os.environ.get("TRIDIFF_BUILD_CUDA", "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise SystemExit(f"TRIDIFF_BUILD_CUDA must be auto, 0 or 1, got {value!r}")
    return value


def _cuda_build_reason():
    """Return None if the CUDA extension can be built, else the reason it cannot."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return "torch is not importable in the build environment (use --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return "nvcc not found (set CUDA_HOME)"
    try:
        subprocess.run([nvcc, "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"nvcc is not usable: {exc}"
    return None


def _ext_modules():
    flag = _flag()
    if flag == "0":
        return [], {}
    reason = _cuda_build_reason()
    if reason is not None:
        if flag == "1":
            raise SystemExit(f"TRIDIFF_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"tridiff: not building the CUDA extension: {reason}")
        return [], {}
    try:
        from csrc_build import cuda_extensions  # noqa: WPS433 (local build helper)
    except ImportError as exc:
        if flag == "1":
            raise SystemExit(f"TRIDIFF_BUILD_CUDA=1 but csrc_build is missing: {exc}")
        print(f"tridiff: no CUDA sources to build ({exc})")
        return [], {}
    return cuda_extensions()


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
