"""tridiff's public op API. Each op validates its inputs, picks a backend
(backend="auto"|"torch"|"triton"|"cuda"|"cpp") and runs through torch.library, so
torch.compile and CUDA graphs can take it. Layouts are written in each module.
"""
from tridiff._checks import TridiffInputError
from tridiff._dispatch import BackendUnavailable, load_all
from tridiff.modes import Mode
from tridiff.ops.attention import attention
from tridiff.ops.kv_cache import (
    kv_append_, kv_commit_, kv_compact_, kv_rollback_, kv_write_, paged_release_, paged_reserve_,
    quadratic_verify_slots,
)
from tridiff.ops.accept import (
    AcceptResult, QuadraticAcceptResult, accept_linear, accept_quadratic, accept_rejection,
)
from tridiff.ops.decoder import DecoderPlan, DecoderWeights, decoder_layers_, decoder_plan
from tridiff.ops.quant import mixed_linear, quant_linear, quant_linear_a8
from tridiff.ops.sample import diffusion_confidence, diffusion_unmask, num_transfer_schedule, sample

__all__ = [
    "Mode", "TridiffInputError", "BackendUnavailable", "attention", "kv_write_", "kv_append_",
    "kv_commit_", "kv_rollback_", "kv_compact_", "quadratic_verify_slots", "paged_reserve_",
    "paged_release_",
    "sample", "diffusion_confidence", "diffusion_unmask", "num_transfer_schedule",
    "accept_linear", "accept_rejection", "accept_quadratic", "AcceptResult", "QuadraticAcceptResult",
    "decoder_layers_", "decoder_plan", "DecoderPlan", "DecoderWeights", "quant_linear", "quant_linear_a8", "mixed_linear",
]

load_all()
