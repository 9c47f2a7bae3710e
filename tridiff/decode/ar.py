"""Autoregressive decoding (docs/spec.md section 3.1).

    prefill the prompt (KV committed); tok <- pick(last logits); emit tok
    while a row runs:   # one graph-capturable step
        logits <- CAUSAL forward of [tok] (KV committed); tok <- pick(logits); emit tok
        a row stops at eos or max_new_tokens
"""
from __future__ import annotations

import torch

from tridiff.decode.state import RunState
from tridiff.modes import Mode


class AR(RunState):
    name = "ar"
    graphable = True

    def decode(self):
        self.keep("tok", self.pick(self.prefill()))   # state buffer: the last token of every row
        self.count(self.active)
        self.emit(self.tok[:, None], self.active.long())
        self.active &= (self.tok != self.eos) & (self.n_out < self.max_new)
        step = self.stepper(self.ar_step)
        for it in range(self.max_new - 1):
            if not self.running(it):
                break
            step()

    def ar_step(self):
        """One AR iteration on the state buffers (graph-capturable)."""
        act = self.active.clone()
        logits = self.forward(self.tok[:, None], modes=Mode.CAUSAL, kv="commit", q_lens=act.int())
        nxt = self.pick(logits[:, 0])
        self.count(act)
        self.tok.copy_(torch.where(act, nxt, self.tok))
        self.emit(self.tok[:, None], act.long())
        self.active &= (self.tok != self.eos) & (self.n_out < self.max_new)
