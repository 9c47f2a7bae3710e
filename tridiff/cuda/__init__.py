"""The "cuda" backend: hand-written CUDA kernels from csrc/ (tridiff._cuda).

Same functions and argument packing as the "cpp" backend (tridiff.native), launched on
torch's current CUDA stream, so the ops can be captured in CUDA graphs. unavailable()
says why when the module is not built, was built for another torch, or no GPU is
visible. Exports follow the backend protocol of tridiff._dispatch.
"""
from tridiff.native import Native

_backend = Native("cuda", "cuda")

unavailable = _backend.unavailable

# KV cache (csrc/kv); the stride rules are in tridiff.native.kv.KvOps
kv_write_ = _backend.kv_write_
supports_kv_write_ = _backend.supports_kv_write_
kv_append_ = _backend.kv_append_
supports_kv_append_ = _backend.supports_kv_append_
kv_commit_ = _backend.kv_commit_
supports_kv_commit_ = _backend.supports_kv_commit_
kv_rollback_ = _backend.kv_rollback_
supports_kv_rollback_ = _backend.supports_kv_rollback_
kv_compact_ = _backend.kv_compact_
supports_kv_compact_ = _backend.supports_kv_compact_
paged_reserve_ = _backend.paged_reserve_
supports_paged_reserve_ = _backend.supports_paged_reserve_
paged_release_ = _backend.paged_release_
supports_paged_release_ = _backend.supports_paged_release_
# token selection (csrc/accept)
sample = _backend.sample
supports_sample = _backend.supports_sample
diffusion_confidence = _backend.diffusion_confidence
supports_diffusion_confidence = _backend.supports_diffusion_confidence
diffusion_unmask = _backend.diffusion_unmask
supports_diffusion_unmask = _backend.supports_diffusion_unmask
accept_linear = _backend.accept_linear
supports_accept_linear = _backend.supports_accept_linear
accept_rejection = _backend.accept_rejection
supports_accept_rejection = _backend.supports_accept_rejection
accept_quadratic = _backend.accept_quadratic
supports_accept_quadratic = _backend.supports_accept_quadratic
# attention (csrc/attention)
attention = _backend.attention
supports_attention = _backend.supports_attention
attention_launch = _backend.attention_launch  # test knobs: forced splits, NaN-filled out/workspace
