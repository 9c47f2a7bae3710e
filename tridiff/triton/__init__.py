"""The "triton" backend: launchers (checks, strides, grids) for tridiff.kernels.

One submodule per op family (attention, kv_cache, sample, accept: the families of
tridiff._dispatch.OPS), helpers shared by them in _common. The dispatcher's backend
module is tridiff.triton.backend, which exports the ops: a submodule named like an op
(tridiff.triton.attention) is then never mistaken for the op's function.
"""
# The attention launcher imports device_reason from here.
from tridiff.triton._common import device_reason, interpreting, unavailable  # noqa: F401
