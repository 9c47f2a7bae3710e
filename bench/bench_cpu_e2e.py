"""End-to-end CPU decoding, tridiff against transformers on the same checkpoint.

    python -m bench.bench_cpu_e2e [--quick] [--out DIR] [--shapes small,mid] [--rounds N]
                                  [--backends auto|torch|cpp]

For each shape, one random float32 checkpoint is written in the released layout by
tridiff.checkpoint.write_random_checkpoint (drafter adapter included) and loaded twice:
by tridiff.model.Model.from_pretrained and, with the names mapped (encoder.* ->
model.*, diffusion_head -> lm_head), into transformers' Ministral3ForCausalLM (sdpa and
eager attention). The same 32-token prompt is then decoded greedily for 128 new tokens
(eos disabled on both sides, so every run makes exactly that many) by:

  transformers   Ministral3ForCausalLM.generate (AR), attn sdpa and eager: the baselines
  tridiff        generate() in every mode: ar, diffusion (block 16, threshold 0.9, the
                 CLI default), linear-spec (block 16, one-forward draft), quadratic-spec
                 (block 4: 20 rows per forward)

The AR tokens of tridiff and of every transformers baseline must be identical, or the run
stops before timing anything. Contenders run in interleaved rounds (the order rotates
each round) and each keeps the median of its rounds, so a burst of outside load spoils
one round, not one contender; the best round is stored too.

What a row holds (bench/results/cpu_e2e.jsonl, one per contender and shape):
  median_ms        wall time of one whole generate call (validation, cache allocation,
                   prefill and every step included, as a user sees it)
  extra.tok_s, extra.ms_per_token     128 / that time
  extra.forwards   {rows: [count, ms per forward]} for tridiff: every model forward of
                   the call, grouped by its number of token rows (1 for an AR step, 16
                   for a linear draft/verify or a diffusion step, 20 for QUADRATIC(4), 32
                   for the prefill), timed one by one (CPU work is synchronous)
  extra.floor_ms   weight-streaming floor of the call: forwards x streamed weight bytes
                   (all weights but the embedding table; the adapter on drafting
                   forwards) / the copy bandwidth measured in this run
  extra.floor_fraction   floor_ms / median_ms (1.0 = at the floor)
  ratio            best transformers baseline ms / this ms (> 1: tridiff faster)
  bytes, flops     streamed weight bytes and 2 x weights x rows summed over the forwards
  extra.cpu_projection   the CPU projection formulation tridiff took per row bucket
                   (F.linear, W @ x^T or blocked bmm; tridiff.projection.cpu_path measures it)
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time

import torch

from bench.common import ForwardLog, Timing, bench_main, start_run
from tridiff import projection

SHAPES = {
    # the two shapes; intermediate 3x hidden for the small one, as for mid
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32, vocab_size=4096),
    "mid": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
                num_key_value_heads=4, head_dim=64, vocab_size=32768),
    # test-only
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=512),
}
MODES = {
    "ar": dict(),
    "diffusion": dict(block_length=16, threshold=0.9),
    "linear-spec": dict(block_length=16, threshold=0.0),
    "quadratic-spec": dict(block_length=4),
}
HF_ATTN = ("sdpa", "eager")


def plan(device: torch.device, quick: bool) -> dict:
    p = dict(shapes=["small", "mid"], modes=list(MODES), prompt_len=32, new_tokens=128, rounds=3,
             hf_attn=list(HF_ATTN), seed=0, adapter_rank=16)
    if quick:
        p.update(shapes=["small"], rounds=1, new_tokens=32, hf_attn=["sdpa"])
    return p


def config_for(name: str):
    from tridiff.config import ModelConfig

    return ModelConfig(**SHAPES[name])


def hf_from_checkpoint(directory: str, config, attn: str):
    """transformers' Ministral3ForCausalLM holding the checkpoint's weights (float32)."""
    import transformers as tf
    from safetensors.torch import load_file

    from tridiff import checkpoint as ckpt

    hc = tf.Ministral3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=False, pad_token_id=None,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        rope_parameters=dict(
            rope_type="yarn", rope_theta=config.rope_theta, factor=config.factor,
            original_max_position_embeddings=config.original_max_position_embeddings,
            beta_fast=config.beta_fast, beta_slow=config.beta_slow, mscale=config.mscale,
            mscale_all_dim=config.mscale_all_dim, llama_4_scaling_beta=config.llama_4_scaling_beta))
    hc._attn_implementation = attn
    model = tf.Ministral3ForCausalLM(hc).eval().to(torch.float32)
    state = {}
    for path in ckpt.weight_files(directory):
        for k, v in load_file(path).items():
            state["lm_head.weight" if k == "diffusion_head.weight" else k.replace("encoder.", "model.", 1)] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"transformers model: missing {missing}, unexpected {unexpected}")
    model.generation_config.eos_token_id = None   # exactly new_tokens, as tridiff with eos_id=-1
    model.generation_config.pad_token_id = 0
    return model


def hf_generate(model, prompt, new_tokens):
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=0, do_sample=False)
    return out[0, len(prompt):].tolist()


def streamed_bytes(model, with_adapter: bool) -> int:
    from bench.e2e_steps import weight_bytes

    return weight_bytes(model, with_adapter=with_adapter)


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True, shapes=None, rounds=None):
    from tridiff.checkpoint import write_random_checkpoint
    from tridiff.generate import generate
    from tridiff.model import Model

    device, p, rec = start_run("cpu_e2e", plan, quick, device or "cpu", out_dir, budget_s, overrides)
    if device.type != "cpu":
        raise SystemExit("bench_cpu_e2e is a CPU benchmark (--device cpu)")
    if shapes:
        p["shapes"] = shapes.split(",") if isinstance(shapes, str) else list(shapes)
    if rounds:
        p["rounds"] = int(rounds)
    backend = backends or "auto"
    bw = rec.peaks.copy_gbps * 1e9
    summary = []
    for shape_name in p["shapes"]:
        if rec.out_of_time():
            rec.skip("generate", "*", dict(shape=shape_name), "time budget spent")
            continue
        cfg = config_for(shape_name)
        with tempfile.TemporaryDirectory() as d:
            write_random_checkpoint(d, cfg, seed=p["seed"], dtype=torch.float32, with_adapter=True,
                                    adapter_rank=p["adapter_rank"], with_tokenizer=False)
            t0 = time.perf_counter()
            model = Model.from_pretrained(d, device="cpu", dtype=torch.float32)
            load_s = time.perf_counter() - t0
            hfs = {attn: hf_from_checkpoint(d, cfg, attn) for attn in p["hf_attn"]}
        gen = torch.Generator().manual_seed(p["seed"] + 7)
        prompt = torch.randint(0, cfg.vocab_size, (p["prompt_len"],), generator=gen).tolist()
        N = p["new_tokens"]
        shape = dict(shape=shape_name, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                     heads=f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}", head_dim=cfg.head_dim,
                     inter=cfg.intermediate_size, vocab=cfg.vocab_size, prompt=p["prompt_len"], new=N, B=1)
        wb, wba = streamed_bytes(model, False), streamed_bytes(model, True)
        params = wb / 4

        def tridiff_call(mode):
            kw = MODES[mode]
            return lambda: generate(model, [prompt], mode=mode, max_new_tokens=N, eos_id=-1, backend=backend,
                                    **kw)

        # --- parity first: AR tokens identical to every transformers baseline
        ours = tridiff_call("ar")().results[0].tokens
        for attn, hf in hfs.items():
            theirs = hf_generate(hf, prompt, N)
            if theirs != ours:
                first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                raise AssertionError(f"{shape_name}: tridiff AR and transformers ({attn}) tokens differ at "
                                     f"position {first} of {N}")

        # --- warm-up (first calls pay lazy imports, allocator growth, dispatcher caches)
        contenders = {f"transformers[{a}]": (lambda hf=hf: hf_generate(hf, prompt, N)) for a, hf in hfs.items()}
        for mode in p["modes"]:
            contenders[f"tridiff:{mode}"] = tridiff_call(mode)
        for fn in contenders.values():
            fn()

        times = {name: [] for name in contenders}
        logs = {name: [] for name in contenders}
        outs = {}
        names = list(contenders)
        for r in range(p["rounds"]):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                log = ForwardLog(model)
                with log.installed() if name.startswith("tridiff") else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    out = contenders[name]()
                    times[name].append(time.perf_counter() - t0)
                logs[name].append(log)
                outs[name] = out

        for name, ts in times.items():
            ms = [1e3 * t for t in ts]
            med = statistics.median(ms)
            timing = Timing(med, min(ms), max(ms), len(ms), "perf_counter (whole generate call)")
            extra = dict(tok_s=N / (med / 1e3), ms_per_token=med / N, best_ms=min(ms), rounds_ms=ms,
                         load_s=load_s, tridiff_backend=backend, cpu_projection=projection.measured_paths())
            if name.startswith("transformers"):
                rec.add("generate:ar", name, shape, torch.float32, timing, role="baseline",
                        bytes=N * wb, flops=2 * params * (p["prompt_len"] + N - 1), group=shape_name,
                        floor_ms=1e3 * N * wb / bw, floor_fraction=1e3 * N * wb / bw / med, **extra)
                continue
            mode = name.split(":", 1)[1]
            res = outs[name].results[0]
            fwd = {}
            first = logs[name][0].by_rows
            for rows in sorted(first):
                per = statistics.median(1e3 * lg.by_rows[rows][1] / lg.by_rows[rows][0] for lg in logs[name])
                fwd[rows] = [first[rows][0], per]
            n_fwd = sum(v[0] for v in fwd.values())
            bytes_ = n_fwd * wb + logs[name][0].adapter_forwards * (wba - wb)
            flops = 2 * params * sum(rows * v[0] for rows, v in fwd.items())
            floor = 1e3 * bytes_ / bw
            extra.update(forwards=fwd, n_forwards=n_fwd, nfe=res.nfe, tokens=len(res.tokens),
                         weight_bytes=wb, adapter_bytes=wba - wb, adapter_forwards=logs[name][0].adapter_forwards,
                         mean_accepted=res.mean_accepted, floor_ms=floor, floor_fraction=floor / med,
                         ms_per_forward=med / n_fwd)
            if mode == "ar" and res.tokens != ours:
                raise AssertionError(f"{shape_name}: tridiff AR tokens changed between runs")
            rec.add(f"generate:{mode}", name, shape, torch.float32, timing, role="tridiff", bytes=bytes_,
                    flops=flops, group=shape_name, **extra)
        summary.append(shape_name)
        del model, hfs
    recs = rec.finish(print_table=False)
    if print_table:
        print(rec.table().splitlines()[1])
        print(table(recs))
    return recs


def table(recs) -> str:
    """The short table of bench/NOTES.md: one line per shape and contender."""
    lines = [f"{'shape':<6} {'contender':<26} {'ms/call':>9} {'tok/s':>7} {'ms/tok':>7} {'floor':>6} "
             f"{'vs tf':>6}  ms per forward (rows: count x ms)"]
    for r in recs:
        x = r["extra"]
        fw = "  ".join(f"{rows}: {v[0]}x{v[1]:.2f}" for rows, v in x.get("forwards", {}).items())
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{r['shape']['shape']:<6} {r['backend']:<26} {r['median_ms']:>9.1f} {x['tok_s']:>7.1f} "
                     f"{x['ms_per_token']:>7.2f} {100 * x['floor_fraction']:>5.1f}% {ratio:>6}  {fw}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv, shapes="comma list of shapes (small, mid)",
                      rounds="interleaved rounds per contender (default 3)")


if __name__ == "__main__":
    raise SystemExit(main())
