"""tridiff against llama.cpp on the same network: CPU, AR greedy decoding at batch 1.

    python -m bench.bench_llamacpp [--shape small|mid|3b] [--out DIR] [--gguf-dir DIR]
        [--formats fp32,bf16,int4-g128,f16,q4_0,q4_0-f16head] [--new-tokens 128] [--reps N] [--threads N]

The network: the shape's config (small, mid: bench.bench_cpu_e2e's; 3b: tridiff's 3B
preset, YaRN factor 16 as released) with random weights drawn tensor by tensor
(random_weight: fan-in scaled projections, logits spread like tridiff.checkpoint's
random checkpoints) and rounded to fp16, so the F16 GGUF holds exactly the values
tridiff's fp32 model computes with. tridiff.quant.gguf writes the GGUF files (arch
"llama": q/k rows interleaved for llama.cpp's rotary, YaRN with the same frequencies;
the llama-4 query scale is 1 at these positions, which stay below the preset's
original_max_position_embeddings).

Contenders, each alone in memory (the 3B fp32 model is ~13 GB), one after another:
  tridiff   fp32 (the weights above), bf16 (the same rounded to bf16, through
            tridiff.quant.load.build_model), int4-g128 (the same through
            tridiff.quant.gptq.quantize_rtn, symmetric, head bf16 as `tridiff quantize`
            leaves it): generate(model, [prompt], mode="ar"), eos off
  llama.cpp llama-cpp-python's Llama on the GGUF file: llama-f16, llama-bf16, llama-q4_0
            (every 2-D weight Q4_0, gguf's round to nearest, as llama-quantize --pure),
            llama-q4_0-f16head (the head kept F16, bytes like tridiff's int4-g128 with its
            bf16 head), llama-f32; its eval()
            of the prompt, then one token at a time, argmax of llama_get_logits each step
Same thread count on both sides (--threads, default every core), the same 32-token
prompt, --new-tokens greedy tokens, one warm-up call, then --reps timed calls (median).

Rows (bench/results/llamacpp.jsonl, op "ar_decode", one per contender):
  median_ms         decode milliseconds per token: (call - prefill) / (new_tokens - 1)
                    (the prefill's logits give the first token)
  extra.tokens_per_s          1000 / median_ms;  extra.e2e_tokens_per_s: new_tokens / whole call
  extra.prefill_ms            the 32-token prompt forward
  extra.agree_with_fp32       leading greedy tokens equal to tridiff fp32's (the check that
                              both sides compute the same network: f16 against fp32)
  bytes             weight bytes one decode step streams (projections + head; the
                    embedding row and norms left out), so floor_ms = bytes / copy GB/s
  ratio             within a weight width group (4bit, 16bit, 32bit): llama.cpp's best
                    ms / this ms (> 1: tridiff faster)
  extra.llama_cpp   llama-cpp-python version, build flags (LLAMA_BUILD_FLAGS, as installed
                    per bench/NOTES.md), llama_print_system_info() and the gguf package version
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import tempfile
import time
from typing import Callable

import torch

from bench.common import ForwardLog, Timing, arg_parser, start_run

PROMPT = 32
NEW_TOKENS = 128
# -a8: int8 activations (as llama.cpp's Q4_0 x Q8_0 dot products); -q4head: the head int4-g128 too
TRIDIFF_FORMATS = ("fp32", "bf16", "int4-g128", "int4-g128-a8", "int4-g128-a8-q4head")
GGUF_FORMATS = ("llama-f16", "llama-bf16", "llama-q4_0", "llama-q4_0-f16head", "llama-f32")
DEFAULT_FORMATS = ("fp32", "bf16", "int4-g128", "int4-g128-a8", "int4-g128-a8-q4head", "llama-f16", "llama-q4_0", "llama-q4_0-f16head")
# How llama-cpp-python was built for these rows (the default native build segfaulted on
# its first evaluation on this CPU, which reports AMX and AVX-512): bench/NOTES.md.
LLAMA_BUILD_FLAGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
WIDTH = {"fp32": "32bit", "llama-f32": "32bit", "bf16": "16bit", "llama-f16": "16bit", "llama-bf16": "16bit",
         "int4-g128": "4bit", "int4-g128-a8": "4bit", "int4-g128-a8-q4head": "4bit", "llama-q4_0": "4bit", "llama-q4_0-f16head": "4bit"}


def config_for(name: str):
    from bench.bench_cpu_e2e import SHAPES
    from tridiff.config import ModelConfig, preset

    if name == "3b":
        return preset("3b")
    if name == "tiny":   # tests: every K a multiple of 128 (int4-g128) and of 32 (Q4_0)
        return ModelConfig(**dict(SHAPES["tiny"], hidden_size=128, intermediate_size=256))
    if name not in SHAPES:
        raise SystemExit(f"--shape: expected small, mid or 3b, got {name!r}")
    return ModelConfig(**SHAPES[name])


def random_weight(config, seed: int = 0) -> Callable[[str], torch.Tensor]:
    """name -> its float32 tensor (values fp16-representable), the same on every call:
    each tensor has its own generator (seeded by seed and its index), so one tensor at a
    time can be made, for a GGUF file or for a tridiff model."""
    from tridiff import checkpoint as ckpt

    shapes = ckpt.expected_shapes(config)
    index = {name: i for i, name in enumerate(shapes)}

    def make(name: str) -> torch.Tensor:
        shape = shapes[name]
        g = torch.Generator().manual_seed(seed * 1_000_003 + index[name])
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name == "encoder.embed_tokens.weight":
            t = torch.randn(shape, generator=g)
        elif name == "diffusion_head.weight":
            t = torch.randn(shape, generator=g).mul_(4.0 / math.sqrt(shape[1]))
        else:
            t = torch.randn(shape, generator=g).div_(math.sqrt(shape[1]))
        return t.copy_(t.to(torch.float16))   # in place: at 3B the embedding alone is 1.6 GB

    return make


# ---- tridiff -------------------------------------------------------------------------------------

def tridiff_model(config, fmt: str, weight: Callable[[str], torch.Tensor]):
    """The network in tridiff weight format `fmt`, filled from `weight` tensor by tensor."""
    from tridiff import checkpoint as ckpt
    from tridiff.model import Model
    from tridiff.quant.config import QuantConfig
    from tridiff.quant.gptq import quantize_rtn
    from tridiff.quant.load import build_model, finish, set_activations

    with torch.no_grad():
        if fmt == "fp32":
            model = Model(config, dtype=torch.float32)
            params = dict(model.named_parameters())
            for name in ckpt.expected_shapes(config):
                params[name].copy_(weight(name))
            return model
        quant = "bf16" if fmt == "bf16" else QuantConfig(4, 128, True, "gptq", "bench_llamacpp",
                                                         lm_head=fmt.endswith("-q4head"))
        model, targets = build_model(config, quant, dtype=torch.float32, head_dtype=torch.bfloat16)
        done = set()
        for name, target in targets.items():
            if name in done:
                continue
            if name.endswith((".qweight", ".qzeros", ".scales", ".g_idx")):
                prefix = name.rsplit(".", 1)[0]
                q = quantize_rtn(weight(f"{prefix}.weight"), 4, 128, sym=True, zero_format="gptq")
                for suffix in ("qweight", "qzeros", "scales", "g_idx"):
                    targets[f"{prefix}.{suffix}"].copy_(getattr(q, suffix))
                    done.add(f"{prefix}.{suffix}")
            else:
                target.copy_(weight(name))
        finish(model)
        return set_activations(model, "int8") if "-a8" in fmt else model


def run_tridiff(model, prompt: list, new_tokens: int) -> dict:
    """One generate call: tokens, whole-call and prefill seconds."""
    from tridiff.generate import generate

    log = ForwardLog(model, first_apart=True)
    with log.installed():
        t0 = time.perf_counter()
        out = generate(model, [prompt], mode="ar", max_new_tokens=new_tokens, eos_id=-1)
        total = time.perf_counter() - t0
    tokens = list(out.results[0].tokens)
    if len(tokens) != new_tokens:
        raise RuntimeError(f"tridiff made {len(tokens)} tokens, expected {new_tokens}")
    return {"tokens": tokens, "total_s": total, "prefill_s": log.first[1]}


def tridiff_bytes(config, fmt: str) -> int:
    from bench.bench_quant import weight_bytes

    return weight_bytes(config, fmt)


# ---- llama.cpp -----------------------------------------------------------------------------------

def backend_name(fmt: str) -> str:
    return f"llama.cpp-{fmt.removeprefix('llama-')}" if fmt in GGUF_FORMATS else f"tridiff-{fmt}"


def gguf_types(fmt: str) -> tuple[str, str]:
    """(type of the 2-D weights, type of the head) of a GGUF contender ("llama-<type>")."""
    t = fmt.removeprefix("llama-")
    return ("q4_0", "f16") if t == "q4_0-f16head" else (t, t)


def write_gguf_file(directory: str, shape: str, config, fmt: str, seed: int, weight) -> str:
    """The contender's GGUF file in `directory` (reused when a complete one is there)."""
    from tridiff.quant.gguf import write_gguf

    path = os.path.join(directory, f"{shape}-seed{seed}-{fmt}.gguf")
    done = path + ".done"
    if os.path.exists(path) and os.path.exists(done):
        return path
    wtype, head = gguf_types(fmt)
    write_gguf(path, config, weight, wtype, head_type=head, name=f"bench_llamacpp {shape} seed {seed}")
    open(done, "w").close()
    return path


def gguf_bytes(config, fmt: str) -> int:
    """Bytes of the projections and head in the file's types (as tridiff_bytes counts)."""
    from gguf import GGML_QUANT_SIZES

    from tridiff.quant.gguf import _gguf, _qtype

    gguf = _gguf()
    wtype, head = gguf_types(fmt)

    def size(n_elements: int, t: str) -> int:
        block, nbytes = GGML_QUANT_SIZES[_qtype(gguf, t)]
        return n_elements // block * nbytes

    h, f = config.hidden_size, config.intermediate_size
    per_layer = h * (2 * config.q_size + 2 * config.kv_size) + 3 * h * f
    return size(per_layer * config.num_hidden_layers, wtype) + size(config.vocab_size * h, head)


def llama_cpp_info() -> dict:
    from importlib.metadata import version

    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {"version": llama_cpp.__version__, "build_flags": LLAMA_BUILD_FLAGS, "gguf": version("gguf"),
            "system_info": info.decode() if isinstance(info, bytes) else str(info)}


def load_llama(path: str, threads: int, n_ctx: int):
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=n_ctx, n_batch=max(PROMPT, 32), n_threads=threads, n_threads_batch=threads,
                 verbose=False)


def run_llama(llm, prompt: list, new_tokens: int) -> dict:
    """Greedy decoding through Llama.eval: the prompt in one batch, then one token at a
    time; argmax of the last logits row each step."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()

    def argmax() -> int:
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,)).argmax())

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tokens = [argmax()]
    prefill = time.perf_counter() - t0
    while len(tokens) < new_tokens:
        llm.eval([tokens[-1]])
        tokens.append(argmax())
    return {"tokens": tokens, "total_s": time.perf_counter() - t0, "prefill_s": prefill}


def common_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ---- the run -------------------------------------------------------------------------------------

def plan(device: torch.device, quick: bool, shape: str = "small") -> dict:
    p = dict(shape=shape, formats=list(DEFAULT_FORMATS), new_tokens=NEW_TOKENS, reps=1 if shape == "3b" else 3,
             threads=os.cpu_count() or 1, seed=0)
    if quick:
        p.update(shape="tiny", new_tokens=16, reps=1)
    return p


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None, shape=None,
        formats=None, gguf_dir=None, new_tokens=None, reps=None, threads=None):
    p_kw = {"shape": shape} if shape else {}
    device, p, rec = start_run("llamacpp", lambda d, q: plan(d, q, **p_kw), quick, device or "cpu", out_dir,
                               budget_s, overrides)
    if device.type != "cpu":
        raise SystemExit("bench_llamacpp is a CPU benchmark (--device cpu)")
    if formats is not None:
        p["formats"] = formats.split(",") if isinstance(formats, str) else list(formats)
    for key, value in (("new_tokens", new_tokens), ("reps", reps), ("threads", threads)):
        if value is not None:
            p[key] = int(value)
    unknown = [f for f in p["formats"] if f not in TRIDIFF_FORMATS + GGUF_FORMATS]
    if unknown:
        raise SystemExit(f"--formats: expected names from {TRIDIFF_FORMATS + GGUF_FORMATS}, got {unknown[0]!r}")
    config, shape_name = config_for(p["shape"]), p["shape"]
    threads, n = p["threads"], p["new_tokens"]
    torch.set_num_threads(threads)
    weight = random_weight(config, p["seed"])
    g = torch.Generator().manual_seed(p["seed"])
    prompt = torch.randint(0, config.vocab_size, (PROMPT,), generator=g).tolist()
    shape = dict(shape=shape_name, hidden=config.hidden_size, layers=config.num_hidden_layers,
                 vocab=config.vocab_size, prompt=PROMPT, new_tokens=n, threads=threads)
    results: dict = {}
    llama = [f for f in p["formats"] if f in GGUF_FORMATS]
    info = None
    if llama:
        try:
            info = llama_cpp_info()
        except ImportError as exc:
            for f in llama:
                rec.skip("ar_decode", backend_name(f), shape, f"llama-cpp-python does not import ({exc}); "
                         f"install it as bench/NOTES.md says")
            llama = []
    with tempfile.TemporaryDirectory() as scratch:
        gdir = gguf_dir or scratch
        os.makedirs(gdir, exist_ok=True)
        paths = {f: write_gguf_file(gdir, shape_name, config, f, p["seed"], weight) for f in llama}
        for fmt in p["formats"]:
            if rec.out_of_time():
                rec.skip("ar_decode", backend_name(fmt), shape, "time budget spent")
                continue
            if fmt in TRIDIFF_FORMATS:
                backend, nbytes = backend_name(fmt), tridiff_bytes(config, fmt)
                model = tridiff_model(config, fmt, weight)
                go = lambda k: run_tridiff(model, prompt, k)   # noqa: E731
            elif fmt in paths:
                backend, nbytes = backend_name(fmt), gguf_bytes(config, fmt)
                model = load_llama(paths[fmt], threads, PROMPT + n + 8)
                go = lambda k: run_llama(model, prompt, k)   # noqa: E731
            else:
                continue
            go(min(n, 8))   # warm-up: page in the weights, allocator, projection path measurement
            runs = [go(n) for _ in range(p["reps"])]
            del model, go
            gc.collect()
            results[fmt] = runs[0]["tokens"]
            if any(r["tokens"] != runs[0]["tokens"] for r in runs):
                raise RuntimeError(f"{backend}: greedy tokens differ between repetitions")
            per_token = sorted(1e3 * (r["total_s"] - r["prefill_s"]) / (n - 1) for r in runs)
            timing = Timing(statistics.median(per_token), per_token[len(per_token) // 5],
                            per_token[(4 * len(per_token)) // 5], len(per_token),
                            f"perf_counter ({n}-token greedy call, prefill excluded)")
            whole = statistics.median(r["total_s"] for r in runs)
            extra = dict(weight_format=fmt, tokens_per_s=1e3 / timing.median_ms, e2e_tokens_per_s=n / whole,
                         prefill_ms=1e3 * statistics.median(r["prefill_s"] for r in runs), tokens=runs[0]["tokens"])
            if fmt in paths:
                extra["llama_cpp"] = info
                extra["gguf_types"] = dict(zip(("weights", "head"), gguf_types(fmt)))
            rec.add("ar_decode", backend, shape, torch.float32, timing,
                    role="baseline" if fmt in paths else "tridiff", bytes=nbytes,
                    group=f"{shape_name}-{WIDTH[fmt]}", **extra)
    if "fp32" in results:
        for row in rec.rows:
            row.extra["agree_with_fp32"] = common_prefix(results["fp32"], row.extra["tokens"])
    recs = rec.finish(print_table=False)
    print(table(recs))
    return recs


def table(recs) -> str:
    lines = [f"{'contender':<24} {'decode tok/s':>12} {'e2e tok/s':>10} {'prefill ms':>11} {'MB/token':>9} "
             f"{'of floor':>9} {'vs llama.cpp':>13} {'= fp32 tokens':>14}"]
    for r in recs:
        e = r["extra"]
        vs = f"{r['ratio']:.2f}x" if r["ratio"] is not None and r["role"] != "baseline" else "-"
        agree = f"{e['agree_with_fp32']}/{len(e['tokens'])}" if "agree_with_fp32" in e else "-"
        lines.append(f"{r['backend']:<24} {e['tokens_per_s']:>12.2f} {e['e2e_tokens_per_s']:>10.2f} "
                     f"{e['prefill_ms']:>11.1f} {r['bytes'] / 1e6:>9.1f} {r['peak_fraction']:>8.0%} {vs:>13} "
                     f"{agree:>14}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = arg_parser(__doc__.splitlines()[0])
    ap.add_argument("--shape", default=None, help="small, mid or 3b (default small)")
    ap.add_argument("--formats", default=None, help=f"comma list from {', '.join(TRIDIFF_FORMATS + GGUF_FORMATS)}")
    ap.add_argument("--gguf-dir", default=None,
                    help="keep the GGUF files here (reused when present; default: a temporary folder)")
    ap.add_argument("--new-tokens", type=int, default=None, help=f"greedy tokens after the prompt (default {NEW_TOKENS})")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per contender (default 3; 1 at 3b)")
    ap.add_argument("--threads", type=int, default=None, help="threads on both sides (default: every core)")
    a = ap.parse_args(argv)
    run(quick=a.quick, out_dir=a.out, device=a.device, budget_s=a.budget_s, shape=a.shape, formats=a.formats,
        gguf_dir=a.gguf_dir, new_tokens=a.new_tokens, reps=a.reps, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
