"""`tridiff serve`'s command-line options and entry point (argparse only here: the web
stack is imported when the server starts, with a clear message when it is missing)."""
from __future__ import annotations

import argparse

from tridiff.serve.protocol import STRATEGIES


def _int_at_least(low: int, expected: str):
    """An argparse type: an int >= low, else an error saying `expected`."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v}")
        return v
    return parse


_positive = _int_at_least(1, "a positive int")
_nonnegative = _int_at_least(0, "an int >= 0")


def _port(text: str) -> int:
    v = _nonnegative(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory or bundled model name (default: bundled)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--max-rows", type=_positive, default=32, help="requests decoded together (engine rows)")
    p.add_argument("--max-queue", type=_nonnegative, default=64,
                   help="requests that may wait beyond --max-rows; past that the server answers 503")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="for requests that name none (default auto: picked per step by load)")
    p.add_argument("--num-pages", type=_positive, default=None, help="KV cache pages (default: the engine's)")
    p.add_argument("--page-size", type=_positive, default=16)
    p.add_argument("--max-context", type=_positive, default=None,
                   help="positions per request (default: the engine's)")
    p.add_argument("--prefill-chunk", type=_positive, default=64)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "cuda", "cpp"))
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--activations", choices=("float", "int8"), default="float",
                   help="int4 (GPTQ) checkpoints: int8 rounds the projections' input per group (CPU, w4a8)")
    p.add_argument("--served-model-name", default=None, help="the model id of /v1/models (default: the "
                                                              "directory's name)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def serve_main(args, model_dir: str) -> int:
    import os

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"tridiff serve needs the serve extra (pip install tridiff[serve]): {exc}") from None
    if not os.path.isdir(model_dir):
        raise ValueError(f"--model: no such directory: {model_dir}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    from tridiff.serve.server import make_state, run

    state = make_state(model_dir, model_id=args.served_model_name, max_queue=args.max_queue,
                       strategy=args.strategy, device=args.device, dtype=args.dtype,
                       activations=args.activations, max_rows=args.max_rows,
                       num_pages=args.num_pages, page_size=args.page_size, max_context=args.max_context,
                       prefill_chunk=args.prefill_chunk, backend=args.backend)
    try:
        run(state, host=args.host, port=args.port, log_level=args.log_level)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    return 0
