"""Block diffusion (docs/spec.md section 3.2); runs eagerly (its pass counts depend on the data).

    prefill the prompt (KV committed, not counted); seed <- pick(last logits)
    for each block of L new tokens:
        block <- [seed, MASK x (L-1)]
        until every row's block is settled (no mask left, or an eos with no mask before it):
            BIDIR_BLOCK forward of block (adapter on, nothing committed);
            unmask by confidence (threshold, or the top-k schedule over L steps)
        CAUSAL forward of block (KV committed); seed <- pick(its last logits); emit block
"""
from __future__ import annotations

import torch

from tridiff import ops
from tridiff.decode.state import RunState
from tridiff.modes import Mode


class Diffusion(RunState):
    name = "diffusion"
    block_multiple = True

    def decode(self):
        L, mask = self.block_length, self.mask
        seed = self.pick(self.prefill())   # the prefill is not counted in diffusion NFE
        self.rng_offset += 1
        for blk_i in range(self.max_new // L):
            if not self.running(blk_i):
                break
            block = self.block_of(seed)
            todo = self.active & (block == mask).any(1)
            sched = None
            if self.threshold is None:
                sched = ops.num_transfer_schedule((block == mask).sum(1), L)
            for step in range(L):
                if step and step % self.check_every == 0 and not bool(todo.any()):
                    break
                logits = self.forward(block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
                x0, conf = self.confidence(logits)
                kw = ({"threshold": float(self.threshold)} if sched is None
                      else {"num_transfer": sched[:, step].contiguous()})
                new, _ = ops.diffusion_unmask(block, x0, conf, mask_id=mask, backend=self.backend, **kw)
                block = torch.where(todo[:, None], new, block)
                self.count(todo)
                todo &= ~block_settled(block, mask, self.eos)
            act = self.active.clone()
            logits = self.forward(block, modes=Mode.CAUSAL, kv="commit", q_lens=act.int() * L)
            seed = torch.where(act, self.pick(logits[:, L - 1]), seed)
            self.count(act)
            self.iterations += act
            self.emit(block, act.long() * L)
            self.active &= ~(block == self.eos).any(1)


def block_settled(block, mask_id, eos_id):
    """bool [B]: no mask left, or an eos with no mask before it (docs/spec.md section 3.2 early stop)."""
    is_mask = block == mask_id
    no_mask_before = torch.cumsum(is_mask.int(), 1) == 0
    eos_clear = (block == eos_id) & no_mask_before if eos_id >= 0 else torch.zeros_like(is_mask)
    return ~is_mask.any(1) | eos_clear.any(1)
