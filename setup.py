"""Build script: pure-Python package, plus the compiled extensions when possible.

TRIDIFF_BUILD_CPP=auto|0|1 decides the CPU extension (tridiff._cpp),
TRIDIFF_BUILD_CUDA=auto|0|1 the CUDA extension (tridiff._cuda):
  auto  build it when possible (a failed compile only skips it)
  0     never build it
  1     build it or fail loudly
A CPU-only torch never attempts the CUDA build. In an isolated build (plain
`pip install .`) torch is not importable, so nothing is compiled: build with
`pip install --no-build-isolation .` so the installed torch is used.
TORCH_CUDA_ARCH_LIST defaults to 9.0a when no GPU is visible. Details: csrc_build.py.
"""
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from csrc_build import extensions  # noqa: E402  (local build helper next to this file)
except ImportError as exc:  # a source tree without csrc/: pure-Python install
    print(f"tridiff: no compiled extensions ({exc})")
    ext_modules, cmdclass = [], {}
else:
    ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
