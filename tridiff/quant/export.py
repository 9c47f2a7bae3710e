"""`tridiff quantize --bits 4 --group 128 IN OUT`: a GPTQ-layout copy of a tridiff
checkpoint, quantized round-to-nearest (tridiff.quant.gptq.quantize_rtn).

The seven projections of every layer become qweight / qzeros (v1 "gptq" zero points, as
GPTQModel and AutoGPTQ write them) / scales (fp16) / g_idx; so does the head with
--lm-head (GPTQModel's lm_head=true); embeddings, norms (and the head without it) are
copied as stored; config.json gains "quantization_config" and quantize_config.json
holds the same (tridiff.quant.config.QuantConfig.to_json); the drafter LoRA directory
(linear_spec_lora/) and the other files (tokenizer.json, ...) are copied unchanged, so
the LoRA stays in full precision. One tensor is read at a time (memory-mapped).
"""
from __future__ import annotations

import json
import os
import shutil

from tridiff import checkpoint as ckpt
from tridiff.quant.config import HEAD, PROJECTIONS, QUANT_CONFIG_FILE, QuantConfig, packed_shapes, projection_shapes
from tridiff.quant.gptq import BITS, quantize_rtn


def quantize_checkpoint(src, dst, *, bits: int = 4, group_size: int = 128, sym: bool = True,
                        lm_head: bool = False) -> QuantConfig:
    """Write the quantized copy of checkpoint `src` to directory `dst` (created; must not
    hold a checkpoint already); lm_head: pack the head too. Returns the QuantConfig written."""
    from safetensors import safe_open

    src, dst = os.fspath(src), os.fspath(dst)
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits: expected one of {BITS}, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise ValueError(f"group: expected a positive int or -1 (per channel), got {group_size!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("OUT: expected a directory other than IN")
    if os.path.exists(os.path.join(dst, "config.json")):
        raise ValueError(f"OUT: {dst} already holds a checkpoint (config.json)")
    found = ckpt.open_checkpoint(src, adapter=False)
    if found.quant is not None:
        raise ValueError(f"IN: {src} is already quantized ({found.quant.name})")
    qc = QuantConfig(bits=bits, group_size=group_size, sym=sym, zero_format="gptq", source="tridiff quantize",
                     lm_head=bool(lm_head))
    config = found.config
    shapes = projection_shapes(config)
    if qc.lm_head:
        shapes[HEAD] = (config.vocab_size, config.hidden_size)
    for name, (N, K) in shapes.items():   # every shape packs, before anything is written
        packed_shapes(N, K, qc, name)

    out = {}
    quantized = {f"encoder.layers.{i}.{name}.weight" for i in range(config.num_hidden_layers) for name in PROJECTIONS}
    if qc.lm_head:
        quantized.add(f"{HEAD}.weight")
    for name, (path, _) in found.weights.items():
        with safe_open(path, framework="pt") as fh:
            t = fh.get_tensor(name)
        if name in quantized:
            q = quantize_rtn(t, bits, group_size, sym=sym, zero_format="gptq")
            prefix = name[:-len(".weight")]
            out.update({f"{prefix}.qweight": q.qweight, f"{prefix}.qzeros": q.qzeros, f"{prefix}.scales": q.scales,
                        f"{prefix}.g_idx": q.g_idx})
        else:
            out[name] = t
    os.makedirs(dst, exist_ok=True)
    _copy_other_files(src, dst)
    with open(os.path.join(src, "config.json")) as fh:
        raw = json.load(fh)
    raw["quantization_config"] = qc.to_json()
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(raw, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(dst, QUANT_CONFIG_FILE), "w") as fh:
        json.dump(qc.to_json(), fh, indent=2)
        fh.write("\n")
    ckpt.save_safetensors(out, os.path.join(dst, ckpt.SINGLE_FILE))
    return qc


def _copy_other_files(src: str, dst: str) -> None:
    """Everything but the weights and the config: tokenizer, demo prompts, the LoRA dir."""
    for entry in os.listdir(src):
        if entry.endswith(".safetensors") or entry in ("config.json", ckpt.INDEX_FILE, QUANT_CONFIG_FILE):
            continue
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.isdir(s):
            if entry == ckpt.ADAPTER_DIR:
                shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)


def add_arguments(parser) -> None:
    parser.add_argument("--bits", type=int, choices=BITS, default=4)
    parser.add_argument("--group", type=int, default=128, help="group size along the input features; -1: per channel")
    parser.add_argument("--asym", action="store_true", help="asymmetric (zero points per group); default symmetric")
    parser.add_argument("--lm-head", action="store_true", help="pack the head too (GPTQModel's lm_head=true)")
    parser.add_argument("src", metavar="IN", help="checkpoint directory (or bundled model name)")
    parser.add_argument("dst", metavar="OUT", help="output directory")


def main(args, src: str) -> int:
    qc = quantize_checkpoint(src, args.dst, bits=args.bits, group_size=args.group, sym=not args.asym,
                             lm_head=args.lm_head)
    print(f"wrote {qc.name} ({'symmetric' if qc.sym else 'asymmetric'}{', head packed' if qc.lm_head else ''}) "
          f"GPTQ checkpoint to {args.dst}")
    return 0
