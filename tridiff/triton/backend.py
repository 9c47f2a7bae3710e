"""The ops of the "triton" backend, as tridiff._dispatch's backend protocol asks.

The kv_cache, sample and accept launchers import triton on first launch only. The
attention launcher imports triton at module level, so without triton it is left out
and unavailable() says why.
"""
from tridiff.triton._common import unavailable
from tridiff.triton.accept import (accept_linear, accept_quadratic, accept_rejection, supports_accept_linear,
                                   supports_accept_quadratic, supports_accept_rejection)
from tridiff.triton.kv_cache import (kv_append_, kv_commit_, kv_compact_, kv_rollback_, kv_write_, paged_release_,
                                     paged_reserve_, supports_kv_commit_, supports_kv_compact_, supports_kv_rollback_,
                                     supports_kv_write_, supports_paged_reserve_)
from tridiff.triton.quant import quant_linear, supports_quant_linear
from tridiff.triton.sample import (diffusion_confidence, diffusion_unmask, sample, supports_diffusion_confidence,
                                   supports_diffusion_unmask, supports_sample)

try:
    from tridiff.triton.attention import attention, supports_attention
except ImportError:
    if unavailable() is None:  # triton is installed: a broken launcher is a bug, not a missing extra
        raise
