"""Triton backend of tridiff.ops.attention: checks, tile choice, split choice, grid.

The kernels are tridiff.kernels.attention (see its docstring for the algorithm).
Arguments arrive normalised by tridiff.ops.attention.normalize_attention_args, so
only what the kernel itself cannot do is checked here (supports_attention).
"""
from __future__ import annotations

import functools
import math

import torch
import triton

from tridiff.kernels.attention import attention_kernel, merge_kernel
from tridiff.triton import device_reason

HEAD_DIMS = (16, 32, 64, 128, 256)  # powers of two: the head dim is one tile
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GROUP = 64            # Hq / Hkv packed into one tile; larger groups would need head tiles
MIN_KEYS_PER_SPLIT = 256  # below this a split's fixed cost (Q load, partial write, merge) dominates
MAX_SPLITS = 128
H100_SMS = 132            # stand-in SM count for interpreter runs (same split logic as on H100)


def supports_attention(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                       block_table, softmax_scale, write_kv):
    reason = device_reason(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table)
    if reason:
        return reason
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        return f"head_dim {D} is not supported by the Triton kernel (one of {HEAD_DIMS})"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not supported by the Triton kernel (float16/bfloat16/float32)"
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        return "bfloat16 arithmetic is wrong under the Triton interpreter; run bfloat16 on CUDA"
    group = q.shape[2] // k.shape[2]
    if group > MAX_GROUP:
        return f"GQA group Hq/Hkv={group} exceeds {MAX_GROUP} query heads per KV head"
    for name, t in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            return f"{name} must be contiguous in its last (head_dim) dimension"
    return None


def attention(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
              softmax_scale: float, write_kv: bool) -> torch.Tensor:
    return launch(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                  softmax_scale, write_kv)


def tile_config(D: int, rows: int, group_p2: int, dtype: torch.dtype, on_gpu: bool) -> dict:
    """One config per shape class (no autotune: it fails under the interpreter and would
    re-benchmark on every new shape). `rows` = query rows per (sequence, KV head).

    Hopper, D=128, bf16: BLOCK_M=128 holds a whole 32-token verify block times a GQA group
    of 4, so each K/V tile is read once for all 128 rows; BLOCK_N=64 with 3 stages keeps
    2 x 64 x 128 x 2 B = 32 KB of K/V per stage (96 KB in flight + 32 KB Q) within the
    228 KB shared memory, 8 warps for the 128 x 128 fp32 accumulator (sm_90a compile:
    128 KB shared, 247 registers, no spills). Few-row shapes (decode) use BLOCK_M=16, the
    tensor-core minimum, with 4 warps (70 KB shared, 195 registers). D=256 halves BLOCK_N,
    caps BLOCK_M at 64 and uses 2 stages (96 KB, 207 registers); fp32 (tests) halves again.
    """
    if not on_gpu:
        # Interpreter: numpy cost grows with tile area, keep tiles small but >1 per row.
        block_m = max(16, min(32, triton.next_power_of_2(rows)), group_p2)
        return dict(BLOCK_M=block_m, BLOCK_N=16, num_warps=4, num_stages=1)
    cap_m = 64 if D == 256 else 128
    block_n = 32 if D == 256 else 64
    stages = 2 if D == 256 else 3
    if dtype == torch.float32:  # 4-byte tiles and FMA-path ieee dots: halve the tiles
        cap_m, block_n, stages = cap_m // 2, block_n // 2, 2
    block_m = max(16, min(cap_m, triton.next_power_of_2(rows)), group_p2)
    # 8 warps from 128 x 64 accumulators up: 4 warps spill there (ptxas, sm_90a).
    warps = 8 if block_m * D >= 128 * 64 and block_m >= 64 else 4
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _gpu_facts(device) -> tuple[bool, int]:
    """(compiled for a GPU, its SM count) for tensors on `device`: the interpreter gets its
    own small tiles and H100_SMS. The sm_90a compile test replaces this with (True, 132)."""
    if device.type != "cuda":
        return False, H100_SMS
    return True, _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def num_splits_for(programs: int, capacity: int, sms: int, block_m: int) -> int:
    """Split the cache only when (tiles x sequences x KV heads) cannot fill the GPU: aim
    for about one wave of programs. A split reads keys x D x 2 (K, V) x 2 B and writes
    an fp32 partial of BLOCK_M x D x 4 B that the merge reads back, so the workspace
    costs 2 x BLOCK_M / keys of the K/V bytes: each split keeps >= 4 x BLOCK_M keys
    (<= 0.5x extra traffic, mostly L2-resident) and >= MIN_KEYS_PER_SPLIT. Sized from
    the capacity (Tmax), not cache_lens, so no host sync; the kernel divides each row's
    real length P among the splits."""
    if programs >= sms:
        return 1
    want = triton.cdiv(sms, programs)
    min_keys = max(MIN_KEYS_PER_SPLIT, 4 * block_m)
    return max(1, min(want, capacity // min_keys, MAX_SPLITS))


def launch(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
           softmax_scale, write_kv, *, num_splits=None, config=None, out=None, workspace_fill=None):
    """The backend function with knobs for tests: force num_splits / a tile config, write
    into a given `out` (e.g. NaN-filled), pre-fill the split workspace (e.g. with NaN)."""
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    group = Hq // Hkv
    group_p2 = triton.next_power_of_2(group)
    if out is None:
        out = torch.empty((B, Tq, Hq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    on_gpu, sms = _gpu_facts(q.device)
    # The kernel indexes the per-row metadata and table rows with unit stride (no-op copies
    # in the normal case; these are read-only).
    cache_lens, modes, mode_args, q_lens = (t.contiguous() for t in (cache_lens, modes, mode_args, q_lens))
    if block_table is not None:
        block_table = block_table.contiguous()
    cfg = dict(config or tile_config(D, Tq * group_p2, group_p2, q.dtype, on_gpu))
    block_q = cfg["BLOCK_M"] // group_p2
    n_qtiles = triton.cdiv(Tq, block_q)

    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 1
    capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
    if num_splits is None:
        num_splits = num_splits_for(n_qtiles * B * Hkv, capacity, sms, cfg["BLOCK_M"])

    ws_rows = B * Tq * Hq
    if num_splits > 1:
        ws_o = torch.empty((num_splits, ws_rows, D), dtype=torch.float32, device=q.device)
        ws_lse = torch.empty((num_splits, ws_rows), dtype=torch.float32, device=q.device)
        if workspace_fill is not None:
            ws_o.fill_(workspace_fill)
            ws_lse.fill_(workspace_fill)
    else:
        ws_o = ws_lse = out  # unused

    bt = block_table if paged else cache_lens  # dummy pointer when contiguous
    grid = (n_qtiles, B * Hkv, num_splits)
    attention_kernel[grid](
        q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, bt, out, ws_o, ws_lse,
        float(softmax_scale) * math.log2(math.e), Tq, Hq, Hkv, ws_rows, n_qtiles,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2), block_table.stride(0) if paged else 0,
        GROUP=group, GROUP_P2=group_p2, BLOCK_Q=block_q, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=D, PAGED=paged, PAGE_SIZE=page_size,
        NUM_SPLITS=num_splits, WRITE_KV=bool(write_kv), DOT_IEEE=q.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if num_splits > 1:
        block_r = 16 if on_gpu else 64  # interpreter: few programs (fixed cost per program)
        merge_kernel[(triton.cdiv(ws_rows, block_r),)](
            ws_o, ws_lse, out, Tq, Hq, ws_rows, out.stride(0), out.stride(1), out.stride(2),
            NUM_SPLITS=num_splits, BLOCK_R=block_r, HEAD_DIM=D, num_warps=4,
        )
    return out
