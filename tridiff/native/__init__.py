"""Argument packing shared by the "cpp" and "cuda" backends, one module per op family
as in csrc/ (kv, accept/sample as `select`, attention) over the plumbing in `base`.

Both compiled modules (tridiff._cpp, tridiff._cuda) expose the same functions taking raw
data pointers, byte strides and a stream (csrc/bind.h). Native turns the reference's
positional signatures into those calls, and answers supports_<op> with a reason when a
layout is not one the kernels take. Outputs are allocated here with torch, so allocation
follows torch's caching allocator and CUDA graphs. Nothing here loads an extension
before the first call.
"""
from tridiff.native.attention import AttentionOps
from tridiff.native.decoder import DecoderOps
from tridiff.native.kv import KvOps
from tridiff.native.quant import QuantOps
from tridiff.native.select import SelectOps


class Native(KvOps, SelectOps, DecoderOps, AttentionOps, QuantOps):   # DecoderOps launches the attention tiling too
    """One native backend: Native("cpp", "cpu") or Native("cuda", "cuda")."""
