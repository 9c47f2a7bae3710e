"""python -m tridiff.train --out DIR [--work DIR] [--resume] [--steps N] [--objective joint|ar]
                         [--init CKPT_DIR] [--noise-power P] [--bf16 | --no-bf16]
   python -m tridiff.train --drafter-lora --base DIR --out DIR [...]   (tridiff.train.drafter_loop)"""
from __future__ import annotations

import argparse
import os
import sys

from tridiff.train.loop import TrainSettings, add_settings_arguments, settings_from, train


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--drafter-lora" in argv:   # the drafter adapter of a trained base: its own options
        from tridiff.train.drafter_loop import main as drafter_main

        return drafter_main([a for a in argv if a != "--drafter-lora"])
    p = argparse.ArgumentParser(prog="python -m tridiff.train",
                                description="Train the small tri-mode model on the Python standard library.")
    p.add_argument("--out", required=True, help="where the checkpoint (config.json, model.safetensors, "
                                                "tokenizer.json) is written at the end")
    p.add_argument("--work", default=None, help="tokenizer, encoded corpus, checkpoints, log (default OUT/../"
                                                "<name>.work)")
    p.add_argument("--resume", action="store_true", help="continue from WORK/train_state.pt")
    p.add_argument("--objective", choices=("joint", "ar"), default="joint",
                   help="joint: AR + 0.5 x masked diffusion (the shipped model); ar: the AR-only baseline")
    p.add_argument("--threads", type=int, default=None, help="default: every core")
    add_settings_arguments(p, TrainSettings, skip=("diffusion_weight",))   # set by --objective
    a = p.parse_args(argv)
    settings = settings_from(a, TrainSettings, skip=("diffusion_weight",),
                             **({"diffusion_weight": 0.0} if a.objective == "ar" else {}))
    out = os.path.abspath(a.out)
    work = a.work or out.rstrip("/") + ".work"
    train(out, work, settings, resume=a.resume, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
