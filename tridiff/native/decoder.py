"""decoder_layers_ of the "cpp" backend (csrc/cpu/decoder_cpu.cpp): the whole layer stack
in one call. CPU only; the attention inside is the C++ attention's tiling, so its
head_dim and GQA rules apply."""
from __future__ import annotations

import math

import torch

from tridiff import _ext
from tridiff.layer_math import rms_norm
from tridiff.native.attention import AttentionOps
from tridiff.native.base import ptr
from tridiff.native.quant import PROJ_BF16, PROJ_FULL, PROJ_INT4, PROJ_INT4_A8, int4_reason
from tridiff.reference.decoder import PROJECTIONS, WEIGHTS_PER_LAYER, is_packed

DECODER_DTYPES = (torch.float32, torch.float64)
NO_META = [PROJ_FULL, 0, 0, 0]


def _projection_meta(x_dtype, weights):
    """(reason or None, the data pointers, the 16 meta integers per layer of csrc/cpu/
    module.cpp decoder_layers) of the narrow and packed projections."""
    pointers, meta = [], []
    for i, w in enumerate(weights):
        if i % WEIGHTS_PER_LAYER not in PROJECTIONS:
            continue
        where = f"weights[{i}]"
        if is_packed(w):
            K = w.shape[1]
            a8 = getattr(w, "activations", "float") == "int8"
            reason = int4_reason(x_dtype, w.qweight, w.scales, w.zeros, w.bits, w.group_size, K, a8=a8)
            if reason:
                return f"{where}: {reason}", None, None
            if not (w.qweight.is_contiguous() if a8 else w.qweight.t().is_contiguous()):
                return f"{where}: the packed codes are not in the CPU layout (tridiff.quant.packed.cpu_layout_)", \
                    None, None
            pointers.append(w.qweight.data_ptr())
            meta += [PROJ_INT4_A8 if a8 else PROJ_INT4, w.scales.data_ptr(), w.zeros.data_ptr(), int(w.group_size)]
        elif w.dtype == x_dtype:
            pointers.append(w.data_ptr())
            meta += NO_META
        elif w.dtype == torch.bfloat16 and x_dtype == torch.float32:
            pointers.append(w.data_ptr())
            meta += [PROJ_BF16, 0, 0, 0]
        else:
            return f"{where}: the C++ decoder layers take {w.dtype} projections only with float32 activations " \
                   "and bfloat16 weights", None, None
    return None, pointers, meta


class DecoderOps(AttentionOps):
    def supports_decoder_layers_(self, x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                                 block_table, cos, sin, q_scale, eps, lora_scale, softmax_scale, write_kv,
                                 final_norm):
        if self.device_type != "cpu":
            return "decoder_layers_ is a CPU kernel here (csrc/cpu/decoder_cpu.cpp)"
        reason = self.device_reason(x, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table, cos,
                                    sin, q_scale, final_norm)   # the weights are on x's device (ops.DecoderWeights)
        if reason:
            return reason
        if x.dtype not in DECODER_DTYPES:
            return f"the C++ decoder layers take float32/float64, got {x.dtype}"
        Hkv, D = k_cache.shape[-2:]
        reason = self.tiling_reason(D, weights[2].shape[1] // D // Hkv if weights else 1)
        if reason:
            return reason
        for name, t in (("x", x), ("cos", cos), ("sin", sin), ("q_scale", q_scale), ("final_norm", final_norm)):
            if t is not None and not t.is_contiguous():
                return f"{name} must be contiguous"
        if not getattr(weights, "contiguous", False):   # ops.DecoderWeights knows; a plain list is scanned
            bad = [i for i, w in enumerate(weights) if w is not None and not is_packed(w) and not w.is_contiguous()]
            if bad:
                return f"weights[{bad[0]}] must be contiguous"
        if getattr(weights, "narrow", False):
            reason = weights.cache(f"cpp meta {x.dtype}", lambda: _projection_meta(x.dtype, weights))[0]
            if reason:
                return reason
        return self.slab_reason("k_cache", k_cache) or self.cache_pair_reason(k_cache, v_cache)

    def decoder_layers_(self, x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                        cos, sin, q_scale, eps, lora_scale, softmax_scale, write_kv, final_norm):
        L = k_cache.shape[0]
        B, T, H = x.shape
        if x.numel() == 0:
            return
        if L == 0:   # no layer: the final norm alone, as the reference does it
            if final_norm is not None:
                x.copy_(rms_norm(x, final_norm, eps))
            return
        Hkv, D = k_cache.shape[-2:]
        Hq = weights[2].shape[1] // D
        I = weights[4].shape[0] // 2   # packed weights read like tensors here: shape (N, K)
        # each layer's own LoRA rank (PEFT's rank_pattern / layers_to_transform); a rank-0
        # adapter adds nothing and goes as no LoRA (an empty tensor may have no storage)
        proj_meta, proj_ptrs = [], None
        if getattr(weights, "narrow", False):   # supports_decoder_layers_ made these (and found no reason)
            _, proj_ptrs, proj_meta = weights.cache(f"cpp meta {x.dtype}", lambda: _projection_meta(x.dtype, weights))
        pointers, ranks = [], []
        for layer, i in enumerate(range(0, len(weights), WEIGHTS_PER_LAYER)):
            lora_a, lora_b = weights[i + 6], weights[i + 7]
            rank = lora_a.shape[0] if lora_a is not None else 0
            ranks.append(rank)
            if proj_ptrs is None:
                pointers += [ptr(w) for w in weights[i:i + 6]]
            else:
                p = proj_ptrs[4 * layer:4 * layer + 4]
                pointers += [ptr(weights[i]), p[0], p[1], ptr(weights[i + 3]), p[2], p[3]]
            pointers += [lora_a.data_ptr(), lora_b.data_ptr()] if rank else [0, 0]
        qkv = torch.empty((B * T, (Hq + 2 * Hkv) * D), dtype=x.dtype)
        attn = torch.empty((B * T, Hq * D), dtype=x.dtype)
        # layer 0's caches stand for every layer's (same layout, layer_bytes apart)
        m = self.launch_meta(k_cache[0], cache_lens, modes, mode_args, q_lens, block_table, B, T, Hq, Hkv, D,
                             x.dtype, x.device)
        self.lib().decoder_layers(
            _ext.dtype_code(x.dtype), x.data_ptr(), qkv.data_ptr(), attn.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            q_scale.data_ptr(), pointers, ranks, proj_meta, H, I, float(eps), float(lora_scale),
            torch.get_num_threads(),
            k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0) * k_cache.element_size(),
            m.cache_lens.data_ptr(), m.modes.data_ptr(), m.mode_args.data_ptr(), m.q_lens.data_ptr(), *m.layout,
            B, T, Hq, Hkv, D, float(softmax_scale) * math.log2(math.e), bool(write_kv), m.num_splits, ptr(m.ws_o),
            ptr(m.ws_lse), ptr(final_norm))
