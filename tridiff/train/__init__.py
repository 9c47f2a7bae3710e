"""Training of a small tri-mode model (the bundled one) with the family's joint objective.

    python -m tridiff.train --out DIR [--steps N] [--resume] [--no-bf16]   (--help: every setting)

corpus.py    the Python standard library's own sources, split by file
tokenizer.py a byte-level BPE trained on the training split, special ids as released
network.py   the same network as tridiff.model, differentiable, dense attention mask
objective.py the two-stream layout, the masking schedule and the joint loss
loop.py      the optimiser loop: progress, checkpoints, resume, export
drafter.py   the drafter adapter (linear_spec_lora): LoRA network, draft masking schedule, loss
drafter_loop.py  its training loop (python -m tridiff.train --drafter-lora --base DIR --out DIR)

Uses tridiff.config, tridiff.rotary and tridiff.checkpoint; nothing below imports it.
"""
