"""The "cpp" backend: CPU kernels compiled from csrc/ (tridiff._cpp, OpenMP).

Serves the KV-cache ops, sampling, diffusion confidence/unmask and the linear and
quadratic acceptance on CPU tensors, bit-identical to the reference for data
movement and integer outputs. unavailable() says why when the module is not built
(or was built for another torch). Importing this package never compiles or loads
anything; the extension loads on first use.
"""
from tridiff.cpp._native import Native, export

_backend = Native("cpp", "cpu")
export(_backend, globals())
