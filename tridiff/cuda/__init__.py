"""The "cuda" backend: hand-written CUDA kernels from csrc/ (tridiff._cuda).

Same functions and argument packing as the "cpp" backend (tridiff.cpp._native),
launched on torch's current CUDA stream, so the ops can be captured in CUDA graphs.
unavailable() says why when the module is not built, was built for another torch,
or no GPU is visible.
"""
from tridiff.cpp._native import Native, export

_backend = Native("cuda", "cuda")
export(_backend, globals())
