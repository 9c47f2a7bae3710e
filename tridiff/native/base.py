"""Plumbing shared by every op family of the native backends: which compiled module,
which device, the stream, and the layout checks the kernels share."""
from __future__ import annotations

import torch

from tridiff import _ext

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Every CUDA launcher stages per-row data in the default dynamic shared memory, without
# the opt-in for more (csrc/kv/kv_launch.cu kv_compact: smem_limit; csrc/accept/
# accept_launch.cu accept_finish and rejection: `48 * 1024`).
CUDA_SMEM_BYTES = 48 * 1024


def ptr(t) -> int:
    """A tensor's data pointer, 0 (nullptr) for None."""
    return 0 if t is None else t.data_ptr()


class NativeBase:
    def __init__(self, ext: str, device_type: str):
        self.ext = ext
        self.device_type = device_type

    def unavailable(self):
        reason = _ext.reason(self.ext)
        if reason:
            return reason
        if self.device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def lib(self):
        return _ext.load(self.ext)

    def stream(self, t: torch.Tensor) -> int:
        if self.device_type == "cuda":
            return torch.cuda.current_stream(t.device).cuda_stream
        return 0

    def device_reason(self, *tensors):
        for t in tensors:
            if t is not None and t.device.type != self.device_type:
                return f"the {self.ext} backend takes {self.device_type} tensors, got {t.device}"
        return None

    def cuda_limit(self, value, limit, what):
        """The CUDA kernels stage per-row data in CUDA_SMEM_BYTES of shared memory."""
        if self.device_type == "cuda" and value > limit:
            return f"{what} ({value}) exceeds the CUDA kernel's shared-memory staging limit ({limit})"
        return None

    @staticmethod
    def index_reason(**tensors):
        for name, t in tensors.items():
            if t is not None and not t.is_contiguous():
                return f"{name} must be contiguous"
        return None

    @staticmethod
    def slab_reason(name, t):
        """A token's [Hkv, D] slab must be contiguous (any batch/token strides)."""
        if t.stride(-1) != 1 or (t.shape[-2] > 1 and t.stride(-2) != t.shape[-1]):
            return f"{name} needs contiguous [Hkv, D] slabs per token, got strides {tuple(t.stride())}"
        return None

    @staticmethod
    def cache_pair_reason(k_cache, v_cache):
        return None if k_cache.stride() == v_cache.stride() else "k_cache and v_cache need equal strides"

    @staticmethod
    def layout(cache, block_table):
        """(block_table pointer, outer and token byte strides, tokens per page/row, max_pages)."""
        es = cache.element_size()
        if block_table is None:
            return 0, cache.stride(-4) * es, cache.stride(-3) * es, cache.shape[-3], 0
        return block_table.data_ptr(), cache.stride(0) * es, cache.stride(1) * es, cache.shape[1], block_table.shape[1]
