"""The tri-mode network for training: the same computation as tridiff.model (docs/spec.md
section 1: pre-norm GQA attention with YaRN rotary and the llama-4 query scale,
SwiGLU MLP, final norm, untied diffusion_head), but differentiable and with a dense
boolean attention mask instead of a KV cache.

Parameter names equal the checkpoint names, so state_dict() is a checkpoint that
tridiff.model.Model.from_pretrained (or any loader of the released layout) reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tridiff.config import ModelConfig
from tridiff.rotary import apply_rotary, cos_sin, llama4_query_scale, yarn_inv_freq


class _Norm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class _Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.q_size, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.kv_size, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.kv_size, bias=False)
        self.o_proj = nn.Linear(c.q_size, c.hidden_size, bias=False)

    def forward(self, h, cos, sin, q_scale, mask):
        c, (B, S, _) = self.c, h.shape
        q = apply_rotary(self.q_proj(h).view(B, S, c.num_attention_heads, c.head_dim), cos, sin) * q_scale
        k = apply_rotary(self.k_proj(h).view(B, S, c.num_key_value_heads, c.head_dim), cos, sin)
        v = self.v_proj(h).view(B, S, c.num_key_value_heads, c.head_dim)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, S, c.q_size))


class _MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class _Layer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.self_attn = _Attention(c)
        self.mlp = _MLP(c)
        self.input_layernorm = _Norm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = _Norm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, q_scale, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, q_scale, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Encoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = _Norm(c.hidden_size, c.rms_norm_eps)


class TrainNetwork(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.diffusion_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights_(self, seed: int) -> "TrainNetwork":
        """Normal(0, 0.02) matrices; output projections scaled by 1/sqrt(2 * layers)
        so the residual stream does not grow with depth; norms at 1."""
        gen = torch.Generator().manual_seed(seed)
        depth_scale = (2 * self.config.num_hidden_layers) ** -0.5
        for name, p in self.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)
                continue
            std = 0.02 * (depth_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0)
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits [B, S, V] for tokens [B, S]; positions [S] (absolute, for rotary and
        the query scale); mask [S, S] bool, True where row i may attend to key j."""
        c = self.config
        pos = positions[None, :]
        dtype = self.diffusion_head.weight.dtype
        # fp32 frequencies (fp64 for an fp64 network), as tridiff.model computes them
        cos, sin = cos_sin(pos, yarn_inv_freq(c, dtype), c.attention_factor, dtype)
        q_scale = llama4_query_scale(pos, c.llama_4_scaling_beta, c.original_max_position_embeddings, dtype)
        x = self.encoder.embed_tokens(tokens)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, q_scale, mask)
        return self.diffusion_head(self.encoder.norm(x))
