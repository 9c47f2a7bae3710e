"""Plain-PyTorch reference implementations: the definition of truth for every op,
and the CPU path. As the "torch" backend it serves every op of tridiff._dispatch.OPS,
with the signatures the backend protocol there takes as the contract, one submodule
per op family. Float math accumulates in fp32 (fp64 for fp64 input).
"""
from tridiff.reference.attention import attention, visibility
from tridiff.reference.kv_cache import (
    kv_append_, kv_commit_, kv_compact_, kv_rollback_, kv_write_, paged_release_, paged_reserve_,
    quadratic_verify_slots,
)
from tridiff.reference.accept import accept_linear, accept_quadratic, accept_rejection
from tridiff.reference.decoder import decoder_layers_
from tridiff.reference.quant import mixed_linear, quant_linear, quant_linear_a8
from tridiff.reference.sample import diffusion_confidence, diffusion_unmask, num_transfer_schedule, sample
