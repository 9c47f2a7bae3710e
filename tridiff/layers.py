"""The layers of the tri-mode network (tridiff.model): modules whose parameter names are
the checkpoint's, each owning its forward.

A decoder layer is attention then MLP, each on the RMS-normed residual stream. q/k/v_proj
are row blocks of one [q + 2 kv, hidden] tensor and gate/up_proj of one [2 intermediate,
hidden] tensor (fused_weight), so one GEMM computes each group while every weight is in
memory once. What all layers of one forward share (rotary and query-scale rows, the
attention plan, the cache) travels in a ForwardContext. Layers call each other's
forward directly, not through nn.Module.__call__: its hook bookkeeping costs about 1 us a
call, in a forward that is overhead-bound on CPU at decoding sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tridiff.config import ModelConfig
from tridiff.ops.attention import attention_plan
from tridiff.layer_math import rms_norm, rotate
from tridiff.projection import linear
from tridiff.quant.packed import fused_packed


class Weight(nn.Module):
    """A module holding one weight, so parameter names read like the checkpoint's.
    `of`: hold that tensor itself (a view into a fused weight) instead of a new one."""

    def __init__(self, *shape, dtype=None, device=None, of: Optional[torch.Tensor] = None):
        super().__init__()
        data = of if of is not None else torch.empty(shape, dtype=dtype, device=device)
        self.weight = nn.Parameter(data, requires_grad=False)


@dataclass
class ForwardContext:
    """What every layer of one forward shares."""
    cos: torch.Tensor          # [B, T, 1, D] rotary tables (see rotary_tables)
    sin: torch.Tensor
    q_scale: torch.Tensor      # [B, T, 1, 1] llama-4 query scale
    heads: tuple               # (query heads, kv heads, head dim)
    eps: float                 # RMS norm epsilon
    lora_scale: float
    cache: Any
    modes: Any                 # attention pattern, as tridiff.ops.attention takes it
    mode_args: Any
    q_lens: Any
    write_kv: bool
    backend: str
    plan: Optional[Callable] = None

    def attend(self, layer: int, q, k, v):
        """Attention of one layer over its cache. The first call checks the arguments and
        resolves the backend (attention_plan); every later layer reuses that plan."""
        k_cache, v_cache = self.cache.layer(layer)
        if self.plan is None:
            self.plan = attention_plan(q, k, v, k_cache, v_cache, self.cache.lens, self.modes,
                                       mode_args=self.mode_args, q_lens=self.q_lens,
                                       block_table=self.cache.block_table, write_kv=self.write_kv,
                                       backend=self.backend)
        return self.plan(q, k, v, k_cache, v_cache)


class _FusedRows(nn.Module):
    """A module whose `fused_names` children are row blocks of one weight (fused_weight)."""
    fused_names: tuple = ()

    def __init__(self):
        super().__init__()
        self._fused = None   # (parameter addresses, stacked weight)

    def fused_weight(self) -> torch.Tensor:
        """The tensor whose row blocks are the `fused_names` parameters. Anything that gives a
        parameter new storage (load_state_dict with assign=True, param.data = ...) is
        noticed here by address, and the blocks are stacked again with the parameters
        re-pointed at the new tensor."""
        if "weight" not in self._modules[self.fused_names[0]]._parameters:   # packed parts: tridiff.quant
            return fused_packed(self)
        hit = self._fused
        if hit is not None and torch.compiler.is_compiling():
            return hit[1]   # traced: storage addresses are not comparable; weights do not move there
        # runs per layer per forward: plain dict reads instead of nn.Module.__getattr__
        parts = [self._modules[name]._parameters["weight"] for name in self.fused_names]
        if hit is not None and hit[0] == [p.data_ptr() for p in parts]:
            return hit[1]
        whole = fuse(parts)
        self._fused = ([p.data_ptr() for p in parts], whole)
        return whole

    def _apply(self, fn, recurse=True):
        # model.to(...)/.double()/.cuda() convert every parameter on its own: stack the
        # converted blocks again right away, so memory never holds them twice for long.
        out = super()._apply(fn, recurse)
        self._fused = None
        self.fused_weight()
        return out


class Attention(_FusedRows):
    fused_names = ("q_proj", "k_proj", "v_proj")

    def __init__(self, c: ModelConfig, index: int, dtype, device):
        super().__init__()
        self.index = index   # the layer's slot in the KV cache
        q, k, v = _stacked((c.q_size, c.kv_size, c.kv_size), c.hidden_size, dtype, device)
        self.q_proj = Weight(of=q)
        self.k_proj = Weight(of=k)
        self.v_proj = Weight(of=v)
        self.o_proj = Weight(c.hidden_size, c.q_size, dtype=dtype, device=device)

    def forward(self, h, ctx: ForwardContext, lora: Optional["LoraLayer"] = None):
        """The fused q/k/v GEMM, rotary on q and k (one pass over both), the llama-4 query
        scale, attention, o_proj (+ the LoRA delta when `lora` is given)."""
        B, T = h.shape[:2]
        Hq, Hkv, D = ctx.heads
        qk, v = linear(h, self.fused_weight()).view(B, T, Hq + 2 * Hkv, D).split((Hq + Hkv, Hkv), dim=2)
        q, k = rotate(qk, ctx.cos, ctx.sin).split((Hq, Hkv), dim=2)
        o = ctx.attend(self.index, q * ctx.q_scale, k, v).reshape(B, T, Hq * D)
        out = linear(o, self.o_proj.weight)
        if lora is not None:
            out = out + lora.forward(o) * ctx.lora_scale
        return out


class MLP(_FusedRows):
    fused_names = ("gate_proj", "up_proj")

    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        gate, up = _stacked((c.intermediate_size, c.intermediate_size), c.hidden_size, dtype, device)
        self.gate_proj = Weight(of=gate)
        self.up_proj = Weight(of=up)
        self.down_proj = Weight(c.hidden_size, c.intermediate_size, dtype=dtype, device=device)

    def forward(self, h):
        """SiLU-gated MLP: the fused gate/up GEMM, then the down projection."""
        gate, up = linear(h, self.fused_weight()).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, self.down_proj.weight)


def _held(module: nn.Module) -> torch.Tensor:
    """A projection module's weight parameter, or a packed one's qweight buffer."""
    p = module._parameters.get("weight")
    return p if p is not None else module._buffers["qweight"]


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, index: int, dtype, device):
        super().__init__()
        self.self_attn = Attention(c, index, dtype, device)
        self.mlp = MLP(c, dtype, device)
        self.input_layernorm = Weight(c.hidden_size, dtype=dtype, device=device)
        self.post_attention_layernorm = Weight(c.hidden_size, dtype=dtype, device=device)

    def stack_params(self) -> list:
        """Every weight of the layer (9 parameters; a packed projection (tridiff.quant) gives
        its codes), read through the module dicts (no nn.Module.__getattr__): tridiff.model
        keys its ops.decoder_layers_ weights on them."""
        attn, mlp = self.self_attn._modules, self.mlp._modules
        return [self._modules[name]._parameters["weight"] for name in ("input_layernorm", "post_attention_layernorm")] \
            + [_held(attn[name]) for name in ("q_proj", "k_proj", "v_proj", "o_proj")] \
            + [_held(mlp[name]) for name in ("gate_proj", "up_proj", "down_proj")]

    def forward(self, x, ctx: ForwardContext, lora: Optional["LoraLayer"] = None):
        x = x + self.self_attn.forward(rms_norm(x, self.input_layernorm.weight, ctx.eps), ctx, lora)
        return x + self.mlp.forward(rms_norm(x, self.post_attention_layernorm.weight, ctx.eps))


class Encoder(nn.Module):
    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        self.embed_tokens = Weight(c.vocab_size, c.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(c, i, dtype, device) for i in range(c.num_hidden_layers))
        self.norm = Weight(c.hidden_size, dtype=dtype, device=device)


class LoraLayer(nn.Module):
    """The drafter's LoRA on one layer's o_proj: the delta before its scale."""

    def __init__(self, rank: int, c: ModelConfig, dtype, device):
        super().__init__()
        self.lora_A = Weight(rank, c.q_size, dtype=dtype, device=device)
        self.lora_B = Weight(c.hidden_size, rank, dtype=dtype, device=device)

    def forward(self, o):
        return linear(linear(o, self.lora_A.weight), self.lora_B.weight)


# ---- fused weights ---------------------------------------------------------------------

def _stacked(parts, c_hidden: int, dtype, device) -> list:
    """One [sum(rows), hidden] tensor, returned as the row blocks of `parts` (row counts):
    parameters made from these blocks are views of it, so filling them fills it."""
    whole = torch.empty(sum(parts), c_hidden, dtype=dtype, device=device)
    return list(whole.split(parts, dim=0))


def _rows_of_one(parts) -> Optional[torch.Tensor]:
    """The [sum of rows, cols] tensor that `parts` are consecutive row blocks of (same
    storage, contiguous, in order), as a view; None if they are not."""
    first = parts[0]
    storage = first.untyped_storage()
    ptr, es = first.data_ptr(), first.element_size()
    for p in parts:
        if (p.dtype != first.dtype or p.device != first.device or not p.is_contiguous()
                or p.data_ptr() != ptr or p.untyped_storage().data_ptr() != storage.data_ptr()):
            return None
        ptr += p.numel() * es
    rows = sum(p.shape[0] for p in parts)
    if (first.storage_offset() + rows * first.shape[1]) * es > storage.nbytes():
        return None
    return first.as_strided((rows, first.shape[1]), (first.shape[1], 1))


def fuse(params) -> torch.Tensor:
    """The stacked weight of `params` (row blocks); if they are not already views of one
    tensor, stack them into a new one and re-point every parameter at its block."""
    whole = _rows_of_one(params)
    if whole is None:
        whole = torch.cat([p.detach() for p in params], dim=0)
        for p, block in zip(params, whole.split([p.shape[0] for p in params], dim=0)):
            p.data = block
    return whole
