"""Argument packing shared by the "cpp" and "cuda" backends.

Both compiled modules (tridiff._cpp, tridiff._cuda) expose the same functions
taking raw data pointers, byte strides and a stream (csrc/bind.h). This class turns
the reference's positional signatures into those calls, and answers supports_<op>
with a reason when a layout is not one the kernels take. Outputs are allocated
here with torch, so allocation follows torch's caching allocator and CUDA graphs.
"""
from __future__ import annotations

import functools
import math

import torch

from tridiff import _ext
from tridiff.reference import kv_cache as _ref_kv

GREEDY, SAMPLE, DIFFUSION = 0, 1, 2  # td::ScoreKind
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _p(t) -> int:
    return 0 if t is None else t.data_ptr()


class Native:
    def __init__(self, ext: str, device_type: str):
        self.ext = ext
        self.device_type = device_type

    # ---- plumbing -----------------------------------------------------------------
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

    @staticmethod
    def _index_reason(**tensors):
        for name, t in tensors.items():
            if t is not None and not t.is_contiguous():
                return f"{name} must be contiguous"
        return None

    @staticmethod
    def _slab_reason(name, t):
        """A token's [Hkv, D] slab must be contiguous (any batch/token strides)."""
        if t.stride(-1) != 1 or (t.shape[-2] > 1 and t.stride(-2) != t.shape[-1]):
            return f"{name} needs contiguous [Hkv, D] slabs per token, got strides {tuple(t.stride())}"
        return None

    @staticmethod
    def _layout(cache, block_table):
        es = cache.element_size()
        if block_table is None:
            return 0, cache.stride(-4) * es, cache.stride(-3) * es, cache.shape[-3], 0
        return block_table.data_ptr(), cache.stride(0) * es, cache.stride(1) * es, cache.shape[1], block_table.shape[1]

    # ---- KV cache -----------------------------------------------------------------
    def supports_kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        return (self.device_reason(k_cache, v_cache, k, v, cache_lens, q_lens, block_table)
                or self._index_reason(cache_lens=cache_lens, q_lens=q_lens, block_table=block_table)
                or self._slab_reason("k", k) or self._slab_reason("v", v) or self._slab_reason("k_cache", k_cache)
                or (None if k_cache.stride() == v_cache.stride() else "k_cache and v_cache need equal strides"))

    def kv_write_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=False):
        B, T, H, D = k.shape
        es = k.element_size()
        bt, outer, token, tokens, max_pages = self._layout(k_cache, block_table)
        self.lib().kv_write(commit, k_cache.data_ptr(), v_cache.data_ptr(), k.data_ptr(), v.data_ptr(),
                            k.stride(0) * es, k.stride(1) * es, v.stride(0) * es, v.stride(1) * es,
                            cache_lens.data_ptr(), q_lens.data_ptr(), bt, outer, token, tokens, max_pages,
                            B, T, H * D * es, self.stream(k))

    def kv_append_(self, k_cache, v_cache, k, v, cache_lens, q_lens, block_table):
        self.kv_write_(k_cache, v_cache, k, v, cache_lens, q_lens, block_table, commit=True)

    def supports_kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        return (self.device_reason(k_cache, v_cache, cache_lens, src_index, block_table)
                or self._index_reason(cache_lens=cache_lens, src_index=src_index, block_table=block_table)
                or self._slab_reason("k_cache", k_cache)
                or self._cuda_limit(src_index.shape[1], 3072, "src_index columns n")
                or (None if k_cache.stride() == v_cache.stride() else "k_cache and v_cache need equal strides"))

    def _cuda_limit(self, value, limit, what):
        """The CUDA kernels stage per-row data in 48 KiB of shared memory."""
        if self.device_type == "cuda" and value > limit:
            return f"{what} ({value}) exceeds the CUDA kernel's shared-memory staging limit ({limit})"
        return None

    def kv_compact_(self, k_cache, v_cache, cache_lens, src_index, block_table):
        es = k_cache.element_size()
        B, n = src_index.shape
        layers = k_cache.shape[0] if k_cache.dim() == 5 else 1
        layer_stride = k_cache.stride(0) * es if k_cache.dim() == 5 else 0
        bt, outer, token, tokens, max_pages = self._layout(k_cache, block_table)
        row_bytes = k_cache.shape[-2] * k_cache.shape[-1] * es
        self.lib().kv_compact(k_cache.data_ptr(), v_cache.data_ptr(), layers, layer_stride, cache_lens.data_ptr(),
                              src_index.data_ptr(), B, n, bt, outer, token, tokens, max_pages, row_bytes,
                              self.stream(k_cache))

    # Metadata-only ops: one tiny torch op each, nothing to gain from a kernel.
    def kv_commit_(self, cache_lens, n):
        _ref_kv.kv_commit_(cache_lens, n)

    def kv_rollback_(self, cache_lens, new_lens):
        _ref_kv.kv_rollback_(cache_lens, new_lens)

    def supports_kv_commit_(self, cache_lens, n):
        return self.device_reason(cache_lens, n)

    def supports_kv_rollback_(self, cache_lens, new_lens):
        return self.device_reason(cache_lens, new_lens)

    def _paged_reason(self, block_table, free_pages, free_count, lens):
        return (self.device_reason(block_table, free_pages, free_count, lens)
                or self._index_reason(block_table=block_table, free_pages=free_pages, free_count=free_count,
                                      lens=lens))

    def supports_paged_reserve_(self, block_table, free_pages, free_count, target_lens, page_size):
        return self._paged_reason(block_table, free_pages, free_count, target_lens)

    def supports_paged_release_(self, block_table, free_pages, free_count, keep_lens, page_size):
        return self._paged_reason(block_table, free_pages, free_count, keep_lens)

    def _paged(self, reserve, block_table, free_pages, free_count, lens, page_size):
        B, max_pages = block_table.shape
        self.lib().paged(reserve, block_table.data_ptr(), free_pages.data_ptr(), free_count.data_ptr(),
                         lens.data_ptr(), B, max_pages, free_pages.shape[0], int(page_size), self.stream(block_table))

    def paged_reserve_(self, block_table, free_pages, free_count, target_lens, page_size):
        self._paged(True, block_table, free_pages, free_count, target_lens, page_size)

    def paged_release_(self, block_table, free_pages, free_count, keep_lens, page_size):
        self._paged(False, block_table, free_pages, free_count, keep_lens, page_size)

    # ---- row scans: argmax / Gumbel-max / softmax statistics ---------------------------
    def _logits_reason(self, logits, *others):
        if logits.dtype not in FLOATS:
            return f"logits dtype {logits.dtype} is not a float type"
        return self.device_reason(logits, *others)

    def _scan(self, logits, kind, temperature=0.0, seed=None, offset=None, stats=False, t_base=0,
              stats_scaled=False):
        """Phase 1 over rows [B, R, V]: per (row, chunk) best index (+ softmax statistics)."""
        B, R, V = logits.shape
        if logits.stride(2) != 1:
            logits = logits.contiguous()
        lib = self.lib()
        code = _ext.dtype_code(logits.dtype)
        chunk = lib.scan_chunk(code)
        nchunks = max(1, -(-V // chunk))
        rows = B * R
        dev = logits.device
        part_val = torch.empty(rows * nchunks, dtype=torch.float64, device=dev)
        part_idx = torch.empty(rows * nchunks, dtype=torch.int64, device=dev)
        part_max = torch.empty(rows * nchunks, dtype=torch.float64, device=dev) if stats else None
        part_sum = torch.empty(rows * nchunks, dtype=torch.float64, device=dev) if stats else None
        if seed is not None:
            seed = seed.to(device=dev, dtype=torch.int64).contiguous()
            offset = offset.to(device=dev, dtype=torch.int64).contiguous()
        lib.row_scan(kind, code, logits.data_ptr(), rows, R, t_base, V, logits.stride(0), logits.stride(1),
                     float(temperature), stats_scaled, _p(seed), _p(offset), chunk, nchunks, part_val.data_ptr(),
                     part_idx.data_ptr(), _p(part_max), _p(part_sum), self.stream(logits))
        return logits, nchunks, part_val, part_idx, part_max, part_sum

    def supports_sample(self, logits, temperature, seed, offset):
        return self._logits_reason(logits, seed, offset)

    def sample(self, logits, temperature, seed, offset):
        B, T, V = logits.shape
        kind = GREEDY if temperature == 0 else SAMPLE
        _, nchunks, pv, pi, _, _ = self._scan(logits, kind, temperature, seed if kind else None,
                                              offset if kind else None)
        out = torch.empty(B, T, dtype=torch.int64, device=logits.device)
        self.lib().sample_finish(pv.data_ptr(), pi.data_ptr(), nchunks, B * T, out.data_ptr(), self.stream(logits))
        return out

    def supports_diffusion_confidence(self, logits, temperature, seed, offset):
        return self._logits_reason(logits, seed, offset)

    def diffusion_confidence(self, logits, temperature, seed, offset):
        B, L, V = logits.shape
        kind = GREEDY if temperature == 0 else DIFFUSION
        logits, nchunks, pv, pi, pm, ps = self._scan(
            logits, kind, temperature, seed if kind else None, offset if kind else None, stats=True)
        x0 = torch.empty(B, L, dtype=torch.int64, device=logits.device)
        conf = torch.empty(B, L, dtype=logits.dtype, device=logits.device)
        self.lib().confidence_finish(_ext.dtype_code(logits.dtype), logits.data_ptr(), B * L, L, V,
                                     logits.stride(0), logits.stride(1),
                                     pv.data_ptr(), pi.data_ptr(), pm.data_ptr(), ps.data_ptr(), nchunks,
                                     x0.data_ptr(), conf.data_ptr(), self.stream(logits))
        return x0, conf

    def supports_diffusion_unmask(self, block, x0, conf, mask_id, threshold, num_transfer):
        if conf.dtype not in FLOATS:
            return f"conf dtype {conf.dtype} is not a float type"
        return self.device_reason(block, x0, conf, num_transfer)

    def diffusion_unmask(self, block, x0, conf, mask_id, threshold, num_transfer):
        B, L = block.shape
        dev = block.device
        block_c = block.to(torch.int64).contiguous()
        x0_c = x0.to(torch.int64).contiguous()
        conf_c = conf.contiguous()
        use_threshold = threshold is not None
        # The reference compares conf >= threshold in conf's dtype (a Python scalar takes the
        # tensor's dtype in torch's promotion rules): round the threshold the same way.
        thr = float(torch.tensor(float(threshold), dtype=conf.dtype)) if use_threshold else 0.0
        nt = None if use_threshold else num_transfer.to(device=dev, dtype=torch.int32).contiguous()
        new_block = torch.empty(B, L, dtype=torch.int64, device=dev)
        transferred = torch.empty(B, L, dtype=torch.bool, device=dev)
        self.lib().unmask(_ext.dtype_code(conf.dtype), block_c.data_ptr(), x0_c.data_ptr(), conf_c.data_ptr(), B, L,
                          int(mask_id), use_threshold, thr, _p(nt), new_block.data_ptr(), transferred.data_ptr(),
                          self.stream(block))
        return new_block, transferred

    # ---- acceptance ------------------------------------------------------------------
    def _accept(self, logits, draft, cache_lens, eos_id, quadratic, kind, temperature, seed, offset):
        B, R, V = logits.shape
        n = draft.shape[1]
        dev = logits.device
        _, nchunks, pv, pi, _, _ = self._scan(logits, kind, temperature, seed, offset)
        draft_c = draft.to(torch.int64).contiguous()
        lens_c = cache_lens.to(torch.int32).contiguous()
        width = n if quadratic else n + 1
        n_accepted = torch.empty(B, dtype=torch.int32, device=dev)
        tokens = torch.empty(B, width, dtype=torch.int64, device=dev)
        n_emitted = torch.empty(B, dtype=torch.int32, device=dev)
        nxt = torch.empty((B, n) if quadratic else (B,), dtype=torch.int64, device=dev)
        new_lens = torch.empty(B, dtype=torch.int32, device=dev)
        hit_eos = torch.empty(B, dtype=torch.bool, device=dev)
        self.lib().accept_finish(quadratic, pv.data_ptr(), pi.data_ptr(), nchunks, B, R, n, draft_c.data_ptr(),
                                 lens_c.data_ptr(), int(eos_id), n_accepted.data_ptr(), tokens.data_ptr(),
                                 n_emitted.data_ptr(), nxt.data_ptr(), new_lens.data_ptr(), hit_eos.data_ptr(),
                                 self.stream(logits))
        return n_accepted, tokens, n_emitted, nxt, new_lens, hit_eos

    def supports_accept_linear(self, target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
        return self._cuda_limit(target_logits.shape[1], 6144, "verify rows n+1") or self._logits_reason(
            target_logits, draft_tokens, cache_lens, seed, offset)

    def accept_linear(self, target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
        sampled = temperature is not None and temperature > 0
        return self._accept(target_logits, draft_tokens, cache_lens, eos_id, False, SAMPLE if sampled else GREEDY,
                            temperature or 0.0, seed if sampled else None, offset if sampled else None)

    def supports_accept_rejection(self, target_logits, draft_logits, draft_tokens, cache_lens, eos_id,
                                  temperature, seed, offset):
        if draft_logits.dtype not in FLOATS:
            return f"draft_logits dtype {draft_logits.dtype} is not a float type"
        return (self._cuda_limit(draft_tokens.shape[1], 191, "drafts per row n")
                or self._logits_reason(target_logits, draft_logits, draft_tokens, cache_lens, seed, offset))

    def accept_rejection(self, target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature, seed,
                         offset):
        if temperature == 0.0:  # the greedy rule, exactly
            return self.accept_linear(target_logits, draft_tokens, cache_lens, eos_id, 0.0, None, None)
        B, n1, V = target_logits.shape
        n = n1 - 1
        dev = target_logits.device
        if draft_logits.dtype != target_logits.dtype:
            # Every probability is computed from float32(logits): casting both to float32 is exact
            # (float64 inputs are rounded to float32 by the rule itself).
            target_logits, draft_logits = target_logits.float(), draft_logits.float()
        if target_logits.stride(2) != 1:
            target_logits = target_logits.contiguous()
        if draft_logits.stride(2) != 1:
            draft_logits = draft_logits.contiguous()
        seed = seed.to(device=dev, dtype=torch.int64).contiguous()
        offset = offset.to(device=dev, dtype=torch.int64).contiguous()
        # Softmax statistics of the scaled target rows 0..n-1 and draft rows; the bonus draw at row n.
        _, nchunks, _, _, t_max, t_sum = self._scan(target_logits[:, :n], GREEDY, temperature, stats=True,
                                                    stats_scaled=True)
        _, _, _, _, d_max, d_sum = self._scan(draft_logits, GREEDY, temperature, stats=True, stats_scaled=True)
        _, nb, b_val, b_idx, _, _ = self._scan(target_logits[:, n:], SAMPLE, temperature, seed, offset, t_base=n)
        code = _ext.dtype_code(target_logits.dtype)
        chunk = self.lib().scan_chunk(code)
        tokens_c = draft_tokens.to(torch.int64).contiguous()
        lens_c = cache_lens.to(torch.int32).contiguous()
        c = torch.empty(B, dtype=torch.int32, device=dev)
        ci_stats = torch.empty(B, 4, dtype=torch.float32, device=dev)
        r_val = torch.empty(B * nchunks, dtype=torch.float64, device=dev)
        p_val = torch.empty_like(r_val)
        r_idx = torch.empty(B * nchunks, dtype=torch.int64, device=dev)
        p_idx = torch.empty_like(r_idx)
        r_any = torch.empty(B * nchunks, dtype=torch.uint8, device=dev)
        n_accepted = torch.empty(B, dtype=torch.int32, device=dev)
        tokens = torch.empty(B, n + 1, dtype=torch.int64, device=dev)
        n_emitted = torch.empty(B, dtype=torch.int32, device=dev)
        nxt = torch.empty(B, dtype=torch.int64, device=dev)
        new_lens = torch.empty(B, dtype=torch.int32, device=dev)
        hit_eos = torch.empty(B, dtype=torch.bool, device=dev)
        self.lib().rejection(code, chunk, target_logits.data_ptr(), draft_logits.data_ptr(), target_logits.stride(0),
                             target_logits.stride(1), draft_logits.stride(0), draft_logits.stride(1), B, n, V,
                             float(temperature), tokens_c.data_ptr(), seed.data_ptr(), offset.data_ptr(),
                             _p(t_max), _p(t_sum), _p(d_max), _p(d_sum), nchunks, c.data_ptr(), ci_stats.data_ptr(),
                             r_val.data_ptr(), r_idx.data_ptr(), p_val.data_ptr(), p_idx.data_ptr(), r_any.data_ptr(),
                             b_val.data_ptr(), b_idx.data_ptr(), nb, lens_c.data_ptr(), int(eos_id),
                             n_accepted.data_ptr(), tokens.data_ptr(), n_emitted.data_ptr(), nxt.data_ptr(),
                             new_lens.data_ptr(), hit_eos.data_ptr(), self.stream(target_logits))
        return n_accepted, tokens, n_emitted, nxt, new_lens, hit_eos

    def supports_accept_quadratic(self, logits, draft, cache_lens, eos_id):
        return self._cuda_limit(logits.shape[1], 6144, "verify rows L*(L+1)") or self._logits_reason(logits, draft,
                                                                                                   cache_lens)

    def accept_quadratic(self, logits, draft, cache_lens, eos_id):
        return self._accept(logits, draft, cache_lens, eos_id, True, GREEDY, 0.0, None, None)


    # ---- attention (csrc/attention) -----------------------------------------------------
    def supports_attention(self, q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                           block_table, softmax_scale, write_kv):
        reason = self.device_reason(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table)
        if reason:
            return reason
        D = q.shape[-1]
        if self.device_type == "cuda":
            if q.dtype not in (torch.float16, torch.bfloat16):
                return f"the CUDA attention kernel takes float16/bfloat16 (tensor-core MMA), got {q.dtype}"
            if D not in ATTN_CUDA_HEAD_DIMS:
                return f"head_dim {D} is not supported by the CUDA attention kernel (one of {ATTN_CUDA_HEAD_DIMS})"
        else:
            if q.dtype not in FLOATS:
                return f"dtype {q.dtype} is not a float type"
            if D % 16 != 0 or not 16 <= D <= 256:
                return f"head_dim {D} is not supported by the C++ attention (a multiple of 16 in [16, 256]: MMA k-steps)"
        group = q.shape[2] // max(k.shape[2], 1)
        if group > ATTN_BLOCK_M:
            return f"GQA group Hq/Hkv={group} exceeds the {ATTN_BLOCK_M} rows of an attention tile"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1 and D > 1:
                return f"{name} must be contiguous in its last (head_dim) dimension"
        reason = (self._slab_reason("k_cache", k_cache)
                  or (None if k_cache.stride() == v_cache.stride() else "k_cache and v_cache need equal strides"))
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
        lib = self.lib()
        if out is None:
            out = torch.empty((B, Tq, Hq, D), dtype=q.dtype, device=q.device)
        if out.numel() == 0:
            return out
        cache_lens, mode_args, q_lens = (t.to(torch.int32).contiguous() for t in (cache_lens, mode_args, q_lens))
        modes = modes.to(torch.int8).contiguous()
        if block_table is not None:
            block_table = block_table.to(torch.int32).contiguous()
        bt, outer, token, tokens, max_pages = self._layout(k_cache, block_table)
        block_q = ATTN_BLOCK_M // (Hq // Hkv)
        if num_splits is None:
            capacity = max_pages * tokens if block_table is not None else k_cache.shape[1]
            num_splits = lib.attention_num_splits(-(-Tq // block_q) * B * Hkv, capacity,
                                                  self._parallelism(q.device))
        ws_o = ws_lse = None
        if num_splits > 1:
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            ws_o = torch.empty((num_splits, B * Tq * Hq, D), dtype=acc, device=q.device)
            ws_lse = torch.empty((num_splits, B * Tq * Hq), dtype=acc, device=q.device)
            if workspace_fill is not None:
                ws_o.fill_(workspace_fill)
                ws_lse.fill_(workspace_fill)
        strides = tuple(t.stride(i) for t in (q, k, v, out) for i in range(3))
        lib.attention(_ext.dtype_code(q.dtype), q.data_ptr(), k.data_ptr(), v.data_ptr(), k_cache.data_ptr(),
                      v_cache.data_ptr(), out.data_ptr(), cache_lens.data_ptr(), modes.data_ptr(),
                      mode_args.data_ptr(), q_lens.data_ptr(), bt, outer, token, tokens, max_pages, strides,
                      B, Tq, Hq, Hkv, D, float(softmax_scale) * math.log2(math.e), bool(write_kv), int(num_splits),
                      _p(ws_o), _p(ws_lse), self.stream(q))
        return out


ATTN_BLOCK_M = 64                # query rows per tile (csrc/attention/attn_tiling.cuh kAttnBlockM)
ATTN_CUDA_HEAD_DIMS = (64, 128)  # the CUDA kernel's template instances


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


OPS = ("kv_write_", "kv_append_", "kv_commit_", "kv_rollback_", "kv_compact_", "paged_reserve_", "paged_release_",
       "sample", "diffusion_confidence", "diffusion_unmask", "accept_linear", "accept_rejection", "accept_quadratic",
       "attention")


def export(backend: Native, namespace: dict) -> None:
    """Define the module-level functions the dispatcher looks up (op, supports_op, unavailable)."""
    namespace["unavailable"] = backend.unavailable
    namespace["attention_launch"] = backend.attention_launch  # test knobs (forced splits, NaN workspace)
    for op in OPS:
        namespace[op] = getattr(backend, op)
        sup = getattr(backend, f"supports_{op}", None)
        if sup is not None:
            namespace[f"supports_{op}"] = sup
