"""Weight formats on CPU: one AR step (1 row) and one 17-row verify forward per format
(fp32, bf16, int4-g128, and int4-g128-a8: the same int4 weights with int8 activations,
tridiff.quant.load.set_activations; -q4head: the head packed int4-g128 too, `tridiff
quantize --lm-head`) against each format's weight-streaming floor; and,
without any timing, what int4-g128 (and -a8) costs the bundled model in accuracy.

    python -m bench.bench_quant [--quick] [--out DIR] [--shapes small,mid,3b] [--formats fp32,bf16,int4-g128]
    python -m bench.bench_quant --quality [--quick] [--out DIR]

Speed (bench/results/quant.jsonl): random weights built straight in each format
(tridiff.quant.load.build_model: no full-precision copy of a bf16 or int4 model is ever
held; one format's model in memory at a time, the 3B fp32 one is ~12 GB), a 32-token
prompt committed, then AR (1 token) and verify (17 tokens) forwards with kv="write" (the
cache is the same for every repetition), interleaved, median of the repetitions. bytes
= the weights one forward streams (weight_bytes: the projections in the format plus the
head; embeddings rows and norms are negligible), so the recorder's floor_ms is bytes /
the measured copy bandwidth and peak_fraction the share of it reached. The shapes of
bench.bench_cpu_e2e (small, mid) and the 3B preset.

Quality (--quality, bench/results/quant_quality.jsonl): the bundled model, full
precision vs `tridiff quantize --bits 4 --group 128` (also with int8 activations, and bf16
weights): held-out AR loss
on 64 fixed windows of 256 tokens of the held-out split (tridiff.train.loop's
fixed_windows over the held-out files), greedy agreement over the 20 held-out prompts
of bench.bench_model_quality (64 AR tokens each), and linear self-speculation's tokens
per forward on the same prompts (block 16; drafts with the checkpoint's drafter LoRA,
kept in full precision, when it ships one). NFE and tokens, no timing.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.bench_cpu_e2e import SHAPES
from bench.common import Timing, bench_main, start_run
from bench.record import DEFAULT_OUT

FORMATS = ("fp32", "bf16", "int4-g128", "int4-g128-a8", "int4-g128-a8-q4head")
PROMPT = 32
ROWS = {"ar": 1, "verify": 17}
GROUP = 128


def config_for(name: str):
    from tridiff.config import ModelConfig, preset

    if name == "3b":
        return preset("3b")
    if name == "tiny":   # test-only: every K a multiple of the group
        return ModelConfig(**dict(SHAPES["tiny"], hidden_size=128, intermediate_size=256))
    return ModelConfig(**SHAPES[name])


def weight_bytes(config, fmt: str) -> int:
    """Bytes of the weights one forward streams: 7 projections per layer and the head.
    int4-g128: half a byte per code plus an fp16 scale and a 4-bit zero point per group
    of 128 (the head stays bf16, as tridiff quantize leaves it, from a bf16 checkpoint)."""
    h, f = config.hidden_size, config.intermediate_size
    per_layer = h * (2 * config.q_size + 2 * config.kv_size) + 3 * h * f
    proj = per_layer * config.num_hidden_layers
    head = config.vocab_size * h
    if fmt == "fp32":
        return 4 * (proj + head)
    if fmt == "bf16":
        return 2 * (proj + head)
    if fmt in ("int4-g128", "int4-g128-a8"):
        return math.ceil(proj * (0.5 + (2 + 0.5) / GROUP)) + 2 * head
    if fmt == "int4-g128-a8-q4head":
        return math.ceil((proj + head) * (0.5 + (2 + 0.5) / GROUP))
    raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")


def random_model(config, fmt: str, seed: int = 0):
    """A model with random weights built directly in format `fmt` (fan-in scaled)."""
    from tridiff.model import Model
    from tridiff.quant.config import QuantConfig
    from tridiff.quant.load import build_model, finish, set_activations

    g = torch.Generator().manual_seed(seed)
    if fmt == "fp32":
        model = Model(config, dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                _fill(name, p, g)
        return model
    weights = "bf16" if fmt == "bf16" else QuantConfig(4, GROUP, True, "gptq", "bench",
                                                       lm_head=fmt.endswith("-q4head"))
    model, targets = build_model(config, weights, dtype=torch.float32, head_dtype=torch.bfloat16)
    with torch.no_grad():
        for name, t in targets.items():
            _fill(name, t, g)
    finish(model)
    return set_activations(model, "int8") if "-a8" in fmt else model


def _fill(name: str, t: torch.Tensor, g: torch.Generator) -> None:
    if name.endswith(".qweight"):
        t.copy_(torch.randint(-2**31, 2**31 - 1, t.shape, generator=g, dtype=torch.int32))
    elif name.endswith(".qzeros"):
        t.fill_(0x77777777)   # symmetric int4: zero point 8, stored minus one (v1)
    elif name.endswith(".scales"):
        t.fill_(1.0 / (4 * math.sqrt(t.shape[0] * GROUP)))
    elif name.endswith(".g_idx"):
        t.copy_(torch.arange(t.shape[0], dtype=torch.int32) // GROUP)
    elif t.dim() == 1:
        t.fill_(1.0)
    else:
        t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1]))


def plan(device: torch.device, quick: bool) -> dict:
    p = dict(shapes=["small", "mid", "3b"], formats=list(FORMATS), reps=15)
    if quick:
        p.update(shapes=["tiny"], reps=2)
    return p


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        shapes=None, formats=None, quality=None):
    if quality:
        return run_quality(quick=quick, out_dir=out_dir)
    device, p, rec = start_run("quant", plan, quick, device or "cpu", out_dir, budget_s, overrides)
    if device.type != "cpu":
        raise SystemExit("bench_quant is a CPU benchmark (--device cpu)")
    if shapes:
        p["shapes"] = shapes.split(",") if isinstance(shapes, str) else list(shapes)
    if formats:
        p["formats"] = formats.split(",") if isinstance(formats, str) else list(formats)
    for shape_name in p["shapes"]:
        cfg = config_for(shape_name)
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=g)
        inputs = {kind: torch.randint(0, cfg.vocab_size, (1, n), generator=g) for kind, n in ROWS.items()}
        for fmt in p["formats"]:
            if rec.out_of_time():
                rec.skip("forward", fmt, dict(shape=shape_name), "time budget spent")
                continue
            model = random_model(cfg, fmt)
            cache = model.new_cache(1, PROMPT + max(ROWS.values()) + 1)
            model(prompt, cache, kv="commit")
            times = {kind: [] for kind in ROWS}
            for kind, tokens in inputs.items():   # warm-up (projection path measurement, allocator)
                model(tokens, cache, kv="write")
            for _ in range(p["reps"]):
                for kind, tokens in inputs.items():
                    t0 = time.perf_counter()
                    model(tokens, cache, kv="write")
                    times[kind].append(1e3 * (time.perf_counter() - t0))
            nbytes = weight_bytes(cfg, fmt)
            paths = {kind: forward_path(cfg, n, narrow=fmt != "fp32") for kind, n in ROWS.items()}
            for kind, ts in times.items():
                s = sorted(ts)
                timing = Timing(statistics.median(s), s[len(s) // 5], s[(4 * len(s)) // 5], len(s),
                                "perf_counter (one forward)")
                rec.add("forward", fmt, dict(shape=shape_name, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                                             rows=ROWS[kind]), torch.float32, timing,
                        role="baseline" if fmt == "fp32" else "tridiff", bytes=nbytes, group=f"{shape_name}-{kind}",
                        kind=kind, weight_format=fmt, tokens_per_s=ROWS[kind] * 1e3 / timing.median_ms,
                        path=paths[kind], cpu_gemm=gemm_build())
            del model, cache
    recs = rec.finish(print_table=False)
    print(table(recs))
    return recs


def forward_path(config, rows: int, narrow: bool = False) -> str:
    """Which layers a CPU fp32 forward of `rows` rows runs (tridiff.layer_stack's rule, as
    tridiff.model applies it): "stack" (the one-call C++ stack, bf16/int4 panels inside)
    or "op-by-op" (each projection through ops.mixed_linear / quant_linear: the same C++
    panels on the cpp backend, F.linear for fp32)."""
    from tridiff import _dispatch, layer_stack

    c = config
    layer_weights = c.hidden_size * (2 * c.q_size + 2 * c.kv_size + 3 * c.intermediate_size)
    stack = not _dispatch.backend_unavailable("cpp") and \
        layer_stack.wanted(torch.device("cpu"), torch.float32, rows, layer_weights, narrow=narrow)
    return "stack" if stack else "op-by-op"


def gemm_build() -> str:
    """The C++ panels' builds ("avx2+fma" / "baseline" for fp32, then the bf16/int4 panels'
    "avx512" / "avx2+fma" / "baseline"), or why there is none."""
    from tridiff import _dispatch, _ext

    reason = _dispatch.backend_unavailable("cpp")
    if reason:   # "" when the backend is usable
        return f"none: {reason}"
    lib = _ext.load("cpp")
    return f"{lib.decoder_gemm_build()}, quantized {lib.decoder_qgemm_build()}, a8 {lib.decoder_a8_build()}"


def table(recs) -> str:
    lines = [f"{'shape':<6} {'kind':<7} {'format':<12} {'MB/fwd':>8} {'ms':>9} {'floor ms':>9} {'of floor':>9} "
             f"{'vs fp32':>8}  path"]
    base = {(r["shape"]["shape"], r["extra"]["kind"]): r["median_ms"] for r in recs if r["backend"] == "fp32"}
    for r in recs:
        key = (r["shape"]["shape"], r["extra"]["kind"])
        speed = base[key] / r["median_ms"] if key in base else float("nan")
        lines.append(f"{key[0]:<6} {key[1]:<7} {r['backend']:<12} {r['bytes'] / 1e6:>8.1f} {r['median_ms']:>9.3f} "
                     f"{r['floor_ms']:>9.3f} {r['peak_fraction']:>8.0%} {speed:>7.2f}x  {r['extra'].get('path', '?')}")
    return "\n".join(lines)


# ---- accuracy (no timing) ------------------------------------------------------------------------

def heldout_windows(tok, count: int, length: int) -> torch.Tensor:
    """`count` evenly spaced windows of `length` tokens over the held-out files (each
    encoded with bos, concatenated): the held-out set of tridiff.train.loop.evaluate."""
    from tridiff.train import heldout
    from tridiff.train.loop import fixed_windows

    stream = torch.tensor([t for _, text in heldout._heldout_texts() for t in tok.encode(text, add_bos=True)])
    return fixed_windows(stream, count, length)


@torch.no_grad()
def heldout_loss(model, windows: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token cross entropy (nats) of causal forwards over the windows."""
    from tridiff import Mode

    total, n = 0.0, 0
    for chunk in windows.split(batch):
        logits = model(chunk[:, :-1], model.new_cache(len(chunk), chunk.shape[1]), modes=Mode.CAUSAL, kv="none")
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                       reduction="sum"))
        n += chunk[:, 1:].numel()
    return total / n


def greedy_agreement(full_rows, other_rows) -> dict:
    same = sum(a.tokens == b.tokens for a, b in zip(full_rows, other_rows))
    prefix = [next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), min(len(a.tokens),
                                                                                         len(b.tokens)))
              for a, b in zip(full_rows, other_rows)]
    pos = [x == y for a, b in zip(full_rows, other_rows) for x, y in zip(a.tokens, b.tokens)]
    return {"identical": same, "of": len(full_rows), "mean_common_prefix": sum(prefix) / len(prefix),
            "positionwise_agreement": sum(pos) / max(len(pos), 1)}


def run_quality(quick: bool = False, out_dir=None) -> dict:
    from bench.machine import environment
    from tridiff import models
    from tridiff.generate import generate
    from tridiff.model import Model
    from tridiff.quant.export import quantize_checkpoint
    from tridiff.quant.load import from_pretrained
    from tridiff.tokenizer import Tokenizer
    from tridiff.train import heldout

    n_prompts, n_windows, new_tokens = (2, 4, 16) if quick else (20, 64, 64)
    src = models.path()
    tok = Tokenizer.from_pretrained(src)
    windows = heldout_windows(tok, n_windows, 257)
    prompts = [p["ids"] for p in heldout.code_prompts(tok, n_prompts)]
    with tempfile.TemporaryDirectory() as d:
        quantize_checkpoint(src, d, bits=4, group_size=GROUP, sym=True)
        variants = {"full": Model.from_pretrained(src, dtype=torch.float32),
                    "bf16": from_pretrained(src, weights="bf16"),
                    "int4-g128": Model.from_pretrained(d, dtype=torch.float32),
                    "int4-g128-a8": Model.from_pretrained(d, dtype=torch.float32, activations="int8")}
    out = {}
    ar = {}
    for name, model in variants.items():
        ar[name] = generate(model, prompts, mode="ar", max_new_tokens=new_tokens, eos_id=-1).results
        lin = generate(model, prompts, mode="linear-spec", max_new_tokens=new_tokens, block_length=16,
                       eos_id=-1).results
        out[name] = {"weight_format": model.weight_format, "drafter_lora": model.has_adapter,
                     "heldout_ar_loss": heldout_loss(model, windows),
                     "linear_tokens_per_forward": sum(len(r.tokens) for r in lin) / sum(r.nfe for r in lin),
                     "linear_equals_ar": all(r.tokens == a.tokens[:len(r.tokens)]
                                             for r, a in zip(lin, generate(model, prompts, mode="ar",
                                                                           max_new_tokens=new_tokens + 15,
                                                                           eos_id=-1).results))}
    for name in ("bf16", "int4-g128", "int4-g128-a8"):
        out[name]["loss_delta_vs_full"] = out[name]["heldout_ar_loss"] - out["full"]["heldout_ar_loss"]
        out[name]["greedy_vs_full"] = greedy_agreement(ar["full"], ar[name])
    record = {"bench": "quant_quality", "model": "stdlib-7m", "windows": n_windows, "window_tokens": 256,
              "prompts": n_prompts, "new_tokens": new_tokens, "quick": quick, "variants": out,
              **environment(torch.device("cpu"))}
    path = Path(out_dir) if out_dir else DEFAULT_OUT
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "quant_quality.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"{'weights':<13} {'held-out loss':>14} {'delta':>8} {'greedy same':>12} {'common prefix':>14} "
          f"{'agree':>6} {'linear tok/fwd':>15} {'== AR':>6}")
    for name, v in out.items():
        agree = v.get("greedy_vs_full")
        same = f"{agree['identical']}/{agree['of']}" if agree else "-"
        prefix = f"{agree['mean_common_prefix']:.1f}" if agree else "-"
        pos = f"{agree['positionwise_agreement']:.0%}" if agree else "-"
        print(f"{name:<13} {v['heldout_ar_loss']:>14.4f} {v.get('loss_delta_vs_full', 0.0):>+8.4f} {same:>12} "
              f"{prefix:>14} {pos:>6} {v['linear_tokens_per_forward']:>15.2f} "
              f"{'yes' if v['linear_equals_ar'] else 'NO':>6}")
    return record


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    quality = "--quality" in argv
    if quality:
        argv.remove("--quality")
    return bench_main(lambda **kw: run(quality=quality, **kw), __doc__, argv,
                      shapes="comma list of shapes (small, mid, 3b)",
                      formats=f"comma list of formats ({', '.join(FORMATS)})")


if __name__ == "__main__":
    raise SystemExit(main())
