"""The "cpp" backend: CPU kernels compiled from csrc/ (tridiff._cpp, OpenMP).

Serves the KV-cache ops, sampling, diffusion confidence/unmask, the acceptance rules and
attention on CPU tensors, bit-identical to the reference for data movement and integer
outputs. unavailable() says why when the module is not built (or was built for another
torch). Importing this package never compiles or loads anything; the extension loads on
first use. Exports follow the backend protocol of tridiff._dispatch.
"""
from tridiff.native import Native

_backend = Native("cpp", "cpu")

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
# decoder layers in one call (csrc/cpu/decoder_cpu.cpp)
decoder_layers_ = _backend.decoder_layers_
supports_decoder_layers_ = _backend.supports_decoder_layers_
# projections on bf16 and int4 weights (csrc/cpu/decoder_qgemm.inc, the layer stack's panels)
quant_linear = _backend.quant_linear
supports_quant_linear = _backend.supports_quant_linear
quant_linear_a8 = _backend.quant_linear_a8   # int8 activations (csrc/cpu/decoder_a8.inc)
supports_quant_linear_a8 = _backend.supports_quant_linear_a8
mixed_linear = _backend.mixed_linear
supports_mixed_linear = _backend.supports_mixed_linear
