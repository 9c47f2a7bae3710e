"""Competitor attention calls on the same inputs as tridiff, built once outside timing.

Every builder returns a zero-argument callable, or raises Unsupported(reason). All
of them read keys/values from one buffer [B, P + Tq, Hkv, D] whose last Tq slots
hold the new tokens' KV (what an engine that writes KV before attention sees), so
they move the same bytes as tridiff (which reads cache[:, :P] plus the new k, v).
"""
from __future__ import annotations

import time

import torch

from tridiff.modes import Mode
from bench.attention_shapes import Case, dense_mask


class Unsupported(Exception):
    pass


def _uniform(case: Case):
    return len(set(int(m) for m in case.modes)) == 1 and len(set(case.q_lens)) == 1 and case.q_lens[0] == case.Tq


def _mask_bytes_ok(case: Case, P: int, limit: float = 1.5e9) -> None:
    n = len(case.modes) * case.Tq * (P + case.Tq)
    if n > limit:
        raise Unsupported(f"dense mask would need {n / 1e9:.1f} GB")


# ------------------------------------------------------------------ torch SDPA

def sdpa_backends() -> dict:
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def build_sdpa(which: str, case: Case, P: int, q, kbuf, vbuf, scale: float, max_math_bytes: float = 4e9):
    """torch.nn.functional.scaled_dot_product_attention restricted to one SDPA backend."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    backend = sdpa_backends()[which]
    B, Tq, Hq, D = q.shape
    Tk = kbuf.shape[1]
    if which == "math" and B * Hq * Tq * Tk * 4 * 3 > max_math_bytes:
        raise Unsupported("math SDPA materialises the fp32 scores: too large")
    qs, ks, vs = q.transpose(1, 2), kbuf.transpose(1, 2), vbuf.transpose(1, 2)
    mode = int(case.modes[0])

    def make(mask):
        def call():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
        return call

    if _uniform(case) and mode == Mode.BIDIR_BLOCK:
        call = make(None)
    else:
        call = None
        if _uniform(case) and mode == Mode.CAUSAL:
            from torch.nn.attention.bias import causal_lower_right

            # bottom-right aligned causal without a dense mask; some backends reject it
            # with GQA, and then take the dense mask below like every other mode.
            call = make(causal_lower_right(Tq, Tk))
            try:
                _probe(call)
            except Unsupported:
                call = None
        if call is None:
            _mask_bytes_ok(case, P)
            call = make(dense_mask(case, P, q.device)[:, None])  # [B, 1, Tq, Tk]
    _probe(call)
    return call


def _probe(call):
    """Run once so an unsupported combination raises here, not inside timing."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot serve these inputs"
        raise Unsupported(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None


# ------------------------------------------------------------------ FlexAttention

_flex_compiled = {}


def build_flex(case: Case, P: int, q, kbuf, vbuf, scale: float):
    """FlexAttention with tridiff's mask written as a mask_mod over per-row tensors;
    the block mask is built here, once, outside the timed region."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = q.device
    B, Tq, Hq, D = q.shape
    Tk = kbuf.shape[1]
    modes = torch.tensor([int(m) for m in case.modes], dtype=torch.int32, device=dev)
    args = torch.tensor(case.mode_args, dtype=torch.int32, device=dev)
    lens = torch.tensor(case.q_lens, dtype=torch.int32, device=dev)
    Pt = torch.full((B,), P, dtype=torch.int32, device=dev)

    def mask_mod(b, h, qi, kj):
        p, m, a, n = Pt[b], modes[b], args[b], lens[b]
        j = kj - p
        sub = torch.clamp(a + 1, min=1)
        qa, qb, ka, kb = qi // sub, qi % sub, j // sub, j % sub
        quad = ((kb == 0) & (ka <= qa)) | ((qb != 0) & (ka == qa))
        new = torch.where(m == int(Mode.CAUSAL), j <= qi,
                          torch.where(m == int(Mode.BIDIR_BLOCK), j < n,
                                      torch.where(m == int(Mode.QUADRATIC), quad, (qi >= n - a) | (j <= qi))))
        return (kj < p) | ((j >= 0) & (j < n) & new)

    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, B, None, Tq, Tk, device=dev)
    if "fn" not in _flex_compiled:
        _flex_compiled["fn"] = torch.compile(flex_attention, dynamic=False)
    flex = _flex_compiled["fn"]
    qs, ks, vs = q.transpose(1, 2), kbuf.transpose(1, 2), vbuf.transpose(1, 2)

    def call():
        return flex(qs, ks, vs, block_mask=block_mask, scale=scale, enable_gqa=True)

    _probe(call)
    call.compile_s = time.perf_counter() - t0
    return call


# ------------------------------------------------------------------ FlashAttention / FlashInfer

def build_flash_attn(case: Case, P: int, q, kbuf, vbuf, scale: float):
    """flash_attn_with_kvcache over the buffer; causal is bottom-right aligned there."""
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception as exc:  # noqa: BLE001
        raise Unsupported(f"flash_attn not importable ({type(exc).__name__})") from None
    if not _uniform(case) or int(case.modes[0]) not in (Mode.CAUSAL, Mode.BIDIR_BLOCK):
        raise Unsupported("flash_attn_with_kvcache has only causal / full masks (no per-row modes)")
    B = q.shape[0]
    seqlens = torch.full((B,), kbuf.shape[1], dtype=torch.int32, device=q.device)
    causal = int(case.modes[0]) == Mode.CAUSAL

    def call():
        return flash_attn_with_kvcache(q, kbuf, vbuf, cache_seqlens=seqlens, softmax_scale=scale, causal=causal)

    _probe(call)
    return call


def build_flashinfer(case: Case, P: int, q, kbuf, vbuf, scale: float):
    """FlashInfer batch prefill over ragged KV (the buffer flattened), causal flag or a
    packed custom mask for the modes it cannot express."""
    try:
        import flashinfer
    except Exception as exc:  # noqa: BLE001
        raise Unsupported(f"flashinfer not importable ({type(exc).__name__})") from None
    dev = q.device
    B, Tq, Hq, D = q.shape
    Tk, Hkv = kbuf.shape[1], kbuf.shape[2]
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
    qo_indptr = torch.arange(B + 1, dtype=torch.int32, device=dev) * Tq
    kv_indptr = torch.arange(B + 1, dtype=torch.int32, device=dev) * Tk
    uniform = _uniform(case) and int(case.modes[0]) in (Mode.CAUSAL, Mode.BIDIR_BLOCK)
    kw = dict(causal=uniform and int(case.modes[0]) == Mode.CAUSAL, sm_scale=scale, q_data_type=q.dtype)
    if not uniform:
        _mask_bytes_ok(case, P)
        kw["custom_mask"] = dense_mask(case, P, dev).reshape(-1)
    try:
        wrapper.plan(qo_indptr, kv_indptr, Hq, Hkv, D, **kw)
    except Exception as exc:  # noqa: BLE001
        raise Unsupported(f"flashinfer plan failed: {str(exc).splitlines()[0][:160]}") from None
    qf, kf, vf = q.reshape(B * Tq, Hq, D), kbuf.reshape(B * Tk, Hkv, D), vbuf.reshape(B * Tk, Hkv, D)

    def call():
        return wrapper.run(qf, kf, vf)

    _probe(call)
    return call
