"""The tri-mode network (docs/spec.md section 1) built on tridiff.ops.attention.

    model = Model.from_pretrained(dir, device="cuda")          # bf16 on cuda, fp32 on cpu
    cache = model.new_cache(batch, max_len)                    # or paged=True, page_size=16
    logits = model(tokens, cache, modes=Mode.CAUSAL, kv="commit")

One forward serves every mode; only the attention pattern (modes/mode_args, passed
straight to tridiff.ops.attention) and the positions differ. Projections, norms,
rotary and the MLP are plain torch; attention and every KV-cache mutation go through
tridiff.ops, never a backend directly.

Per layer (tridiff.layers): q/k/v is one GEMM and gate/up is one GEMM (Model.fused); CPU
projections of up to BMM_ROWS tokens take the formulation measured fastest on the
machine for their weight shape (tridiff.projection); attention is checked and its backend resolved once per
forward (ops attention_plan), not once per layer; rotary and the llama-4 query scale
come from per-position tables. On CPU a forward of few token rows runs the whole layer
stack as one ops.decoder_layers_ call instead (tridiff.layer_stack says when).

Parameter names equal the checkpoint names (encoder.layers.{i}.self_attn.q_proj.weight,
..., diffusion_head.weight), so model.state_dict() is a checkpoint; q/k/v_proj and
gate/up_proj are views into the fused tensors, so each weight is in memory once.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from tridiff import _checks as chk
from tridiff import layer_stack, ops
from tridiff import checkpoint as ckpt
from tridiff.cache import KVCache, PagedKVCache
from tridiff.config import ModelConfig
from tridiff.layer_math import rms_norm, rotary_tables
from tridiff.layers import Encoder, ForwardContext, LoraLayer, Weight
from tridiff.modes import Mode
from tridiff.projection import linear
from tridiff.quant.packed import check_activations
from tridiff.rotary import cos_sin, llama4_query_scale, math_dtype, yarn_inv_freq

KV_MODES = ("none", "write", "commit")


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


class Model(nn.Module):
    """Weights are allocated uninitialised: fill them with from_pretrained, load_state_dict
    or init_random_."""

    def __init__(self, config: ModelConfig, *, device="cpu", dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise chk.TridiffInputError(f"config: expected a tridiff.config.ModelConfig, got {type(config).__name__}")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None) or dtype
        dtype = dtype or default_dtype(device)
        if dtype not in chk.FLOAT_DTYPES:
            chk.fail("dtype", "a floating dtype", dtype)
        self.config = config
        self.encoder = Encoder(config, dtype, device)
        self.diffusion_head = Weight(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.linear_spec_lora: Optional[nn.ModuleList] = None
        if config.lora is not None:
            self._add_adapter(config.lora.rank)
        self._inv_freq = None  # rotary inverse frequencies, see inv_freq
        self._tables = None     # per-position rotary / query-scale tables, see _position_tables
        self._checked_stacks = {}   # use_lora -> (weight storage key, ops.DecoderWeights), see _stack_weights
        self.weight_format = "full"   # or "bf16", "int4-g128", ...: set by tridiff.quant
        self.activations = "float"    # or "int8" for packed weights (tridiff.quant.load.set_activations)

    # ---- construction ---------------------------------------------------------------------

    def _add_adapter(self, rank: int) -> None:
        p = self.encoder.norm.weight   # the activations' dtype and device (the head may be packed)
        self.linear_spec_lora = nn.ModuleList(
            LoraLayer(rank, self.config, p.dtype, p.device) for _ in range(self.config.num_hidden_layers))

    @property
    def dtype(self) -> torch.dtype:
        """The activations' (and cache's) dtype: the norms'. Projections may hold narrower
        or packed weights (tridiff.quant)."""
        return self.encoder.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.norm.weight.device

    @property
    def inv_freq(self) -> torch.Tensor:
        """YaRN inverse frequencies in fp32 (fp64 for an fp64 model) on the model's device.
        Not a buffer, so model.to(bfloat16) cannot round them."""
        want = math_dtype(self.dtype)
        f = self._inv_freq
        if f is None or f.device != self.device or f.dtype != want:
            f = self._inv_freq = yarn_inv_freq(self.config, self.dtype, device=self.device)
        return f

    # ---- fused projections ----------------------------------------------------------------

    def fused(self, i: int):
        """(w_qkv [q_size + 2 kv_size, hidden], w_gate_up [2 intermediate, hidden]) of layer
        i: the tensors whose row blocks are its q/k/v_proj and gate/up_proj parameters, so
        one GEMM computes q, k and v and one computes gate and up (tridiff.layers)."""
        layer = self.encoder.layers[i]
        return layer.self_attn.fused_weight(), layer.mlp.fused_weight()

    def _position_tables(self, n: int):
        """(size >= n, cos [size, 1, D], signed sin [size, 1, D], llama-4 query scale
        [size, 1, 1]) for positions 0..size-1 in the model's dtype: the elementwise
        formulas of cos_sin/rotary_tables and llama4_query_scale over arange(size), so
        table[p] is what they give at position p. Kept with the model, grown on demand
        (a forward then gathers three rows per token instead of ~20 small ops)."""
        t = self._tables
        if t is None or t[0] < n or t[1].dtype != self.dtype or t[1].device != self.device:
            c = self.config
            size = max(n, 2 * t[0] if t is not None else 256)
            pos = torch.arange(size, device=self.device)[None, :]
            cos, sin = rotary_tables(*cos_sin(pos, self.inv_freq, c.attention_factor, self.dtype))
            scale = llama4_query_scale(pos, c.llama_4_scaling_beta, c.original_max_position_embeddings, self.dtype)
            t = self._tables = (size, cos[0], sin[0], scale[0])
        return t

    @property
    def has_adapter(self) -> bool:
        return self.linear_spec_lora is not None

    @classmethod
    def from_pretrained(cls, directory, *, device="cpu", dtype: Optional[torch.dtype] = None,
                        adapter: Union[str, bool, None, os.PathLike] = "auto", activations: str = "float") -> "Model":
        """Load config.json + *.safetensors (single or sharded) from `directory`.

        Tensor names and shapes are all checked from the file headers before any
        weight is read (tridiff.checkpoint.open_checkpoint, which also says how
        `adapter` picks the drafter LoRA: "auto", True, False/None or a path).
        Weights are read through safetensors' memory map one tensor at a time straight
        into the preallocated parameters (converted to `dtype` on `device`).
        activations: "float", or "int8" for a GPTQ checkpoint (its int4 projections round
        their input to int8 per group: tridiff.quant.load.set_activations; refused for others).
        """
        check_activations(activations, device)   # before anything is read
        found = ckpt.open_checkpoint(directory, adapter)
        if found.quant is not None:   # a GPTQ checkpoint: packed projections
            from tridiff.quant.load import load_model, set_activations

            return set_activations(load_model(cls, found, device=device, dtype=dtype), activations)
        if activations != "float":
            raise ValueError(f"activations: {activations!r} applies to int4 (GPTQ) checkpoints; {directory} holds "
                             "full-precision weights")
        model = cls(found.config, device=device, dtype=dtype)
        params = dict(model.named_parameters())
        ckpt.load_into(found.weights, {name: params[name] for name in ckpt.expected_shapes(found.config)})
        if found.adapter is not None:
            by_key = model._adapter_params()
            # read each tensor under its stored name (it may carry another prefix)
            ckpt.load_into(found.adapter, {name: by_key[ckpt.normalise_adapter_key(name)]
                                           for name in found.adapter})
        return model

    def _adapter_params(self) -> dict:
        """Checkpoint adapter key -> the LoRA parameter it fills."""
        by_key = {}
        for i, layer in enumerate(self.linear_spec_lora):
            by_key[ckpt.adapter_key(i, "A")] = layer.lora_A.weight
            by_key[ckpt.adapter_key(i, "B")] = layer.lora_B.weight
        return by_key

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> "Model":
        """Fill the weights like tridiff.checkpoint's random checkpoints (same seed, same
        values before dtype rounding)."""
        tensors = ckpt.random_tensors(self.config, seed=seed, dtype=torch.float32)
        params = dict(self.named_parameters())
        for name, t in tensors.items():
            params[name].copy_(t)
        if self.has_adapter:
            lora = ckpt.random_adapter_tensors(self.config, self.config.lora.rank, seed=seed, dtype=torch.float32)
            for key, param in self._adapter_params().items():
                param.copy_(lora[key])
        return self

    def new_cache(self, batch: int, max_len: int, *, paged: bool = False, page_size: int = 16,
                  num_pages: Optional[int] = None):
        """An empty KV cache for `batch` rows of up to `max_len` tokens, in the model's
        dtype and device. paged=True gives a PagedKVCache (num_pages defaults to
        enough pages for every row at max_len)."""
        c = self.config
        args = (c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim)
        if paged:
            return PagedKVCache(*args, page_size=page_size, num_pages=num_pages, dtype=self.dtype,
                                device=self.device)
        return KVCache(*args, dtype=self.dtype, device=self.device)

    # ---- forward --------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, cache, *, modes=Mode.CAUSAL, mode_args=None, q_lens=None,
                positions: Optional[torch.Tensor] = None, kv: str = "none", adapter: bool = False,
                backend: str = "auto") -> torch.Tensor:
        """logits [B, T, V] (float32; float64 for an fp64 model) for tokens [B, T] int64.

        modes/mode_args/q_lens: as tridiff.ops.attention (per row; q_lens default T).
        positions [B, T] int64: absolute positions for rotary and the llama-4 query
            scale; default cache.lens[:, None] + arange(T).
        kv: "none" leaves the cache untouched; "write" stores the new K/V at slots
            cache.lens.. (lengths not advanced); "commit" writes and advances
            cache.lens by q_lens. A paged cache gets its pages reserved first.
        adapter: apply the LoRA delta on o_proj (ignored by a model without adapter).
        """
        c = self.config
        B, T = self._check_inputs(tokens, cache, kv)
        cos, sin, q_scale = self._rotary_rows(positions, cache, B, T)
        write = kv != "none"
        if write and cache.paged:   # a contiguous cache has nothing to reserve
            n_new = q_lens if q_lens is not None else T
            if isinstance(n_new, torch.Tensor):
                n_new = n_new.to(torch.int32)
            cache.reserve_(cache.lens + n_new, backend=backend)

        use_lora = adapter and self.has_adapter
        ctx = ForwardContext(cos=cos, sin=sin, q_scale=q_scale,
                             heads=(c.num_attention_heads, c.num_key_value_heads, c.head_dim),
                             eps=c.rms_norm_eps, lora_scale=c.lora.scale if use_lora else 0.0, cache=cache,
                             modes=modes, mode_args=mode_args, q_lens=q_lens, write_kv=write, backend=backend)
        x = F.embedding(tokens, self.encoder.embed_tokens.weight)
        stack = self._layer_stack(x, ctx, use_lora, backend)
        if stack is not None:
            x = stack()   # the final norm included
        else:
            for i, layer in enumerate(self.encoder.layers):
                x = layer.forward(x, ctx, self.linear_spec_lora[i] if use_lora else None)
            x = rms_norm(x, self.encoder.norm.weight, c.rms_norm_eps)
        logits = linear(x, self.diffusion_head.weight)

        if kv == "commit":
            cache.commit_(q_lens if q_lens is not None else T, backend=backend)
        return logits.to(torch.float64 if self.dtype == torch.float64 else torch.float32)

    def _layer_stack(self, x, ctx: ForwardContext, use_lora: bool, backend: str):
        """The whole layer stack and the final norm as one checked ops.decoder_layers_ call
        (its plan), or None for the op-by-op layers. One call pays off where the forward is
        bound by per-op host cost: CPU forwards of few token rows (tridiff.layer_stack says
        how many).
        Only a compiled kernel is worth it: where only the reference would serve, the
        op-by-op layers (with their own per-op backends) run instead."""
        c = self.config
        rows = x.shape[0] * x.shape[1]
        layer_weights = c.hidden_size * (2 * c.q_size + 2 * c.kv_size + 3 * c.intermediate_size)
        if not layer_stack.wanted(x.device, x.dtype, rows, layer_weights, narrow=self.weight_format != "full",
                                  int8_activations=self.activations == "int8"):
            return None
        stack_backend = layer_stack.stack_backend(backend)
        if stack_backend is None:
            return None
        cache = ctx.cache
        try:
            plan = ops.decoder_plan(x, self._stack_weights(use_lora), cache.k, cache.v, cache.lens, ctx.modes,
                                    cos=ctx.cos[:, :, 0], sin=ctx.sin[:, :, 0], q_scale=ctx.q_scale[:, :, 0, 0],
                                    eps=ctx.eps, mode_args=ctx.mode_args, q_lens=ctx.q_lens,
                                    block_table=cache.block_table, lora_scale=ctx.lora_scale,
                                    write_kv=ctx.write_kv, final_norm=self.encoder.norm.weight,
                                    backend=stack_backend)
        except ops.BackendUnavailable:
            # cpp (named or forced) cannot take these inputs (a strided table, a head_dim
            # its attention tiling lacks): the op-by-op layers run them, op by op on cpp
            return None
        return plan if plan.backend != "torch" else None

    def _stack_weights(self, use_lora: bool) -> "ops.DecoderWeights":
        """The layers' weights in ops.decoder_layers_ order, as a DecoderWeights (checked once).
        Kept per use_lora and rebuilt when any parameter's storage or shape changed, so a
        forward reads the parameters' addresses, not the modules."""
        params = [p for layer in self.encoder.layers for p in layer.stack_params()]
        if use_lora:
            params += [p for lora in self.linear_spec_lora for p in (lora.lora_A.weight, lora.lora_B.weight)]
        key = [(p.data_ptr(), p.shape) for p in params]
        hit = self._checked_stacks.get(use_lora)
        if hit is None or hit[0] != key:
            weights = []
            for i, layer in enumerate(self.encoder.layers):
                attn, mlp = layer.self_attn, layer.mlp
                lora = self.linear_spec_lora[i] if use_lora else None
                # bf16 tensors and packed weights (tridiff.quant) go as they are; packed
                # ones in their CPU layout (tridiff.quant.packed), laid out once here
                weights += [layer.input_layernorm.weight, attn.fused_weight(), _cpu_layout(attn.o_proj.weight),
                            layer.post_attention_layernorm.weight, mlp.fused_weight(),
                            _cpu_layout(mlp.down_proj.weight),
                            lora.lora_A.weight if lora is not None else None,
                            lora.lora_B.weight if lora is not None else None]
            hit = self._checked_stacks[use_lora] = (key, ops.DecoderWeights(weights))
        return hit[1]

    def _check_inputs(self, tokens, cache, kv: str):
        """Argument checks of forward, before anything is written. Returns (B, T)."""
        c = self.config
        chk.tensor("tokens", tokens, ndim=2, dtypes=chk.INDEX_DTYPES, device=self.device)
        B, T = tokens.shape
        if not isinstance(cache, (KVCache, PagedKVCache)):
            chk.fail("cache", "a tridiff.cache.KVCache or PagedKVCache", type(cache).__name__)
        if cache.batch != B:
            chk.fail("cache", f"a cache for B={B} rows", f"one for {cache.batch} rows")
        if cache.dtype != self.dtype or cache.device != self.device:
            chk.fail("cache", f"dtype {self.dtype} on {self.device} (use model.new_cache)",
                     f"{cache.dtype} on {cache.device}")
        if kv not in KV_MODES:
            chk.fail("kv", "one of 'none', 'write', 'commit'", repr(kv))
        if chk.values_checkable(tokens) and T and B:
            if tokens.numel() <= 4096:   # a few ids: one host copy, Python min/max (two reductions cost more)
                ids = tokens.reshape(-1).tolist()
                lo, hi = min(ids), max(ids)
            else:
                lo, hi = (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= c.vocab_size:
                chk.fail("tokens", f"ids in [0, vocab_size={c.vocab_size})", f"an id {lo if lo < 0 else hi}")
        return B, T

    def _rotary_rows(self, positions, cache, B: int, T: int):
        """(cos, signed sin [B, T, 1, D], query scale [B, T, 1, 1]) at `positions` [B, T]
        (checked), or by default at cache.lens + 0..T-1, gathered from the position tables."""
        c, dtype = self.config, self.dtype
        if positions is None:
            positions = cache.lens.long()[:, None] + torch.arange(T, device=self.device)
            # positions < lens + T <= capacity + T: every one is in the tables
            tables = self._position_tables(cache.capacity + T)
            return tuple(t[positions] for t in tables[1:])   # 3 gathers
        chk.tensor("positions", positions, ndim=2, dtypes=chk.INDEX_DTYPES, device=self.device)
        chk.shape("positions", positions, (B, T))
        if chk.values_checkable(positions) and T and B and int(positions.min()) < 0:
            chk.fail("positions", "non-negative positions", int(positions.min()))
        positions = positions.long()
        cos, sin = rotary_tables(*cos_sin(positions, self.inv_freq, c.attention_factor, dtype))
        q_scale = llama4_query_scale(positions, c.llama_4_scaling_beta, c.original_max_position_embeddings, dtype)
        return cos, sin, q_scale


def _cpu_layout(weight):
    """A projection weight for the layer stack: a tensor as it is, a PackedLinear with its
    codes in the CPU layout (tridiff.quant.packed.PackedLinear.cpu_layout_)."""
    return weight if isinstance(weight, torch.Tensor) else weight.cpu_layout_()
