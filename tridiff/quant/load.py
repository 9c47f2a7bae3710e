"""Building a model with packed (GPTQ) or bf16 projection weights, without ever holding a
full-precision copy of them.

The model is constructed on the meta device (no memory), then every tensor gets real
storage of its final dtype and is filled from the memory-mapped file one at a time
(tridiff.checkpoint.load_into):
  * GPTQ: the seven projections of each layer become PackedLinear (codes, fp16 scales,
    zero points as stored); the fused q/k/v and gate/up groups are concatenated once;
    embeddings, norms and the drafter LoRA take the activation dtype; the head keeps the
    checkpoint's dtype where that is narrower (bf16/fp16: it is the largest weight of
    the model) and is multiplied by tridiff.quant.packed.mixed_linear.
  * bf16 (weights="bf16" of from_pretrained): projections and head in bf16, the rest
    (embeddings, norms, LoRA) in the activation dtype.
A GPTQ model's projections take float activations unless set_activations (or
from_pretrained's activations="int8") makes them round their input to int8 (w4a8).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from tridiff import checkpoint as ckpt
from tridiff.quant.config import HEAD, PACKED_SUFFIXES, PROJECTIONS, QuantConfig, projection_shapes
from tridiff.quant.gptq import default_g_idx
from tridiff.quant.packed import PackedLinear, check_activations

WEIGHT_FORMATS = ("full", "bf16")
HALF = (torch.float16, torch.bfloat16)
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I32": torch.int32, "I64": torch.int64}


def stored_dtypes(found: dict, names) -> dict:
    """name -> the dtype its safetensors header declares (headers only)."""
    from safetensors import safe_open

    by_file: dict = {}
    for name in names:
        by_file.setdefault(found[name][0], []).append(name)
    out = {}
    for path, group in by_file.items():
        with safe_open(path, framework="pt") as fh:
            for name in group:
                out[name] = _ST_DTYPES.get(fh.get_slice(name).get_dtype())
    return out


def _real(module: nn.Module, dtype, device) -> None:
    """Give a Weight module (on meta) real, uninitialised storage."""
    shape = module.weight.shape
    module.weight = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


def _default_dtype(device, dtype):
    from tridiff.model import default_dtype   # the model's own default (fp32 on CPU)

    return dtype or default_dtype(device)


def _plain_targets(model, device, dtype, head_dtype, packed_head: bool = False) -> dict:
    """Real storage for everything but the projections (and a packed head); name ->
    parameter to fill."""
    enc = model.encoder
    _real(enc.embed_tokens, dtype, device)
    _real(enc.norm, dtype, device)
    if not packed_head:
        _real(model.diffusion_head, head_dtype, device)
    for layer in enc.layers:
        _real(layer.input_layernorm, dtype, device)
        _real(layer.post_attention_layernorm, dtype, device)
    if model.has_adapter:
        for lora in model.linear_spec_lora:
            _real(lora.lora_A, dtype, device)
            _real(lora.lora_B, dtype, device)
    targets = {"encoder.embed_tokens.weight": enc.embed_tokens.weight, "encoder.norm.weight": enc.norm.weight}
    if not packed_head:
        targets[f"{HEAD}.weight"] = model.diffusion_head.weight
    for i, layer in enumerate(enc.layers):
        for name in ("input_layernorm", "post_attention_layernorm"):
            targets[f"encoder.layers.{i}.{name}.weight"] = getattr(layer, name).weight
    return targets


def _load_adapter(model, found) -> None:
    if found.adapter is not None:
        by_key = model._adapter_params()
        ckpt.load_into(found.adapter, {name: by_key[ckpt.normalise_adapter_key(name)] for name in found.adapter})


def _projection(layer, name: str):
    group, proj = name.split(".")
    return getattr(layer, group), proj


def check_packed(found: dict, qc: QuantConfig, config) -> None:
    """Before any code is read: the packed tensors' stored dtypes, then every g_idx (small)
    equal to k // group_size (act-order g_idx refused)."""
    names = [n for n in found if n.rsplit(".", 1)[-1] in ("qweight", "qzeros", "g_idx")]
    for name, dt in stored_dtypes(found, names).items():
        if dt != torch.int32:
            raise ckpt.CheckpointError(f"{name}: expected int32 (GPTQ packing), got {dt}")
    scales = [n for n in found if n.endswith(".scales")]
    for name, dt in stored_dtypes(found, scales).items():
        if dt not in HALF + (torch.float32,):
            raise ckpt.CheckpointError(f"{name}: expected fp16/bf16/fp32 scales, got {dt}")
    shapes = projection_shapes(config)
    packed = {f"encoder.layers.{i}.{name}": shapes[name][1] for i in range(config.num_hidden_layers)
              for name in PROJECTIONS}
    if qc.lm_head:
        packed[HEAD] = config.hidden_size
    want = {}
    for prefix, K in packed.items():
        g = qc.group_of(K)
        ref = want.setdefault((K, g), default_g_idx(K, g))
        got = torch.empty(K, dtype=torch.int32)
        ckpt.load_into(found, {f"{prefix}.g_idx": got})
        if not torch.equal(got, ref):
            k = int((got != ref).nonzero()[0])
            raise ckpt.CheckpointError(f"{prefix}.g_idx: expected k // group_size "
                                       f"(inputs in order, desc_act=false), got {int(got[k])} at k={k}")


def build_model(config, weights, *, device="cpu", dtype: Optional[torch.dtype] = None,
                head_dtype: Optional[torch.dtype] = None, scale_dtype=torch.float16, cls=None):
    """(model, targets): a Model with real, uninitialised storage in weight format `weights`
    ("bf16" or a QuantConfig) and {checkpoint name: tensor to fill}; cls: a Model class.
    Built on the meta device first, so no full-precision projection is ever allocated. head_dtype:
    default bf16 for "bf16", the activation dtype otherwise."""
    from tridiff.model import Model

    dtype = _default_dtype(device, dtype)
    model = (cls or Model)(config, device="meta", dtype=dtype)
    bf16 = weights == "bf16"
    packed_head = not bf16 and weights.lm_head
    targets = _plain_targets(model, device, dtype, head_dtype or (torch.bfloat16 if bf16 else dtype), packed_head)
    if packed_head:   # diffusion_head as one more packed projection [V, H]
        V, H = config.vocab_size, config.hidden_size
        sd = scale_dtype(HEAD) if callable(scale_dtype) else scale_dtype
        model.diffusion_head = PackedLinear(H, V, weights.bits, weights.group_of(H), zero_format=weights.zero_format,
                                            device=device, scale_dtype=sd)
        for suffix in PACKED_SUFFIXES:
            targets[f"{HEAD}.{suffix}"] = getattr(model.diffusion_head, suffix)
    shapes = projection_shapes(config)
    for i, layer in enumerate(model.encoder.layers):
        if bf16:   # q/k/v and gate/up as row blocks of one tensor each (tridiff.layers)
            for group, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                                 (layer.mlp, ("gate_proj", "up_proj"))):
                parts = [getattr(group, n) for n in names]
                rows = [p.weight.shape[0] for p in parts]
                whole = torch.empty(sum(rows), parts[0].weight.shape[1], dtype=torch.bfloat16, device=device)
                for part, block in zip(parts, whole.split(rows, dim=0)):
                    part.weight = nn.Parameter(block, requires_grad=False)
                group._fused = None
            _real(layer.self_attn.o_proj, torch.bfloat16, device)
            _real(layer.mlp.down_proj, torch.bfloat16, device)
        for name in PROJECTIONS:
            parent, proj = _projection(layer, name)
            prefix = f"encoder.layers.{i}.{name}"
            if bf16:
                targets[f"{prefix}.weight"] = getattr(parent, proj).weight
                continue
            N, K = shapes[name]
            sd = scale_dtype(prefix) if callable(scale_dtype) else scale_dtype
            packed = PackedLinear(K, N, weights.bits, weights.group_of(K), zero_format=weights.zero_format,
                                  device=device, scale_dtype=sd)
            setattr(parent, proj, packed)
            for suffix in PACKED_SUFFIXES:
                targets[f"{prefix}.{suffix}"] = getattr(packed, suffix)
    model.weight_format = "bf16" if bf16 else weights.name
    if not bf16:
        model.quantization = weights
    return model, targets


def finish(model) -> None:
    """After the tensors are filled: stack q/k/v and gate/up once (packed: concatenated,
    on CPU straight into the C++ panels' layout) and lay o/down's codes out for CPU
    (tridiff.quant.packed: same values, one copy)."""
    for layer in model.encoder.layers:
        layer.self_attn._fused = None
        layer.mlp._fused = None
        layer.self_attn.fused_weight()
        layer.mlp.fused_weight()
        for module in (layer.self_attn.o_proj, layer.mlp.down_proj):
            if isinstance(module, PackedLinear):
                module.cpu_layout_()
    if isinstance(model.diffusion_head, PackedLinear):
        model.diffusion_head.cpu_layout_()


def set_activations(model, activations: str):
    """How the model's packed projections take their input: "float" (ops.quant_linear,
    w4a16) or "int8" (ops.quant_linear_a8: rounded per row and group, integer products;
    CPU only). The codes are laid out once for the new panels (tridiff.quant.packed) and
    the fused groups rebuilt; returns the model. Refused (ValueError, nothing changed) for
    a model without packed projections, or "int8" off the CPU."""
    check_activations(activations, model.device)
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    if activations == "int8" and not packed:
        raise ValueError(f"activations: 'int8' rounds the input of int4 (GPTQ) projections; this model's "
                         f"weights are {model.weight_format!r}")
    for m in packed:
        if m.activations != activations:
            m.qweight = m.qweight.contiguous()   # its own codes, out of the fused group's tensor
            m.activations = activations
    if packed:
        finish(model)
    model.activations = activations
    return model


def load_model(cls, found, *, device="cpu", dtype: Optional[torch.dtype] = None):
    """A Model from an opened GPTQ checkpoint (tridiff.checkpoint.Checkpoint with .quant
    set): names, shapes, dtypes and g_idx checked before any code is read."""
    qc: QuantConfig = found.quant
    config = found.config
    check_packed(found.weights, qc, config)
    dtype = _default_dtype(device, dtype)
    head_dtype = dtype
    if not qc.lm_head:   # a half-precision head stays half (the largest weight of the model)
        head_stored = stored_dtypes(found.weights, [f"{HEAD}.weight"])[f"{HEAD}.weight"]
        head_dtype = head_stored if head_stored in HALF and dtype not in HALF else dtype
    scale_dtypes = stored_dtypes(found.weights, [n for n in found.weights if n.endswith(".scales")])
    model, targets = build_model(config, qc, device=device, dtype=dtype, head_dtype=head_dtype,
                                 scale_dtype=lambda prefix: scale_dtypes[f"{prefix}.scales"], cls=cls)
    ckpt.load_into(found.weights, targets)
    _load_adapter(model, found)
    finish(model)
    return model


def from_pretrained(directory, *, weights: str = "full", device="cpu", dtype: Optional[torch.dtype] = None,
                    adapter: Union[str, bool, None, os.PathLike] = "auto", activations: str = "float"):
    """tridiff.model.Model.from_pretrained with a weight format: "full" (as it), "bf16"
    (projections and head held in bf16, computed with fp32 accumulation in the
    activation dtype `dtype`). A GPTQ checkpoint loads packed whatever `weights` says
    ("full"), and refuses another. activations: set_activations's, for a GPTQ checkpoint."""
    from tridiff.model import Model

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights: expected one of {WEIGHT_FORMATS}, got {weights!r}")
    check_activations(activations, device)
    if weights == "full":
        return Model.from_pretrained(directory, device=device, dtype=dtype, adapter=adapter, activations=activations)
    if activations != "float":
        raise ValueError(f"activations: {activations!r} applies to int4 (GPTQ) checkpoints, not weights={weights!r}")
    found = ckpt.open_checkpoint(directory, adapter)
    if found.quant is not None:
        raise ValueError(f"weights: {weights!r} asked for a {found.quant.name} GPTQ checkpoint (load it as it is)")
    model, targets = build_model(found.config, weights, device=device, dtype=dtype)
    ckpt.load_into(found.weights, targets)
    _load_adapter(model, found)
    finish(model)
    return model
