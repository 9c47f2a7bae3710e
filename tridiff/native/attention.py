"""Attention of the native backends (csrc/attention, csrc/cpu/attention_cpu.cpp).

Arguments go to the kernels as the public op hands them (mode_args included), packed
as csrc/bind.h lists them.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch

from tridiff import _ext
from tridiff.native.base import FLOATS, NativeBase, ptr

ATTN_BLOCK_M = 64                # query rows per tile (csrc/attention/attn_tiling.cuh kAttnBlockM)
ATTN_CUDA_HEAD_DIMS = (64, 128)  # the template instances (csrc/attention/attention_launch.cu launch_attention<T, D>)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class LaunchMeta(NamedTuple):
    """What a launch of the attention tiling takes besides q/k/v/out (AttentionOps.launch_meta)."""
    cache_lens: torch.Tensor   # int32
    modes: torch.Tensor        # int8
    mode_args: torch.Tensor    # int32
    q_lens: torch.Tensor       # int32
    layout: tuple              # (block table pointer, outer and token byte strides, tokens, max_pages)
    num_splits: int
    ws_o: Optional[torch.Tensor]
    ws_lse: Optional[torch.Tensor]


class AttentionOps(NativeBase):
    def tiling_reason(self, D: int, group: int):
        """None, or why the attention tiling of this device type cannot take head_dim D or a
        GQA group of `group` query heads per KV head (dtype aside)."""
        if self.device_type == "cuda":
            if D not in ATTN_CUDA_HEAD_DIMS:
                return f"head_dim {D} is not supported by the CUDA attention kernel (one of {ATTN_CUDA_HEAD_DIMS})"
        elif D % 16 != 0 or not 16 <= D <= 256:
            return f"head_dim {D} is not supported by the C++ attention (a multiple of 16 in [16, 256]: MMA k-steps)"
        if group > ATTN_BLOCK_M:
            return f"GQA group Hq/Hkv={group} exceeds the {ATTN_BLOCK_M} rows of an attention tile"
        return None

    def launch_meta(self, k_cache, cache_lens, modes, mode_args, q_lens, block_table, B: int, Tq: int, Hq: int,
                    Hkv: int, D: int, dtype, device, num_splits=None, workspace_fill=None) -> LaunchMeta:
        """The metadata in the kernels' integer types, the cache layout of `k_cache` (one
        layer: [B, Tmax, Hkv, D] or paged pages), the split count (unless forced) and the
        split workspace (pre-filled with `workspace_fill` when given)."""
        cache_lens, mode_args, q_lens = (t.to(torch.int32).contiguous() for t in (cache_lens, mode_args, q_lens))
        modes = modes.to(torch.int8).contiguous()
        if block_table is not None:
            block_table = block_table.to(torch.int32).contiguous()
        layout = self.layout(k_cache, block_table)
        if num_splits is None:
            _, _, _, tokens, max_pages = layout
            capacity = max_pages * tokens if block_table is not None else k_cache.shape[1]
            block_q = ATTN_BLOCK_M // (Hq // Hkv)
            num_splits = self.lib().attention_num_splits(-(-Tq // block_q) * B * Hkv, capacity,
                                                         self._parallelism(device))
        ws_o = ws_lse = None
        if num_splits > 1:
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            ws_o = torch.empty((num_splits, B * Tq * Hq, D), dtype=acc, device=device)
            ws_lse = torch.empty((num_splits, B * Tq * Hq), dtype=acc, device=device)
            if workspace_fill is not None:
                ws_o.fill_(workspace_fill)
                ws_lse.fill_(workspace_fill)
        return LaunchMeta(cache_lens, modes, mode_args, q_lens, layout, int(num_splits), ws_o, ws_lse)

    def supports_attention(self, q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                           block_table, softmax_scale, write_kv):
        reason = self.device_reason(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table)
        if reason:
            return reason
        D = q.shape[-1]
        if self.device_type == "cuda" and q.dtype not in (torch.float16, torch.bfloat16):
            return f"the CUDA attention kernel takes float16/bfloat16 (tensor-core MMA), got {q.dtype}"
        if self.device_type != "cuda" and q.dtype not in FLOATS:
            return f"dtype {q.dtype} is not a float type"
        reason = self.tiling_reason(D, q.shape[2] // max(k.shape[2], 1))
        if reason:
            return reason
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1 and D > 1:
                return f"{name} must be contiguous in its last (head_dim) dimension"
        reason = self.slab_reason("k_cache", k_cache) or self.cache_pair_reason(k_cache, v_cache)
        if reason:
            return reason
        if self.device_type == "cuda":  # 16-byte vector loads of every row
            for name, t in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
                if t.data_ptr() % 16 or any(st % 8 for st in t.stride()[:-1]):
                    return f"{name} must be 16-byte aligned with strides that are multiples of 8 elements"
        return None

    def attention(self, q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                  softmax_scale, write_kv):
        return self.attention_launch(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                                     block_table, softmax_scale, write_kv)

    def _parallelism(self, device) -> int:
        """Split-KV target: the SM count on the GPU, the thread count on the CPU."""
        if self.device_type == "cuda":
            return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        return torch.get_num_threads()

    def attention_launch(self, q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                         softmax_scale, write_kv, *, num_splits=None, out=None, workspace_fill=None):
        """attention with knobs for tests: force num_splits, write into a given `out` (e.g.
        NaN-filled), pre-fill the split workspace (e.g. with NaN)."""
        B, Tq, Hq, D = q.shape
        Hkv = k.shape[2]
        if out is None:
            out = torch.empty((B, Tq, Hq, D), dtype=q.dtype, device=q.device)
        if out.numel() == 0:
            return out
        m = self.launch_meta(k_cache, cache_lens, modes, mode_args, q_lens, block_table, B, Tq, Hq, Hkv, D, q.dtype,
                             q.device, num_splits, workspace_fill)
        strides = tuple(t.stride(i) for t in (q, k, v, out) for i in range(3))
        self.lib().attention(_ext.dtype_code(q.dtype), q.data_ptr(), k.data_ptr(), v.data_ptr(), k_cache.data_ptr(),
                             v_cache.data_ptr(), out.data_ptr(), m.cache_lens.data_ptr(), m.modes.data_ptr(),
                             m.mode_args.data_ptr(), m.q_lens.data_ptr(), *m.layout, strides, B, Tq, Hq, Hkv, D,
                             float(softmax_scale) * math.log2(math.e), bool(write_kv), m.num_splits, ptr(m.ws_o),
                             ptr(m.ws_lse), self.stream(q))
        return out
