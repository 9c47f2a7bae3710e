"""Token selection of the native backends: sampling, diffusion confidence/unmask and the
acceptance rules (csrc/accept)."""
from __future__ import annotations

import torch

from tridiff import _ext
from tridiff.native.base import CUDA_SMEM_BYTES, FLOATS, NativeBase, ptr

GREEDY, SAMPLE, DIFFUSION = 0, 1, 2  # td::ScoreKind
# accept_finish stages one int64 per verify row (csrc/accept/accept_launch.cu accept_finish:
# R * sizeof(int64_t) > 48 * 1024 is kTooLarge).
ACCEPT_MAX_ROWS = CUDA_SMEM_BYTES // 8
# rejection stages 32 int64 per position (csrc/accept/accept_launch.cu rejection:
# (n + 1) * 32 * sizeof(int64_t) > 48 * 1024 is kTooLarge).
REJECTION_MAX_N = CUDA_SMEM_BYTES // (32 * 8) - 1


class SelectOps(NativeBase):
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
                     float(temperature), stats_scaled, ptr(seed), ptr(offset), chunk, nchunks, part_val.data_ptr(),
                     part_idx.data_ptr(), ptr(part_max), ptr(part_sum), self.stream(logits))
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
                          int(mask_id), use_threshold, thr, ptr(nt), new_block.data_ptr(), transferred.data_ptr(),
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
        return self.cuda_limit(target_logits.shape[1], ACCEPT_MAX_ROWS, "verify rows n+1") or self._logits_reason(
            target_logits, draft_tokens, cache_lens, seed, offset)

    def accept_linear(self, target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
        sampled = temperature is not None and temperature > 0
        return self._accept(target_logits, draft_tokens, cache_lens, eos_id, False, SAMPLE if sampled else GREEDY,
                            temperature or 0.0, seed if sampled else None, offset if sampled else None)

    def supports_accept_rejection(self, target_logits, draft_logits, draft_tokens, cache_lens, eos_id,
                                  temperature, seed, offset):
        if draft_logits.dtype not in FLOATS:
            return f"draft_logits dtype {draft_logits.dtype} is not a float type"
        return (self.cuda_limit(draft_tokens.shape[1], REJECTION_MAX_N, "drafts per row n")
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
                             ptr(t_max), ptr(t_sum), ptr(d_max), ptr(d_sum), nchunks, c.data_ptr(), ci_stats.data_ptr(),
                             r_val.data_ptr(), r_idx.data_ptr(), p_val.data_ptr(), p_idx.data_ptr(), r_any.data_ptr(),
                             b_val.data_ptr(), b_idx.data_ptr(), nb, lens_c.data_ptr(), int(eos_id),
                             n_accepted.data_ptr(), tokens.data_ptr(), n_emitted.data_ptr(), nxt.data_ptr(),
                             new_lens.data_ptr(), hit_eos.data_ptr(), self.stream(target_logits))
        return n_accepted, tokens, n_emitted, nxt, new_lens, hit_eos

    def supports_accept_quadratic(self, logits, draft, cache_lens, eos_id):
        return (self.cuda_limit(logits.shape[1], ACCEPT_MAX_ROWS, "verify rows L*(L+1)")
                or self._logits_reason(logits, draft, cache_lens))

    def accept_quadratic(self, logits, draft, cache_lens, eos_id):
        return self._accept(logits, draft, cache_lens, eos_id, True, GREEDY, 0.0, None, None)
