"""Command line: `tridiff generate ...` and `tridiff demo` (also `python -m tridiff`).

    tridiff generate (--prompt TEXT | --prompt-ids 1,2,3 [--prompt-ids ...]) [--model DIR|NAME]
                     [--mode {ar,diffusion,linear-spec,quadratic-spec}] [--max-new-tokens N]
                     [--block-length L] [--threshold X] [--temperature T] [--seed S]
                     [--anchors K | --anchors 0,1,3,7] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                     [--activations float|int8] [--no-adapter] [--json]
    tridiff demo [--model DIR|NAME] [--max-new-tokens N] [--no-adapter]
    tridiff quantize [--bits 4|8] [--group 128|64|-1] [--asym] [--lm-head] IN OUT   (GPTQ layout; tridiff.quant)
    tridiff export-gguf [--type q4_0|f16|bf16|f32] [--head-type T] IN OUT.gguf   (llama.cpp; tridiff.quant.gguf)
    tridiff serve [--model DIR|NAME] [--host H] [--port N] [--max-rows R] [--max-queue Q]
                  [--strategy auto|ar|...] [...]   (OpenAI-compatible HTTP; tridiff.serve)

--model defaults to the bundled trained model (tridiff.models.DEFAULT), --mode to
linear-spec.

--json prints exactly one JSON object (other tools parse it):
    {"mode", "results": [{"prompt_ids", "tokens", "text", "nfe", "tokens_per_forward",
     "mean_accepted"}], "seconds", "device", "dtype"}
Bad arguments exit with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_THRESHOLD = {"diffusion": 0.9, "linear-spec": 0.0}
MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")


class UsageError(Exception):
    """A bad argument: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="tridiff", description="Decoding for tri-mode (AR / diffusion / "
                                              "self-speculative) language models.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate from a checkpoint directory")
    g.add_argument("--model", default=None, help="checkpoint directory (config.json + *.safetensors) or the "
                                                 "name of a bundled model (default: the bundled one)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append",
                     help="text prompt (needs tokenizer.json); repeat for a batch")
    src.add_argument("--prompt-ids", action="append", type=_ids,
                     help="comma-separated token ids; repeat for a batch")
    g.add_argument("--mode", default="linear-spec", choices=MODES)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--block-length", type=int, default=None, help="default: the model's block_size (config.json)")
    g.add_argument("--threshold", type=float, default=None,
                   help="diffusion confidence threshold (default 0.9) / linear draft threshold (default 0)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--rule", choices=("lossless", "reference"), default="lossless",
                   help="linear-spec acceptance at temperature > 0")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--anchors", type=_anchors, default=None,
                   help="quadratic-spec: prune its forward to K anchors per iteration, or to the fixed "
                        "comma-separated set (default: every acceptance length)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default: the model's own choice for the device")
    g.add_argument("--activations", choices=("float", "int8"), default="float",
                   help="int4 (GPTQ) checkpoints: int8 rounds the projections' input per group (CPU, w4a8)")
    g.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "cuda", "cpp", "sdpa"),
                   help="the ops' backend (auto: the fastest that serves each call; sdpa: CPU attention)")
    g.add_argument("--eos-check-every", type=int, default=1)
    g.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default="auto",
                   help="replay each AR / self-speculation iteration as a CUDA graph: auto = on for a "
                        "CUDA model (falls back to eager with a warning), on = required, off = eager")
    g.add_argument("--no-adapter", action="store_true",
                   help="draft without the checkpoint's drafter LoRA (linear_spec_lora; on by default)")
    g.add_argument("--json", action="store_true", help="print one JSON object")

    d = sub.add_parser("demo", help="complete held-out Python prompts with the bundled model in all four modes")
    d.add_argument("--model", default=None, help="checkpoint directory or bundled model name (default: bundled)")
    d.add_argument("--max-new-tokens", type=int, default=64, help="a multiple of the model's block_size")
    d.add_argument("--no-adapter", action="store_true", help="load the model without its drafter LoRA")

    q = sub.add_parser("quantize", help="write a GPTQ-layout int4/int8 copy of a checkpoint (round-to-nearest)")
    from tridiff.quant.export import add_arguments as quantize_arguments

    quantize_arguments(q)

    e = sub.add_parser("export-gguf", help="write a checkpoint's AR network as a llama.cpp GGUF (pip install gguf)")
    from tridiff.quant.gguf import add_arguments as gguf_arguments

    gguf_arguments(e)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server over the engine (pip install tridiff[serve])")
    from tridiff.serve.options import add_arguments  # argparse only: no web stack imported here

    add_arguments(s)
    return top


def _ids(text: str):
    try:
        ids = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


def _anchors(text: str):
    """--anchors: an int K, or a comma-separated anchor set (a tuple; generate checks both)."""
    try:
        return tuple(_ids(text)) if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int K or comma-separated anchors, got {text!r}")


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "demo":
            from tridiff.demo import run_demo

            return run_demo(_resolve_model(args.model), args.max_new_tokens, adapter=not args.no_adapter)
        if args.command == "quantize":
            from tridiff.quant.export import main as quantize_main

            return quantize_main(args, _resolve_model(args.src))
        if args.command == "export-gguf":
            from tridiff.quant.gguf import main as gguf_main

            return gguf_main(args, _resolve_model(args.src))
        if args.command == "serve":
            from tridiff.serve.options import serve_main

            return serve_main(args, _resolve_model(args.model))
        return _generate(args)
    except UsageError as exc:
        print(str(exc).splitlines()[0] if str(exc) else "tridiff: bad arguments", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, RuntimeError) as exc:  # TridiffInputError is a ValueError
        if isinstance(exc, RuntimeError) and not _refusal(exc):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"tridiff: error: {msg}", file=sys.stderr)
        return 2


def _refusal(exc: RuntimeError) -> bool:
    """A backend that cannot serve (--backend, TRIDIFF_BACKEND): a bad argument, not a bug."""
    from tridiff._dispatch import BackendUnavailable

    return isinstance(exc, BackendUnavailable)


def _resolve_model(model) -> str:
    """A checkpoint directory, else the name of a bundled model; None: the default one."""
    from tridiff import models

    if model is None:
        return models.path()
    if os.path.isdir(model) or os.sep in model or model.startswith("."):
        return model
    return models.path(model) if model in models.available() else model


def _load(model_dir, device, dtype, activations="float"):
    import torch

    from tridiff.model import Model

    if not os.path.isdir(model_dir):
        raise UsageError(f"tridiff: error: --model: no such directory: {model_dir}")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UsageError(f"tridiff: error: --model: {model_dir} has no config.json")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("tridiff: error: --device cuda: no CUDA device is available")
    torch_dtype = getattr(torch, dtype) if dtype else None
    if activations != "float":
        from tridiff import checkpoint as ckpt

        if ckpt.open_checkpoint(model_dir, adapter=False).quant is None:
            raise UsageError(f"tridiff: error: --activations {activations}: applies to int4 (GPTQ) checkpoints; "
                             f"{model_dir} holds full-precision weights")
        if device != "cpu":
            raise UsageError(f"tridiff: error: --activations {activations}: a CPU path (use --device cpu)")
    return Model.from_pretrained(model_dir, device=device, dtype=torch_dtype, activations=activations)


def _tokenizer(model_dir):
    if not os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        return None
    from tridiff.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(model_dir)


def _generate(args) -> int:
    import torch

    from tridiff.generate import generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.model = _resolve_model(args.model)
    model = _load(args.model, device, args.dtype, args.activations)
    _warm_imports()
    tok = _tokenizer(args.model)
    if args.prompt is not None:
        if tok is None:
            raise UsageError(f"tridiff: error: --prompt needs {os.path.join(args.model, 'tokenizer.json')};"
                             " use --prompt-ids")
        prompts = [tok.encode(p) for p in args.prompt]
    else:
        prompts = args.prompt_ids
    threshold = args.threshold if args.threshold is not None else DEFAULT_THRESHOLD.get(args.mode)
    out = generate(model, prompts, mode=args.mode, max_new_tokens=args.max_new_tokens,
                   block_length=args.block_length, threshold=threshold, temperature=args.temperature,
                   rule=args.rule, seed=args.seed, backend=args.backend,
                   eos_check_every=args.eos_check_every, anchors=args.anchors, adapter=not args.no_adapter,
                   cuda_graphs={"auto": None, "on": True, "off": False}[args.cuda_graphs])
    rows = [{"prompt_ids": r.prompt_ids, "tokens": r.tokens,
             "text": tok.decode(r.tokens) if tok is not None else None,
             "nfe": r.nfe, "tokens_per_forward": r.tokens_per_forward,
             "mean_accepted": r.mean_accepted} for r in out.results]
    dtype = str(_model_dtype(model)).replace("torch.", "")
    if args.json:
        print(json.dumps({"mode": args.mode, "results": rows, "seconds": out.seconds,
                          "device": device, "dtype": dtype}))
        return 0
    print(f"mode {args.mode}  device {device}  dtype {dtype}  {out.seconds:.3f} s")
    for i, r in enumerate(rows):
        acc = "" if r["mean_accepted"] is None else f"  mean accepted {r['mean_accepted']:.2f}"
        print(f"[{i}] {len(r['tokens'])} tokens  NFE {r['nfe']}  tokens/forward "
              f"{r['tokens_per_forward']:.2f}{acc}")
        print(f"    ids: {r['tokens']}")
        if r["text"] is not None:
            print(f"    text: {r['text']!r}")
    return 0


def _warm_imports():
    """The first torch.library op call imports torch._dynamo (seconds on a cold start);
    do it before the timed run so "seconds" measures decoding, not a one-off import."""
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # pragma: no cover - the timing is then merely less precise
        pass


def _model_dtype(model):
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return dtype


if __name__ == "__main__":
    sys.exit(main())
