"""`tridiff export-gguf [--type q4_0|f16|bf16|f32] IN OUT.gguf`: a tridiff checkpoint's AR
network as a llama.cpp GGUF file (architecture "llama"), so that llama.cpp runs the
same network (bench/bench_llamacpp.py compares the two).

What is written (the `gguf` package from PyPI writes the file, one tensor at a time):
- tensors: token_embd (encoder.embed_tokens), per layer attn_norm, attn_q/k/v,
  attn_output, ffn_norm, ffn_gate/up/down, then output_norm (encoder.norm) and output
  (diffusion_head, tridiff's LM head). Norms stay F32; the 2-D weights take the chosen
  type (Q4_0: gguf's round-to-nearest blocks of 32 weights, an fp16 scale and 4-bit
  codes; the head may be given another type, e.g. F16, with head_type).
- q/k rows permuted per head: tridiff rotates (x_j, x_{j+D/2}) pairs (rotate-half, as
  transformers does); llama.cpp's "llama" rotary rotates adjacent pairs (x_{2j},
  x_{2j+1}). Moving row j + D/2 of every head next to row j gives llama.cpp the same
  rotated q and k up to one permutation of each head's dimensions, shared by q and k,
  so every q.k score (and so the network) is unchanged.
- rope: YaRN written as llama.cpp reads it for this architecture (rope.scaling.type
  "yarn", factor, original_context_length); llama.cpp multiplies cos/sin by
  attn_factor * (1 + 0.1 ln factor) for factor > 1 (its yarn_attn_factor rule), so
  rope.scaling.attn_factor is tridiff's attention factor divided by that. llama.cpp
  reads no beta_fast/beta_slow for "llama" (it uses 32 and 1) and always truncates the
  correction range, so other values are refused. Same inverse frequencies and ramp as
  tridiff.rotary.yarn_inv_freq, in float32 on both sides.
- the llama-4 query scale 1 + beta ln(1 + floor(p / original_max_position_embeddings))
  has no GGUF key for "llama": it is exactly 1 below original_max_position_embeddings,
  so the file's context_length is that (where beta != 0): the network is tridiff's for
  every position below it, not beyond.
- vocabulary: tokenizer model "none" with vocab_size dummy tokens: llama.cpp then takes
  token ids, not text (tridiff's tokenizer is not converted).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch

from tridiff import checkpoint as ckpt
from tridiff._checks import TridiffInputError
from tridiff.config import ModelConfig

TYPES = ("f32", "f16", "bf16", "q4_0")
ARCH = "llama"
Q4_0_BLOCK = 32
# llama.cpp's YaRN for the "llama" architecture: beta_fast/beta_slow are not read from the
# file (these defaults apply) and the correction range is always floored/ceiled.
LLAMA_CPP_BETA_FAST, LLAMA_CPP_BETA_SLOW = 32.0, 1.0


class GGUFExportError(TridiffInputError):
    """The checkpoint or the requested type cannot be written as a llama.cpp GGUF."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFExportError("export-gguf needs the `gguf` package (pip install gguf, or tridiff[bench])") from None
    return gguf


def _qtype(gguf, name: str):
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q4_0": gguf.GGMLQuantizationType.Q4_0}[name]


def tensor_names(config: ModelConfig) -> dict[str, str]:
    """tridiff checkpoint name -> GGUF tensor name, in the order the file holds them."""
    names = {"encoder.embed_tokens.weight": "token_embd.weight"}
    per_layer = (("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                 ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                 ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
                 ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"))
    for i in range(config.num_hidden_layers):
        for ours, theirs in per_layer:
            names[f"encoder.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    names["encoder.norm.weight"] = "output_norm.weight"
    names["diffusion_head.weight"] = "output.weight"
    return names


def interleave_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection [heads * D, K] reordered per head from rotate-half
    pairs (j, j + D/2) to adjacent pairs (2j, 2j + 1): new row 2j is old row j, new row
    2j + 1 is old row j + D/2."""
    rows = w.shape[0]
    if rows % (2 * heads):
        raise GGUFExportError(f"w: expected rows divisible by 2 * heads={2 * heads}, got {rows}")
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def yarn_mscale(factor: float) -> float:
    """The cos/sin multiplier llama.cpp applies itself for YaRN: 1 + 0.1 ln factor above 1."""
    return 1.0 if factor <= 1 else 1.0 + 0.1 * math.log(factor)


def rope_metadata(config: ModelConfig) -> dict:
    """The rope values written (checked expressible first)."""
    if not config.rope_truncate:
        raise GGUFExportError("rope_parameters.truncate: llama.cpp always truncates the YaRN correction range; "
                              "expected true, got false")
    for name, want in (("beta_fast", LLAMA_CPP_BETA_FAST), ("beta_slow", LLAMA_CPP_BETA_SLOW)):
        if getattr(config, name) != want:
            raise GGUFExportError(f"rope_parameters.{name}: llama.cpp's llama architecture uses {want} and reads "
                                  f"no other value; got {getattr(config, name)}")
    context = config.max_position_embeddings
    if config.llama_4_scaling_beta != 0:
        context = min(context, config.original_max_position_embeddings)
    return {"freq_base": float(config.rope_theta), "factor": float(config.factor),
            "original_context_length": int(config.original_max_position_embeddings),
            "attn_factor": config.attention_factor / yarn_mscale(config.factor), "context_length": int(context)}


def tensor_type(gguf_name: str, wtype: str, head_type: Optional[str]) -> str:
    if gguf_name.endswith("norm.weight"):
        return "f32"
    if gguf_name == "output.weight" and head_type is not None:
        return head_type
    return wtype


def _check_types(config: ModelConfig, wtype: str, head_type: Optional[str]) -> None:
    if wtype not in TYPES:
        raise GGUFExportError(f"type: expected one of {TYPES}, got {wtype!r}")
    if head_type is not None and head_type not in TYPES:
        raise GGUFExportError(f"head_type: expected one of {TYPES} or None, got {head_type!r}")
    if "q4_0" in (wtype, head_type):
        for name in ("hidden_size", "intermediate_size", "q_size"):   # the row lengths (K) of the 2-D weights
            if getattr(config, name) % Q4_0_BLOCK:
                raise GGUFExportError(f"{name}: Q4_0 needs rows of a multiple of {Q4_0_BLOCK} weights, "
                                      f"got {getattr(config, name)}")


def encode(t: torch.Tensor, wtype: str):
    """The numpy array stored for tensor `t` in GGUF type `wtype` (quantized types as
    bytes, [rows, bytes per row])."""
    import numpy as np

    gguf = _gguf()
    a = t.detach().to(torch.float32).contiguous().numpy()
    if wtype == "f32":
        return a
    if wtype == "f16":
        return a.astype(np.float16)
    return gguf.quants.quantize(a, _qtype(gguf, wtype))


def write_gguf(path, config: ModelConfig, tensor: Callable[[str], torch.Tensor], wtype: str = "f16", *,
               head_type: Optional[str] = None, name: str = "tridiff") -> dict[str, str]:
    """Write the GGUF file `path` of the network `config` whose weights `tensor(name)`
    returns by tridiff checkpoint name (called once per tensor, in file order, so a
    caller can read or make them one at a time). Returns {GGUF tensor name: type}."""
    gguf = _gguf()
    if not isinstance(config, ModelConfig):
        raise GGUFExportError(f"config: expected a tridiff.config.ModelConfig, got {type(config).__name__}")
    _check_types(config, wtype, head_type)
    rope = rope_metadata(config)
    shapes = ckpt.expected_shapes(config)
    names = tensor_names(config)
    types = {theirs: tensor_type(theirs, wtype, head_type) for theirs in names.values()}

    w = gguf.GGUFWriter(os.fspath(path), ARCH)
    w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[wtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(rope["context_length"])
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(rope["freq_base"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_context_length"])
    w.add_rope_scaling_attn_factors(rope["attn_factor"])
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("none")
    w.add_bos_token_id(config.bos_token_id)
    w.add_eos_token_id(config.eos_token_id)

    for ours, theirs in names.items():   # sizes known before any weight is read
        qtype = _qtype(gguf, types[theirs])
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor_info(theirs, shapes[ours], _np_dtype(types[theirs]), math.prod(shapes[ours]) // block * block_bytes,
                          raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        attn = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        for ours, theirs in names.items():
            t = tensor(ours)
            if tuple(t.shape) != tuple(shapes[ours]):
                raise GGUFExportError(f"{ours}: expected shape {list(shapes[ours])}, got {list(t.shape)}")
            kind = theirs.split(".")[-2]
            if kind in attn:
                t = interleave_rope_rows(t, attn[kind])
            w.write_tensor_data(encode(t, types[theirs]))
    except BaseException:
        w.close()
        os.remove(os.fspath(path))   # no half-written file is left behind
        raise
    w.close()
    return types


def _np_dtype(wtype: str):
    """The element dtype gguf's writer is told (it reads the shape as elements unless uint8)."""
    import numpy as np

    return {"f32": np.float32, "f16": np.float16}.get(wtype, np.float32)


def export_checkpoint(src, dst, wtype: str = "q4_0", *, head_type: Optional[str] = None) -> dict[str, str]:
    """Write checkpoint directory `src` (full precision) as the GGUF file `dst`, reading
    one tensor at a time (memory-mapped)."""
    from safetensors import safe_open

    found = ckpt.open_checkpoint(src, adapter=False)
    if found.quant is not None:
        raise GGUFExportError(f"IN: {src} is GPTQ-quantized ({found.quant.name}); export-gguf reads full-precision "
                              f"checkpoints (export the one it was quantized from)")
    if os.path.isdir(os.fspath(dst)):
        raise GGUFExportError(f"OUT: expected a file path, got the directory {dst}")

    def read(name: str) -> torch.Tensor:
        with safe_open(found.weights[name][0], framework="pt") as fh:
            return fh.get_tensor(name)

    return write_gguf(dst, found.config, read, wtype, head_type=head_type,
                      name=os.path.basename(os.path.normpath(os.fspath(src))))


def add_arguments(parser) -> None:
    parser.add_argument("--type", dest="wtype", choices=TYPES, default="q4_0", help="type of the 2-D weights")
    parser.add_argument("--head-type", choices=TYPES, default=None, help="type of the LM head (default: --type)")
    parser.add_argument("src", metavar="IN", help="checkpoint directory (or bundled model name)")
    parser.add_argument("dst", metavar="OUT", help="output .gguf file")


def main(args, src: str) -> int:
    types = export_checkpoint(src, args.dst, args.wtype, head_type=args.head_type)
    head = types["output.weight"]
    print(f"wrote {args.dst} (llama architecture, {args.wtype}" + (f", head {head}" if head != args.wtype else "")
          + f", {len(types)} tensors)")
    return 0
