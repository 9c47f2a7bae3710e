"""Training the drafter adapter of a trained base (frozen): data, AdamW + cosine schedule,
progress, checkpoints, resume, held-out draft evaluation, export in the released
adapter layout (BASE/../OUT/linear_spec_lora/, see tridiff.checkpoint).

    python -m tridiff.train --drafter-lora --base DIR --out DIR [--rank R] [--alpha A]
                            [--steps N] [--resume] [--work DIR]

Everything random derives from (seed, step), so a resumed run draws the same batches
as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch

from tridiff import checkpoint as ckpt
from tridiff.train import corpus, drafter
from tridiff.train.loop import (add_settings_arguments, encode_files, fixed_windows, fmt_time, learning_rate,
                                progress_bar, random_windows, resume_state, save_state, settings_from)
from tridiff.train.network import TrainNetwork

STATE_FILE = "drafter_state.pt"
TOKENS_FILE = "drafter_tokens.pt"
LOG_FILE = "drafter_log.jsonl"
SUMMARY_FILE = "drafter_training.json"
BASE_FILES = ("config.json", ckpt.SINGLE_FILE, "tokenizer.json", "training.json", "demo_prompts.json")


@dataclass
class DrafterSettings:
    rank: int = 32
    alpha: float = 64.0
    steps: int = 150
    batch: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.0
    clip: float = 1.0
    target: str = "ar"
    position_decay: float = 1.0   # loss weight of block position j: decay ** (j - 1)
    linear: float = 0.6       # schedule mix (tridiff.train.drafter): linear / prefix / scattered
    prefix: float = 0.2
    scattered: float = 0.2
    long_block_every: int = 4  # every k-th step drafts blocks of 2L (the L = 32 linear drafts); 0: never
    seed: int = 0
    bf16: bool = False  # float32: faster than CPU autocast on cores without AVX512-BF16 (measured here)
    eval_windows: int = 8
    eval_every: int = 75
    checkpoint_minutes: float = 3.0

    def mix(self) -> dict:
        return {"linear": self.linear, "prefix": self.prefix, "scattered": self.scattered}


def load_base(base_dir: str) -> TrainNetwork:
    """The base checkpoint (no adapter) as a frozen float32 TrainNetwork."""
    found = ckpt.open_checkpoint(base_dir, adapter=False)
    net = TrainNetwork(found.config)
    params = dict(net.named_parameters())
    ckpt.load_into(found.weights, {name: params[name] for name in ckpt.expected_shapes(found.config)})
    net.requires_grad_(False)
    return net.eval()


def prepare_tokens(base_dir: str, work_dir: str) -> dict:
    """Both splits encoded with the base's tokenizer, once (reused on resume)."""
    from tridiff.tokenizer import Tokenizer

    path = os.path.join(work_dir, TOKENS_FILE)
    if os.path.exists(path):
        return torch.load(path)
    tok = Tokenizer.from_pretrained(base_dir)
    train_files, held_files = corpus.split()
    data = {"train": encode_files(tok, train_files), "heldout": encode_files(tok, held_files)}
    torch.save(data, path)
    return data


def step_block(s: DrafterSettings, step: int, block: int) -> int:
    return 2 * block if s.long_block_every and step % s.long_block_every == s.long_block_every - 1 else block


def batch_loss(net, lora, windows, s: DrafterSettings, block: int, mix: dict, gen):
    batch = drafter.make_draft_batch(windows, block, net.config.mask_token_id, mix, gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
        return drafter.draft_loss(net, lora, batch, block, s.target, s.position_decay)


@torch.no_grad()
def evaluate(net, lora, windows, s: DrafterSettings) -> dict:
    """Held-out linear drafts (seed + masks) at L and 2L: loss against the target, top-1
    agreement with the AR teacher, teacher-forced accepted length per block."""
    L = net.config.block_length
    out = {}
    for block in (L, 2 * L):
        gen = torch.Generator().manual_seed(12345)
        loss = agree = acc = 0.0
        chunks = windows.split(s.batch)
        for chunk in chunks:
            lo, st = batch_loss(net, lora, chunk, s, block, {"linear": 1.0}, gen)
            loss, agree, acc = loss + float(lo), agree + st["agree"], acc + st["accepted"]
        n = len(chunks)
        out[f"L{block}"] = {"loss": loss / n, "agree": agree / n, "accepted": acc / n}
    return out


def export(lora, config, base_dir: str, out_dir: str, summary: dict) -> str:
    """OUT/linear_spec_lora/ (adapter_config.json + adapter_model.safetensors, float32) and
    OUT/drafter_training.json; the base's files are copied when OUT is not BASE."""
    os.makedirs(out_dir, exist_ok=True)
    if os.path.abspath(out_dir) != os.path.abspath(base_dir):
        for name in BASE_FILES:
            if os.path.exists(os.path.join(base_dir, name)):
                shutil.copyfile(os.path.join(base_dir, name), os.path.join(out_dir, name))
    path = ckpt.write_adapter(out_dir, config, rank=lora.rank, alpha=lora.alpha, tensors=lora.adapter_tensors())
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    return path


def train_drafter(base_dir: str, out_dir: str, work_dir: str, s: DrafterSettings, *, resume: bool = False,
                  threads: int | None = None, max_minutes: float | None = None, log=print) -> dict:
    """Train, checkpoint every s.checkpoint_minutes, export at the end. max_minutes stops
    early (state saved, adapter exported with the steps done so far)."""
    if s.target not in drafter.TARGETS:
        raise ValueError(f"target: expected one of {drafter.TARGETS}, got {s.target!r}")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    os.makedirs(work_dir, exist_ok=True)
    net = load_base(base_dir)
    data = prepare_tokens(base_dir, work_dir)
    lora = drafter.DrafterLora(net.config, s.rank, s.alpha, seed=s.seed)
    opt = torch.optim.AdamW(lora.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
    state_path = os.path.join(work_dir, STATE_FILE)
    start, elapsed0 = 0, 0.0
    if resume and os.path.exists(state_path):
        start, elapsed0 = resume_state(state_path, lora, opt, s, key="lora", log=log)
    L = net.config.block_length
    held = fixed_windows(data["heldout"], s.eval_windows, s.seq_len)
    log(f"drafter LoRA r={s.rank} alpha={s.alpha} ({sum(p.numel() for p in lora.parameters())} parameters) "
        f"on {base_dir}; {s.steps} steps of {s.batch} x {s.seq_len}; target {s.target}; mix {s.mix()}; "
        f"blocks {L}" + (f" and {2 * L} every {s.long_block_every}th step" if s.long_block_every else "")
        + f"; {torch.get_num_threads()} threads")
    before = evaluate(net, lora, held, s) if start == 0 else None
    if before:
        log(f"before: held-out linear drafts {json.dumps(before)}")
    with open(os.path.join(work_dir, LOG_FILE), "a") as log_fh:   # closed on every exit
        t0 = last_ckpt = time.time()
        done, rec = start, {}
        for step in range(start, s.steps):
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
            windows = random_windows(data["train"], s.batch, s.seq_len, gen)
            for group in opt.param_groups:
                group["lr"] = learning_rate(s, step)
            loss, st = batch_loss(net, lora, windows, s, step_block(s, step, L), s.mix(), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora.parameters(), s.clip)
            opt.step()
            done = step + 1
            rec = {"step": done, "loss": float(loss.detach()), **st}
            if done % s.eval_every == 0 or done == s.steps:
                rec["heldout"] = evaluate(net, lora, held, s)
            log_fh.write(json.dumps(rec) + "\n")
            log_fh.flush()
            run = time.time() - t0
            if done % 5 == 0 or done == s.steps or "heldout" in rec:
                eta = run / (done - start) * (s.steps - done)
                extra = (f" | held-out L{L} agree {rec['heldout'][f'L{L}']['agree']:.3f} accepted "
                         f"{rec['heldout'][f'L{L}']['accepted']:.2f}") if "heldout" in rec else ""
                log(f"{progress_bar(done, s.steps)} {done}/{s.steps} loss {rec['loss']:.3f} agree {st['agree']:.3f} "
                    f"{run / (done - start):.2f} s/step ETA {fmt_time(eta)}{extra}")
            if time.time() - last_ckpt > 60 * s.checkpoint_minutes and done < s.steps:
                save_state(state_path, lora, opt, done, s, elapsed0 + run, key="lora")
                last_ckpt = time.time()
            if max_minutes is not None and elapsed0 + run > 60 * max_minutes and done < s.steps:
                log(f"stopping at step {done}: --max-minutes {max_minutes} reached")
                break
    elapsed = elapsed0 + time.time() - t0
    save_state(state_path, lora, opt, done, s, elapsed, key="lora")
    final = rec["heldout"] if done > start and "heldout" in rec else evaluate(net, lora, held, s)
    summary = {"base": os.path.basename(os.path.normpath(base_dir)), "settings": dataclasses.asdict(s),
               "steps_done": done, "train_seconds": round(elapsed, 1), "heldout_linear_drafts_before": before,
               "heldout_linear_drafts": final, "python": sys.version.split()[0], "torch": torch.__version__}
    if os.path.exists(os.path.join(out_dir, SUMMARY_FILE)) and resume and before is None:
        with open(os.path.join(out_dir, SUMMARY_FILE)) as fh:   # keep the first run's "before"
            summary["heldout_linear_drafts_before"] = json.load(fh).get("heldout_linear_drafts_before")
    export(lora, net.config, base_dir, out_dir, summary)
    log(f"done: {done} steps in {fmt_time(elapsed)}; held-out linear drafts {json.dumps(final)}; wrote "
        f"{os.path.join(out_dir, ckpt.ADAPTER_DIR)}")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tridiff.train --drafter-lora",
                                description="Train the drafter LoRA (linear_spec_lora) of a trained base model.")
    p.add_argument("--base", required=True, help="the base checkpoint directory (frozen)")
    p.add_argument("--out", required=True, help="where linear_spec_lora/ is written (the base's files are copied "
                                                "there when it is another directory)")
    p.add_argument("--work", default=None, help="encoded corpus, checkpoint, log (default OUT.drafter-work)")
    p.add_argument("--resume", action="store_true", help="continue from WORK/" + STATE_FILE)
    p.add_argument("--threads", type=int, default=None, help="default: every core")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this much training time")
    add_settings_arguments(p, DrafterSettings, choices={"target": drafter.TARGETS})
    a = p.parse_args(argv)
    s = settings_from(a, DrafterSettings)
    out = os.path.abspath(a.out)
    work = a.work or out.rstrip("/") + ".drafter-work"
    train_drafter(os.path.abspath(a.base), out, work, s, resume=a.resume, threads=a.threads,
                  max_minutes=a.max_minutes)
    return 0
