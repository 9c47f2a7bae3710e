"""Public op: a stack of decoder layers over the KV cache in one call.

    decoder_layers_(x, weights, k_cache, v_cache, cache_lens, modes, *, cos, sin, q_scale,
                    eps, mode_args=None, q_lens=None, block_table=None, lora_scale=0.0,
                    softmax_scale=None, write_kv=False, final_norm=None, backend="auto")  -> x
    plan = decoder_plan(<the same arguments>); plan.backend; plan()          -> x

Per layer (docs/spec.md section 1; tridiff.layers is the same math op by op):
x += o_proj(attention(rotary(q, k), v)) (+ LoRA delta), then x += down(silu(gate) * up),
each sublayer on the RMS-normed x. The whole stack is one call, so a backend can run it
without a host round trip per op (csrc/cpu/decoder_cpu.cpp: the "cpp" backend).

Layouts (B rows, T new tokens, H hidden, L layers, GQA heads Hq/Hkv of size D):
  x             [B, T, H]          residual stream in, the stack's output out (in place)
  weights       8 tensors per layer (a list, or a DecoderWeights checked once), in order:
                input_layernorm [H], q/k/v [(Hq + 2 Hkv) D, H], o_proj [H, Hq D],
                post_attention_layernorm [H], gate/up [2 I, H], down [H, I],
                LoRA A [r, Hq D] and B [H, r] (both None: no LoRA on that layer;
                r may differ per layer, as PEFT's rank_pattern allows). The four
                projections may also be narrower than x: a bf16/fp16 tensor (multiplied
                with fp32 accumulation) or a packed GPTQ weight (tridiff.quant.packed
                PackedLinear / FusedPacked: qweight, scales, zeros (true zero points),
                bits, group_size, shape (N, K)); norms and LoRA take x's dtype.
  k/v_cache     [L, B, Tmax, Hkv, D] contiguous, or [L, num_pages, page, Hkv, D] paged
  cos, sin      [B, T, D]          rotary tables (sin with rotate_half's sign folded in,
                                   tridiff.layer_math.rotary_tables)
  q_scale       [B, T]             llama-4 query scale per token
  cache_lens, modes, mode_args, q_lens, block_table, softmax_scale, write_kv: as
  tridiff.ops.attention, for every layer (layer i reads and writes k/v_cache[i]).
  final_norm    [H] or None        RMS-norm weight applied to x after the last layer (the
                                   model's final norm: x then leaves normed, not residual)
Everything is checked before anything is written; x, k_cache and v_cache are mutated.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.reference.decoder import PROJECTIONS, WEIGHTS_PER_LAYER, is_packed

# the module (tridiff.ops.attention), not the function that tridiff.ops exports by that name
_attention = importlib.import_module("tridiff.ops.attention")
_NAMES = ("input_layernorm", "qkv", "o_proj", "post_attention_layernorm", "gate_up", "down", "lora_A", "lora_B")
NARROW_DTYPES = (torch.bfloat16, torch.float16)


@torch.library.custom_op("tridiff::decoder_layers_", mutates_args=("x", "k_cache", "v_cache"))
def _decoder_op(x: torch.Tensor, weights: list[Optional[torch.Tensor]], k_cache: torch.Tensor,
                v_cache: torch.Tensor, cache_lens: torch.Tensor, modes: torch.Tensor, mode_args: torch.Tensor,
                q_lens: torch.Tensor, block_table: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                q_scale: torch.Tensor, eps: float, lora_scale: float, softmax_scale: float, write_kv: bool,
                final_norm: Optional[torch.Tensor], backend: str) -> None:
    _dispatch.implementation("decoder_layers_", backend)(
        x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table, cos, sin, q_scale,
        eps, lora_scale, softmax_scale, write_kv, final_norm)


@_decoder_op.register_fake
def _decoder_fake(x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table, cos, sin,
                  q_scale, eps, lora_scale, softmax_scale, write_kv, final_norm, backend):
    return None


class DecoderWeights(tuple):
    """The flat weight list of decoder_layers_ (8 tensors per layer), checked once when
    made: every layer's shapes against the first layer's, one dtype, one device. A caller
    that runs the same stack every forward (tridiff.model) keeps one of these, so a
    forward only compares a few sizes with x and the caches."""

    def __new__(cls, weights):
        if isinstance(weights, DecoderWeights):
            return weights
        if not isinstance(weights, (list, tuple)) or len(weights) % WEIGHTS_PER_LAYER:
            got = f"{type(weights).__name__} of {len(weights)}" if isinstance(weights, (list, tuple)) \
                else type(weights).__name__
            chk.fail("weights", f"a list of {WEIGHTS_PER_LAYER} tensors per layer", got)
        self = super().__new__(cls, weights)
        self.layers = len(weights) // WEIGHTS_PER_LAYER
        self.hidden = self.q_width = self.kv_width = None
        self.dtype = self.device = None
        self.contiguous = all(w is None or is_packed(w) or (isinstance(w, torch.Tensor) and w.is_contiguous())
                              for w in weights)
        self.packed = any(is_packed(w) for w in weights)   # not a tensor list: no torch.library op call
        self.narrow = any(is_packed(w) or (isinstance(w, torch.Tensor) and w.dtype in NARROW_DTYPES)
                          for i, w in enumerate(weights) if i % WEIGHTS_PER_LAYER in PROJECTIONS)
        if self.layers:
            norm = weights[0]   # input_layernorm [H]: the activations' dtype
            chk.tensor(f"weights[0] ({_NAMES[0]} of layer 0)", norm, ndim=1, dtypes=chk.FLOAT_DTYPES)
            self.dtype, self.device = norm.dtype, norm.device
            first = weights[2]   # o_proj [H, Hq D]
            if not is_packed(first):
                chk.tensor(f"weights[2] ({_NAMES[2]} of layer 0)", first, ndim=2, dtypes=chk.FLOAT_DTYPES)
            self.hidden, self.q_width = norm.shape[0], first.shape[1]
            if not self.hidden or not self.q_width:   # no hidden size or no query head: nothing to run
                chk.fail(f"weights[2] ({_NAMES[2]} of layer 0)", "shape [H, Hq D] with H > 0 and Hq D > 0",
                         f"shape {tuple(first.shape)}")
            qkv_rows = weights[1].shape[0] if isinstance(weights[1], torch.Tensor) or is_packed(weights[1]) else 0
            self.kv_width = (qkv_rows - self.q_width) // 2
        for i in range(self.layers):
            self._check_layer(i, weights[i * WEIGHTS_PER_LAYER:(i + 1) * WEIGHTS_PER_LAYER])
        return self

    def _check_layer(self, i: int, layer) -> None:
        def name(j):
            return f"weights[{i * WEIGHTS_PER_LAYER + j}] ({_NAMES[j]} of layer {i})"

        for j, w in enumerate(layer):
            if w is None and j >= 6:
                continue
            if j in PROJECTIONS and is_packed(w):
                _check_packed(name(j), w, self.device)
                continue
            dtypes = (self.dtype,) + (NARROW_DTYPES if j in PROJECTIONS else ())
            chk.tensor(name(j), w, ndim=1 if j in (0, 3) else 2, dtypes=dtypes, device=self.device)
        lora_a, lora_b = layer[6], layer[7]
        if (lora_a is None) != (lora_b is None):
            chk.fail(name(7 if lora_b is None else 6), "LoRA A and B both given or both None", "only one of them")
        H, Q, KV = self.hidden, self.q_width, self.kv_width
        I = layer[4].shape[0] // 2
        if not I:
            chk.fail(name(4), "shape [2 I, H] with I > 0 (gate and up rows)", f"shape {tuple(layer[4].shape)}")
        r = lora_a.shape[0] if lora_a is not None else 0
        want = ((H,), (Q + 2 * KV, H), (H, Q), (H,), (2 * I, H), (H, I), (r, Q), (H, r))
        for j, (w, shape) in enumerate(zip(layer, want)):
            if w is not None and tuple(w.shape) != shape:
                chk.fail(name(j), f"shape {shape}", f"shape {tuple(w.shape)}")

    def cache(self, key: str, make):
        """A value derived from these weights (a backend's pointer list), made once."""
        store = self.__dict__.setdefault("_derived", {})
        if key not in store:
            store[key] = make()
        return store[key]

    def check_against(self, x, L: int, Hkv: int, D: int) -> int:
        """Sizes against x [B, T, H] and caches of L layers with Hkv heads of D; returns Hq."""
        if self.layers != L:
            chk.fail("weights", f"{WEIGHTS_PER_LAYER} tensors for each of the {L} layers of k_cache",
                     f"{len(self)} tensors ({self.layers} layers)")
        if not L:
            return Hkv
        if self.dtype != x.dtype or self.device != x.device:
            chk.fail("weights", f"{x.dtype} on {x.device} (as x)", f"{self.dtype} on {self.device}")
        if self.hidden != x.shape[2]:
            chk.fail("weights", f"layers of hidden size {x.shape[2]} (as x)", f"hidden size {self.hidden}")
        if self.kv_width != Hkv * D or self.q_width % D or (self.q_width // D) % Hkv:
            chk.fail("weights", f"q/k/v rows for Hkv={Hkv} heads of D={D} (as k_cache) and a multiple of Hkv "
                     "query heads", f"q rows {self.q_width}, k/v rows {self.kv_width} each")
        return self.q_width // D


def _check_packed(name: str, w, device) -> None:
    """A packed projection's tensors: int32 codes and zero points, float scales, on `device`,
    with the sizes of tridiff.ops.quant_linear (shape (N, K) from the object)."""
    N, K = w.shape
    bits, gs = w.bits, w.group_size
    if bits not in (4, 8) or not isinstance(gs, int) or gs < 1 or K % gs:
        chk.fail(name, "a packed weight with bits 4 or 8 and a group size dividing K",
                 f"bits {bits!r}, group_size {gs!r}, K {K}")
    P, G = 32 // bits, K // gs
    for part, t, dtypes, shape in (("qweight", w.qweight, (torch.int32,), (K // P, N)),
                                   ("scales", w.scales, chk.FLOAT_DTYPES, (G, N)),
                                   ("zeros", w.zeros, (torch.int32,), (G, N // P))):
        chk.tensor(f"{name}.{part}", t, ndim=2, dtypes=dtypes, device=device)
        if tuple(t.shape) != shape:
            chk.fail(f"{name}.{part}", f"shape {shape}", f"shape {tuple(t.shape)}")


def normalize_decoder_args(x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                           cos, sin, q_scale, eps, lora_scale, softmax_scale, write_kv,
                           final_norm=None) -> tuple:
    """Validate everything and return the positional tuple every backend takes."""
    chk.tensor("x", x, ndim=3, dtypes=chk.FLOAT_DTYPES)
    B, T, H = x.shape
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        chk.tensor(name, c, ndim=5, dtypes=(x.dtype,), device=x.device)
    L, Hkv, D = k_cache.shape[0], k_cache.shape[-2], k_cache.shape[-1]
    chk.shape("v_cache", v_cache, tuple(k_cache.shape))
    weights = DecoderWeights(weights)
    Hq = weights.check_against(x, L, Hkv, D)
    for name, t, shape in (("cos", cos, (B, T, D)), ("sin", sin, (B, T, D)), ("q_scale", q_scale, (B, T))):
        chk.tensor(name, t, ndim=len(shape), dtypes=(x.dtype,), device=x.device)
        chk.shape(name, t, shape)
    if final_norm is not None:
        chk.tensor("final_norm", final_norm, ndim=1, dtypes=(x.dtype,), device=x.device)
        chk.shape("final_norm", final_norm, (H,))
    for name, value in (("eps", eps), ("lora_scale", lora_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            chk.fail(name, "a python float", repr(value))
    # the attention arguments, checked by tridiff.ops.attention's own function (read from
    # the module, so a test counting its calls sees these); layer 0's caches stand for
    # every layer's (same shape), q/k/v are shape-only stand-ins
    stand_in = x.new_empty(())
    layer0_k = k_cache[0] if L else k_cache.new_empty(k_cache.shape[1:])
    layer0_v = v_cache[0] if L else v_cache.new_empty(v_cache.shape[1:])
    attn = _attention.normalize_attention_args(
        stand_in.expand(B, T, Hq, D), stand_in.expand(B, T, Hkv, D), stand_in.expand(B, T, Hkv, D), layer0_k,
        layer0_v, cache_lens, modes, mode_args, q_lens, block_table, softmax_scale, write_kv)
    cache_lens, modes, mode_args, q_lens, block_table, softmax_scale, write_kv = attn[5:]
    return (x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table, cos, sin,
            q_scale, float(eps), float(lora_scale), softmax_scale, write_kv, final_norm)


class DecoderPlan:
    """decoder_plan's result: the checked arguments and the backend that will run them."""

    def __init__(self, backend: str, args: tuple):
        self.backend = backend
        self.args = args

    def __call__(self) -> torch.Tensor:
        if _dispatch.traced() and not self.args[1].packed:
            args = self.args
            _decoder_op(args[0], list(args[1]), *args[2:], self.backend)
        else:
            _dispatch.implementation("decoder_layers_", self.backend)(*self.args)
        return self.args[0]


def decoder_plan(x, weights, k_cache, v_cache, cache_lens, modes, *, cos, sin, q_scale, eps, mode_args=None,
                 q_lens=None, block_table=None, lora_scale=0.0, softmax_scale=None, write_kv=False,
                 final_norm=None, backend="auto") -> DecoderPlan:
    """Check the arguments of decoder_layers_ and resolve its backend, without running it
    (a caller can look at plan.backend first: tridiff.model runs its op-by-op layers
    instead when only the reference would serve)."""
    args = normalize_decoder_args(x, weights, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                                  cos, sin, q_scale, eps, lora_scale, softmax_scale, write_kv, final_norm)
    return DecoderPlan(_dispatch.resolve("decoder_layers_", backend, x.device, args, {}), args)


def decoder_layers_(x, weights, k_cache, v_cache, cache_lens, modes, *, cos, sin, q_scale, eps, mode_args=None,
                    q_lens=None, block_table=None, lora_scale=0.0, softmax_scale=None, write_kv=False,
                    final_norm=None, backend="auto") -> torch.Tensor:
    return decoder_plan(x, weights, k_cache, v_cache, cache_lens, modes, cos=cos, sin=sin, q_scale=q_scale,
                        eps=eps, mode_args=mode_args, q_lens=q_lens, block_table=block_table,
                        lora_scale=lora_scale, softmax_scale=softmax_scale, write_kv=write_kv,
                        final_norm=final_norm, backend=backend)()
