"""The training loop: data windows, AdamW + cosine schedule, progress, checkpoints,
resume, held-out evaluation and export in the released checkpoint layout.

Everything random derives from (seed, step), so a resumed run draws the same batches
as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tridiff.config import ModelConfig
from tridiff.train import corpus, heldout, objective
from tridiff.train import tokenizer as train_tok
from tridiff.train.network import TrainNetwork

STATE_FILE = "train_state.pt"
TOKENS_FILE = "tokens.pt"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training.json"


def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there autocast to bf16
    about halves a step; without them (AVX2 or plain AVX-512) a bf16 matmul is emulated and
    ~3.5x slower than fp32 (bench/NOTES.md, issue 24's second option)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:   # a torch without the probes: fp32 is never the slow choice
        return False


@dataclass
class TrainSettings:
    steps: int = 1900
    batch: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    clip: float = 1.0
    diffusion_weight: float = 0.5  # w in loss = AR + w * diffusion; 0 trains AR only
    eps: float = objective.DEFAULT_EPS
    noise_power: float = 1.0  # masking rates t = eps + (1 - eps) u^(1/p): p > 1 skews toward t = 1
    init: str = ""  # a checkpoint directory to continue from (its weights and tokenizer); "" = random init
    seed: int = 0
    bf16: bool = fast_bf16()  # CPU autocast to bf16 where the CPU has native bf16 matmuls
    eval_windows: int = 64
    eval_every: int = 250
    checkpoint_minutes: float = 5.0
    vocab_size: int = 4096


def model_config(vocab_size: int, block: int = 16) -> ModelConfig:
    """The bundled model's shape: ~7.6 M parameters (15 MB in bf16)."""
    ids = train_tok.SPECIAL_IDS
    return ModelConfig(hidden_size=256, intermediate_size=640, num_hidden_layers=8, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=vocab_size, rope_theta=1e4,
                       mask_token_id=ids["mask"], eos_token_id=ids["eos"], bos_token_id=ids["bos"],
                       block_length=block)


# ---- data ------------------------------------------------------------------------------------

def encode_files(tok, files) -> torch.Tensor:
    """One int32 stream: bos, the file's tokens, eos, for every file in order."""
    ids = []
    for f in files:
        ids += [tok.bos_token_id] + tok.encode(f.read(), add_bos=False) + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.int32)


def prepare_data(work_dir: str, vocab_size: int):
    """Train the tokenizer and encode both splits once; reuse them on resume."""
    from tridiff.tokenizer import Tokenizer

    tok_path = os.path.join(work_dir, "tokenizer.json")
    tokens_path = os.path.join(work_dir, TOKENS_FILE)
    train_files, held_files = corpus.split()
    if not os.path.exists(tok_path):
        train_tok.train_tokenizer((f.read() for f in train_files), vocab_size, work_dir)
    ids = train_tok.SPECIAL_IDS
    tok = Tokenizer(tok_path, bos_token_id=ids["bos"], eos_token_id=ids["eos"], mask_token_id=ids["mask"])
    if os.path.exists(tokens_path):
        data = torch.load(tokens_path)
    else:
        data = {"train": encode_files(tok, train_files), "heldout": encode_files(tok, held_files),
                "train_files": len(train_files), "heldout_files": len(held_files)}
        torch.save(data, tokens_path)
    return tok, data


def random_windows(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
    return torch.stack([stream[s:s + length] for s in starts.tolist()]).long()


def fixed_windows(stream: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """count evenly spaced windows: the same held-out set for every run."""
    step = (len(stream) - length) // count
    return torch.stack([stream[i * step:i * step + length] for i in range(count)]).long()


# ---- optimisation ----------------------------------------------------------------------------

def learning_rate(s: TrainSettings, step: int) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(net: TrainNetwork, s: TrainSettings) -> torch.optim.AdamW:
    decay = [p for p in net.parameters() if p.ndim >= 2]
    rest = [p for p in net.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.95))


def step_loss(net: TrainNetwork, windows: torch.Tensor, s: TrainSettings, gen: torch.Generator):
    """(loss, ar, diffusion) for one batch of windows [B, S+1]."""
    c = net.config
    S, L = windows.shape[1] - 1, c.block_length
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
        if s.diffusion_weight == 0:  # AR only: the clean stream alone
            causal = torch.ones(S, S, dtype=torch.bool).tril()
            logits = net(windows[:, :-1], torch.arange(S), causal)
            ar = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), windows[:, 1:].reshape(-1))
            return ar, ar.detach(), torch.zeros(())
        batch = objective.make_batch(windows, L, c.mask_token_id, eps=s.eps, power=s.noise_power, generator=gen)
        logits = net(batch.inputs, objective.two_stream_positions(S), objective.two_stream_mask(S, L))
        return objective.joint_loss(logits, batch, s.diffusion_weight)


@torch.no_grad()
def evaluate(net: TrainNetwork, windows: torch.Tensor, s: TrainSettings) -> dict:
    """Held-out AR loss and 1/t-weighted diffusion loss (fixed noise, uniform t whatever
    the training's noise_power, so runs compare), nats per token."""
    net.eval()
    gen = torch.Generator().manual_seed(12345)
    ar_sum = diff_sum = 0.0
    joint = dataclasses.replace(s, diffusion_weight=1.0, noise_power=1.0)
    for chunk in windows.split(s.batch):
        _, ar, diff = step_loss(net, chunk, joint, gen)
        ar_sum += float(ar) * len(chunk)
        diff_sum += float(diff) * len(chunk)
    net.train()
    return {"heldout_ar_loss": ar_sum / len(windows), "heldout_diffusion_loss": diff_sum / len(windows)}


# ---- progress, checkpoints, export -----------------------------------------------------------

def progress_bar(done: int, total: int, width: int = 24) -> str:
    k = int(width * done / max(total, 1))
    return "[" + "#" * k + "." * (width - k) + "]"


def fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def save_state(path: str, net, opt, step: int, settings, elapsed: float, *, key: str = "model") -> None:
    """The trained module (under `key`), the optimiser, the step, the settings (a
    dataclass) and the time spent, for resume_state."""
    tmp = path + ".tmp"
    torch.save({key: net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "settings": dataclasses.asdict(settings), "elapsed": elapsed}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def resume_state(path: str, net, opt, settings, *, key: str = "model", log=print) -> tuple:
    """Load what save_state wrote into net and opt: (step, elapsed seconds). A state
    written with other settings is refused (a resumed run must draw the same batches)."""
    state = torch.load(path)
    if state["settings"] != dataclasses.asdict(settings):
        raise ValueError(f"--resume: {path} was written with other settings: {state['settings']}")
    net.load_state_dict(state[key])
    opt.load_state_dict(state["optimizer"])
    log(f"resumed at step {state['step']}")
    return state["step"], state["elapsed"]


def add_settings_arguments(parser, settings_cls, *, skip=(), choices=None) -> None:
    """One --flag per field of the settings dataclass (--x / --no-x for bools, since
    bool("False") is true; `choices` restricts a field's values)."""
    for f in dataclasses.fields(settings_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif choices and f.name in choices:
            parser.add_argument(flag, choices=choices[f.name], default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)


def settings_from(args, settings_cls, *, skip=(), **fixed):
    """The settings dataclass from parsed add_settings_arguments flags (`fixed` overrides)."""
    return settings_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_cls)
                           if f.name not in skip}, **fixed)


def export(net: TrainNetwork, out_dir: str, tok_path: str, summary: dict) -> None:
    """config.json + model.safetensors (bf16) + tokenizer.json + training.json +
    demo_prompts.json (held-out excerpts for `tridiff demo`)."""
    import shutil

    from tridiff.checkpoint import SINGLE_FILE, save_safetensors
    from tridiff.tokenizer import Tokenizer

    os.makedirs(out_dir, exist_ok=True)
    net.config.write_json(os.path.join(out_dir, "config.json"))
    save_safetensors({k: v.detach().to(torch.bfloat16) for k, v in net.state_dict().items()},
                     os.path.join(out_dir, SINGLE_FILE))
    if os.path.abspath(tok_path) != os.path.abspath(os.path.join(out_dir, "tokenizer.json")):
        shutil.copyfile(tok_path, os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    heldout.write_demo_prompts(Tokenizer.from_pretrained(out_dir), out_dir)


def init_from(net: TrainNetwork, ckpt_dir: str) -> None:
    """Continue from a checkpoint written by export: its weights (upcast to the network's
    dtype) into net, read and shape-checked by tridiff.checkpoint as drafter_loop.load_base
    reads a base; its tokenizer was copied into work_dir before the data was encoded."""
    from tridiff import checkpoint as ckpt

    try:
        found = ckpt.scan(ckpt.weight_files(ckpt_dir))
        ckpt.check_tensors(found, ckpt.expected_shapes(net.config))
    except ckpt.CheckpointError as exc:
        raise ValueError(f"--init: {ckpt_dir} is not a checkpoint of this network's shape ({exc})") from None
    params = dict(net.named_parameters())
    ckpt.load_into(found, {name: params[name] for name in found})


def copy_init_tokenizer(ckpt_dir: str, work_dir: str) -> None:
    import shutil

    src, dst = os.path.join(ckpt_dir, "tokenizer.json"), os.path.join(work_dir, "tokenizer.json")
    if not os.path.exists(src):
        raise ValueError(f"--init: {ckpt_dir} has no tokenizer.json")
    if os.path.exists(dst):
        with open(src, "rb") as a, open(dst, "rb") as b:
            if a.read() != b.read():
                raise ValueError(f"--init: {work_dir} holds another tokenizer than {ckpt_dir}; use a new --work")
        return
    shutil.copyfile(src, dst)


def train(out_dir: str, work_dir: str, s: TrainSettings, *, resume: bool = False, threads: int | None = None,
          log=print) -> dict:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    os.makedirs(work_dir, exist_ok=True)
    if s.init:
        copy_init_tokenizer(s.init, work_dir)
    tok, data = prepare_data(work_dir, s.vocab_size)
    net = TrainNetwork(model_config(tok.vocab_size)).init_weights_(s.seed)
    heldout_windows = fixed_windows(data["heldout"], s.eval_windows, s.seq_len + 1)
    initial = None
    if s.init:
        init_from(net, s.init)
        # the continued checkpoint's own held-out losses (before any resume), for the summary
        initial = evaluate(net, heldout_windows, s)
    opt = make_optimizer(net, s)
    state_path = os.path.join(work_dir, STATE_FILE)
    start, elapsed0 = 0, 0.0
    if resume and os.path.exists(state_path):
        start, elapsed0 = resume_state(state_path, net, opt, s, log=log)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"corpus: {corpus.describe()}; {data['train_files']} train files ({len(data['train'])} tokens), "
        f"{data['heldout_files']} held out ({len(data['heldout'])} tokens)")
    log(f"model: {n_params / 1e6:.2f} M parameters; {s.steps} steps of {s.batch} x {s.seq_len} tokens; "
        f"diffusion weight {s.diffusion_weight}; {torch.get_num_threads()} threads")
    t0, last_ckpt = time.time(), time.time()
    tokens_done = 0
    with open(os.path.join(work_dir, LOG_FILE), "a") as log_file:
        for step in range(start, s.steps):
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
            windows = random_windows(data["train"], s.batch, s.seq_len + 1, gen)
            for group in opt.param_groups:
                group["lr"] = learning_rate(s, step)
            loss, ar, diff = step_loss(net, windows, s, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), s.clip)
            opt.step()
            tokens_done += s.batch * s.seq_len
            done = step + 1
            rec = {"step": done, "loss": float(loss.detach()), "ar": float(ar), "diffusion": float(diff)}
            if done % s.eval_every == 0 or done == s.steps:
                rec.update(evaluate(net, heldout_windows, s))
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            if done % 10 == 0 or done == s.steps or "heldout_ar_loss" in rec:
                run = time.time() - t0
                rate = tokens_done / max(run, 1e-9)
                eta = run / (done - start) * (s.steps - done)
                extra = f" | held-out AR {rec['heldout_ar_loss']:.3f}" if "heldout_ar_loss" in rec else ""
                log(f"{progress_bar(done, s.steps)} {done}/{s.steps} loss {rec['loss']:.3f} (AR {rec['ar']:.3f}, "
                    f"diffusion {rec['diffusion']:.3f}) {rate:.0f} tok/s ETA {fmt_time(eta)}{extra}")
            if time.time() - last_ckpt > 60 * s.checkpoint_minutes and done < s.steps:
                save_state(state_path, net, opt, done, s, elapsed0 + time.time() - t0)
                last_ckpt = time.time()
    elapsed = elapsed0 + time.time() - t0
    save_state(state_path, net, opt, s.steps, s, elapsed)
    final = evaluate(net, heldout_windows, s)
    summary = {"corpus": corpus.describe(), "train_files": data["train_files"],
               "heldout_files": data["heldout_files"], "train_tokens": len(data["train"]),
               "heldout_tokens": len(data["heldout"]), "parameters": n_params,
               "settings": dataclasses.asdict(s), "train_seconds": round(elapsed, 1),
               "python": sys.version.split()[0], "torch": torch.__version__, **final}
    if initial is not None:
        summary["init_heldout"] = initial
    export(net, out_dir, os.path.join(work_dir, "tokenizer.json"), summary)
    log(f"done in {fmt_time(elapsed)}: held-out AR loss {final['heldout_ar_loss']:.3f}, "
        f"diffusion loss {final['heldout_diffusion_loss']:.3f}; wrote {out_dir}")
    return summary
