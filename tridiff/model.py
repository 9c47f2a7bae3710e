"""The tri-mode network (SPEC.md section 1) built on tridiff.ops.attention.

    model = Model.from_pretrained(dir, device="cuda")          # bf16 on cuda, fp32 on cpu
    cache = model.new_cache(batch, max_len)                    # or paged=True, page_size=16
    logits = model(tokens, cache, modes=Mode.CAUSAL, kv="commit")

One forward serves every mode; only the attention pattern (modes/mode_args, passed
straight to tridiff.ops.attention) and the positions differ. Projections, norms,
rotary and the MLP are plain torch; attention and every KV-cache mutation go through
tridiff.ops, never a backend directly.

Per layer: q/k/v is one GEMM and gate/up is one GEMM (Model.fused); CPU projections of
up to BMM_ROWS tokens run as one batched GEMM over row blocks of the weight (linear);
attention is checked and its backend resolved once per forward (ops attention_plan),
not once per layer; rotary and the llama-4 query scale come from per-position tables.

Parameter names equal the checkpoint names (encoder.layers.{i}.self_attn.q_proj.weight,
..., diffusion_head.weight), so model.state_dict() is a checkpoint; q/k/v_proj and
gate/up_proj are views into the fused tensors, so each weight is in memory once.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from tridiff import _checks as chk
from tridiff import ops
from tridiff.ops.attention import attention_plan
from tridiff import checkpoint as ckpt
from tridiff.cache import KVCache, PagedKVCache
from tridiff.config import ModelConfig
from tridiff.modes import Mode
from tridiff.rotary import cos_sin, llama4_query_scale, math_dtype, yarn_inv_freq

KV_MODES = ("none", "write", "commit")


class _Weight(nn.Module):
    """A module holding one weight, so parameter names read like the checkpoint's.
    `of`: hold that tensor itself (a view into a fused weight) instead of a new one."""

    def __init__(self, *shape, dtype=None, device=None, of: Optional[torch.Tensor] = None):
        super().__init__()
        data = of if of is not None else torch.empty(shape, dtype=dtype, device=device)
        self.weight = nn.Parameter(data, requires_grad=False)


def _stacked(parts, c_hidden: int, dtype, device) -> list:
    """One [sum(rows), hidden] tensor, returned as the row blocks of `parts` (row counts):
    parameters made from these blocks are views of it, so filling them fills it."""
    whole = torch.empty(sum(parts), c_hidden, dtype=dtype, device=device)
    return list(whole.split(parts, dim=0))


class _Attention(nn.Module):
    """q_proj/k_proj/v_proj are row blocks of one [q + 2 kv, hidden] weight (see
    Model.fused), so one GEMM computes all three."""

    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        q, k, v = _stacked((c.q_size, c.kv_size, c.kv_size), c.hidden_size, dtype, device)
        self.q_proj = _Weight(of=q)
        self.k_proj = _Weight(of=k)
        self.v_proj = _Weight(of=v)
        self.o_proj = _Weight(c.hidden_size, c.q_size, dtype=dtype, device=device)


class _MLP(nn.Module):
    """gate_proj/up_proj are row blocks of one [2 * intermediate, hidden] weight."""

    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        gate, up = _stacked((c.intermediate_size, c.intermediate_size), c.hidden_size, dtype, device)
        self.gate_proj = _Weight(of=gate)
        self.up_proj = _Weight(of=up)
        self.down_proj = _Weight(c.hidden_size, c.intermediate_size, dtype=dtype, device=device)


class _Layer(nn.Module):
    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        self.self_attn = _Attention(c, dtype, device)
        self.mlp = _MLP(c, dtype, device)
        self.input_layernorm = _Weight(c.hidden_size, dtype=dtype, device=device)
        self.post_attention_layernorm = _Weight(c.hidden_size, dtype=dtype, device=device)


class _Encoder(nn.Module):
    def __init__(self, c: ModelConfig, dtype, device):
        super().__init__()
        self.embed_tokens = _Weight(c.vocab_size, c.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(_Layer(c, dtype, device) for _ in range(c.num_hidden_layers))
        self.norm = _Weight(c.hidden_size, dtype=dtype, device=device)


class _LoraLayer(nn.Module):
    def __init__(self, rank: int, c: ModelConfig, dtype, device):
        super().__init__()
        self.lora_A = _Weight(rank, c.q_size, dtype=dtype, device=device)
        self.lora_B = _Weight(c.hidden_size, rank, dtype=dtype, device=device)


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


def _fuse(params) -> torch.Tensor:
    """The stacked weight of `params` (row blocks); if they are not already views of one
    tensor, stack them into a new one and re-point every parameter at its block."""
    whole = _rows_of_one(params)
    if whole is None:
        whole = torch.cat([p.detach() for p in params], dim=0)
        for p, block in zip(params, whole.split([p.shape[0] for p in params], dim=0)):
            p.data = block
    return whole


# Rows (tokens) up to which a CPU projection runs as one batched GEMM over row blocks of
# the weight (see linear): every decoding forward (1 row per AR step, 16-36 for drafts,
# verifies, QUADRATIC(4) and short prefills); longer prefills take F.linear.
BMM_ROWS = 128
_BMM_DTYPES = (torch.float32, torch.float64)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) (no bias). On CPU, for at most BMM_ROWS rows of fp32/fp64, the
    weight [N, K] is read as b blocks of N/b rows and multiplied in one torch.bmm with
    x^T broadcast over the blocks. Measured on the 2-core EPYC (bench/NOTES.md, "Batched
    GEMV"): one row streams weights at 30 GB/s (1 thread) / 50-59 GB/s (2 threads)
    against 12-21 GB/s for F.linear's GEMV, which uses one thread; 16-128 rows run at
    1.1-1.7x F.linear's GFLOP/s with 2 threads (0.9-1.1x with one). Same products,
    summed in another order: results differ from F.linear by float rounding only."""
    K = x.shape[-1]
    rows = x.numel() // K if K else 0
    if 0 < rows <= BMM_ROWS and x.device.type == "cpu" and x.dtype in _BMM_DTYPES and x.is_contiguous():
        N = weight.shape[0]
        key = (N, rows > 4)
        blocks = _BMM_BLOCKS.get(key)
        if blocks is None:
            blocks = _BMM_BLOCKS[key] = _bmm_blocks(N, (256, 512, 128) if rows <= 4 else (128, 256, 512))
        if blocks and weight.is_contiguous():
            w = weight.view(blocks, N // blocks, K)
            if rows <= 4:
                # block @ x^T, x^T [K, rows] with strides (1, K) -- the layout that takes
                # bmm's fast GEMV path -- shared by every block (stride 0)
                y = torch.bmm(w, x.as_strided((blocks, K, rows), (0, 1, K)))
                if rows > 1:   # [blocks, N/blocks, rows] -> [rows, N], contiguous like F.linear's
                    y = y.permute(2, 0, 1).contiguous()
            else:   # x @ block^T: [blocks, rows, N/blocks] -> [rows, N]
                y = torch.bmm(x.view(1, rows, K).expand(blocks, rows, K), w.transpose(1, 2))
                y = y.permute(1, 0, 2).contiguous()
            return y.view(*x.shape[:-1], N)
    return F.linear(x, weight)


_BMM_BLOCKS: dict = {}


def _bmm_blocks(N: int, sizes) -> int:
    """N / r for the first block size r in `sizes` dividing N into at least 2 blocks, or
    0 (F.linear). 256-row blocks stream one row fastest, 128-row blocks several rows."""
    for r in sizes:
        if N % r == 0 and N // r >= 2:
            return N // r
    return 0


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x), the statistics in fp32 (fp64 for fp64), as transformers does.
    For fp32/fp64 that is exactly F.rms_norm (one call instead of six: the same operations
    in the same dtype; tests/model/test_fused.py checks them bit for bit)."""
    if x.dtype in _BMM_DTYPES:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def attention_inputs(x, ln, w_qkv, cos, sin, q_scale, eps: float, heads: tuple):
    """One layer up to attention: RMS norm, the fused q/k/v GEMM, rotary on q and k
    (one pass over both), the llama-4 query scale after rotary. -> q, k, v [B, T, H, D]."""
    B, T = x.shape[:2]
    Hq, Hkv, D = heads
    h = rms_norm(x, ln, eps)
    qk, v = linear(h, w_qkv).view(B, T, Hq + 2 * Hkv, D).split((Hq + Hkv, Hkv), dim=2)
    q, k = _rotate(qk, cos, sin).split((Hq, Hkv), dim=2)
    return q * q_scale, k, v


def block_output(x, o, w_o, lora_a, lora_b, lora_scale: float, ln, w_gu, w_down, eps: float):
    """One layer after attention: o_proj (+ the LoRA delta when lora_a is given), residual,
    RMS norm, the fused gate/up GEMM, SiLU-gated down projection, residual."""
    out = linear(o, w_o)
    if lora_a is not None:
        out = out + linear(linear(o, lora_a), lora_b) * lora_scale
    x = x + out
    h = rms_norm(x, ln, eps)
    gate, up = linear(h, w_gu).chunk(2, dim=-1)
    return x + linear(F.silu(gate) * up, w_down)


def _rotary_tables(cos: torch.Tensor, sin: torch.Tensor):
    """cos, sin [B, T, D] -> [B, T, 1, D] tables for _rotate, made once per forward: sin
    carries rotate_half's sign (its first half negated)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[:, :, None, :], signed[:, :, None, :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """tridiff.rotary.apply_rotary, bit for bit: rotate_half(x) * sin = [-x2, x1] * sin
    = roll(x, D/2) * [-sin1, sin2] (a sign moved between exact factors)."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


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
        self.encoder = _Encoder(config, dtype, device)
        self.diffusion_head = _Weight(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.linear_spec_lora: Optional[nn.ModuleList] = None
        if config.lora is not None:
            self._add_adapter(config.lora.rank)
        self._inv_freq = None  # rotary inverse frequencies, see inv_freq
        self._fused: dict = {}  # layer -> (parameter addresses, w_qkv, w_gate_up), see fused
        self._tables = None     # per-position rotary / query-scale tables, see _position_tables

    # ---- construction ---------------------------------------------------------------------

    def _add_adapter(self, rank: int) -> None:
        p = self.diffusion_head.weight
        self.linear_spec_lora = nn.ModuleList(
            _LoraLayer(rank, self.config, p.dtype, p.device) for _ in range(self.config.num_hidden_layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.diffusion_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.diffusion_head.weight.device

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

    def fused(self, i: int, layer: Optional[nn.Module] = None):
        """(w_qkv [q_size + 2 kv_size, hidden], w_gate_up [2 intermediate, hidden]) of layer
        i: the tensors whose row blocks are its q/k/v_proj and gate/up_proj parameters, so
        one GEMM computes q, k and v and one computes gate and up.

        The parameters keep the checkpoint names and shapes (state_dict, loading and
        init_random_ are unchanged); they are views of these tensors, so each weight is
        in memory once. Anything that gives a parameter new storage (load_state_dict with
        assign=True, param.data = ...) is noticed here by address, and the blocks are
        stacked again with the parameters re-pointed at the new tensor."""
        layer = layer if layer is not None else self.encoder.layers[i]
        a, m = layer.self_attn, layer.mlp
        qkv = (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
        gu = (m.gate_proj.weight, m.up_proj.weight)
        key = tuple(p.data_ptr() for p in qkv + gu)
        hit = self._fused.get(i)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        w_qkv, w_gu = _fuse(qkv), _fuse(gu)
        self._fused[i] = (tuple(p.data_ptr() for p in qkv + gu), w_qkv, w_gu)
        return w_qkv, w_gu

    def _position_tables(self, n: int):
        """(size >= n, cos [size, 1, D], signed sin [size, 1, D], llama-4 query scale
        [size, 1, 1]) for positions 0..size-1 in the model's dtype: the elementwise
        formulas of cos_sin/_rotary_tables and llama4_query_scale over arange(size), so
        table[p] is what they give at position p. Kept with the model, grown on demand
        (a forward then gathers three rows per token instead of ~20 small ops)."""
        t = self._tables
        if t is None or t[0] < n or t[1].dtype != self.dtype or t[1].device != self.device:
            c = self.config
            size = max(n, 2 * t[0] if t is not None else 256)
            pos = torch.arange(size, device=self.device)[None, :]
            cos, sin = _rotary_tables(*cos_sin(pos, self.inv_freq, c.attention_factor, self.dtype))
            scale = llama4_query_scale(pos, c.llama_4_scaling_beta, c.original_max_position_embeddings, self.dtype)
            t = self._tables = (size, cos[0], sin[0], scale[0])
        return t

    def _apply(self, fn, recurse=True):
        # model.to(...)/.double()/.cuda() convert every parameter on its own: stack the
        # converted blocks again right away, so memory never holds them twice for long.
        out = super()._apply(fn, recurse)
        self._fused = {}
        for i in range(len(self.encoder.layers)):
            self.fused(i)
        return out

    @property
    def has_adapter(self) -> bool:
        return self.linear_spec_lora is not None

    @classmethod
    def from_pretrained(cls, directory, *, device="cpu", dtype: Optional[torch.dtype] = None,
                        adapter: Union[str, bool, None, os.PathLike] = "auto") -> "Model":
        """Load config.json + *.safetensors (single or sharded) from `directory`.

        Tensor names and shapes are all checked from the file headers before any
        weight is read; CheckpointError names the first missing, unexpected or
        mis-shaped tensor, ConfigError the first bad config field. Weights are read
        through safetensors' memory map one tensor at a time straight into the
        preallocated parameters (converted to `dtype` on `device`).

        adapter: "auto" loads linear_spec_lora/ if present; True requires it; False or
        None skips it; a path loads the adapter from there.
        """
        directory = os.fspath(directory)
        config = ModelConfig.from_json(directory)
        found = ckpt.scan(ckpt.weight_files(directory))
        expected = ckpt.expected_shapes(config)
        ckpt.check_tensors(found, expected)

        adapter_dir, adapter_found, lora = None, None, None
        default_dir = os.path.join(directory, ckpt.ADAPTER_DIR)
        if adapter == "auto":
            adapter_dir = default_dir if os.path.isdir(default_dir) else None
        elif adapter is True:
            adapter_dir = default_dir
            if not os.path.isdir(adapter_dir):
                raise ckpt.CheckpointError(f"{ckpt.ADAPTER_DIR}: adapter=True but {adapter_dir} does not exist")
        elif adapter not in (False, None):
            adapter_dir = os.fspath(adapter)
        if adapter_dir is not None:
            lora = ckpt.read_adapter_config(adapter_dir, config)
            raw = ckpt.scan([os.path.join(adapter_dir, ckpt.ADAPTER_WEIGHTS)]) \
                if os.path.exists(os.path.join(adapter_dir, ckpt.ADAPTER_WEIGHTS)) else None
            if raw is None:
                raise ckpt.CheckpointError(f"{ckpt.ADAPTER_WEIGHTS}: missing from {adapter_dir}")
            adapter_found = {}
            for name, entry in raw.items():
                key = ckpt.normalise_adapter_key(name)
                if key in adapter_found:
                    raise ckpt.CheckpointError(f"{name}: stored twice in the adapter")
                adapter_found[key] = entry
            ckpt.check_tensors(adapter_found, ckpt.adapter_shapes(config, lora.rank), what="adapter")
            config = dataclasses.replace(config, lora=lora)

        model = cls(config, device=device, dtype=dtype)
        params = dict(model.named_parameters())
        ckpt.load_into(found, {name: params[name] for name in expected})
        if adapter_found is not None:
            by_key = {}
            for i, layer in enumerate(model.linear_spec_lora):
                by_key[ckpt.adapter_key(i, "A")] = layer.lora_A.weight
                by_key[ckpt.adapter_key(i, "B")] = layer.lora_B.weight
            # read each tensor under its stored name (it may carry another prefix)
            ckpt.load_into(raw, {name: by_key[ckpt.normalise_adapter_key(name)] for name in raw})
        return model

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
            for i, layer in enumerate(self.linear_spec_lora):
                layer.lora_A.weight.copy_(lora[ckpt.adapter_key(i, "A")])
                layer.lora_B.weight.copy_(lora[ckpt.adapter_key(i, "B")])
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
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= c.vocab_size:
                chk.fail("tokens", f"ids in [0, vocab_size={c.vocab_size})", f"an id {lo if lo < 0 else hi}")
        tables = None
        if positions is None:
            positions = cache.lens.long()[:, None] + torch.arange(T, device=tokens.device)
            # positions < lens + T <= capacity + T: every one is in the tables
            tables = self._position_tables(cache.capacity + T)
        else:
            chk.tensor("positions", positions, ndim=2, dtypes=chk.INDEX_DTYPES, device=self.device)
            chk.shape("positions", positions, (B, T))
            if chk.values_checkable(positions) and T and B and int(positions.min()) < 0:
                chk.fail("positions", "non-negative positions", int(positions.min()))
            positions = positions.long()

        write = kv != "none"
        if write and cache.paged:   # a contiguous cache has nothing to reserve
            n_new = q_lens if q_lens is not None else T
            if isinstance(n_new, torch.Tensor):
                n_new = n_new.to(torch.int32)
            cache.reserve_(cache.lens + n_new, backend=backend)

        use_lora = adapter and self.has_adapter
        dtype = self.dtype
        if tables is not None:   # rows of the per-position tables (3 gathers)
            cos, sin, q_scale = (t[positions] for t in tables[1:])
        else:
            cos, sin = _rotary_tables(*cos_sin(positions, self.inv_freq, c.attention_factor, dtype))
            q_scale = llama4_query_scale(positions, c.llama_4_scaling_beta, c.original_max_position_embeddings,
                                         dtype)

        heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        eps, lora_scale = c.rms_norm_eps, (c.lora.scale if use_lora else 0.0)
        x = F.embedding(tokens, self.encoder.embed_tokens.weight)
        attention = None   # one ops.attention plan serves every layer (checked once)
        for i, layer in enumerate(self.encoder.layers):
            w_qkv, w_gu = self.fused(i, layer)
            q, k, v = attention_inputs(x, layer.input_layernorm.weight, w_qkv, cos, sin, q_scale, eps, heads)
            k_cache, v_cache = cache.layer(i)
            if attention is None:
                attention = attention_plan(q, k, v, k_cache, v_cache, cache.lens, modes,
                                           mode_args=mode_args, q_lens=q_lens,
                                           block_table=cache.block_table, write_kv=write,
                                           backend=backend)
            o = attention(q, k, v, k_cache, v_cache).reshape(B, T, c.q_size)
            lora_a = lora_b = None
            if use_lora:
                lora = self.linear_spec_lora[i]
                lora_a, lora_b = lora.lora_A.weight, lora.lora_B.weight
            x = block_output(x, o, layer.self_attn.o_proj.weight, lora_a, lora_b, lora_scale,
                             layer.post_attention_layernorm.weight, w_gu, layer.mlp.down_proj.weight, eps)
        x = rms_norm(x, self.encoder.norm.weight, c.rms_norm_eps)
        logits = linear(x, self.diffusion_head.weight)

        if kv == "commit":
            cache.commit_(q_lens if q_lens is not None else T, backend=backend)
        return logits.to(torch.float64 if dtype == torch.float64 else torch.float32)
