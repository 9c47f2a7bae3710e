"""Quadratic self-speculation (docs/spec.md section 3.4); greedy only.

    first forward: [prompt | MASK x L], prompt causal and block bidirectional
        (CAUSAL_THEN_BIDIR, K = L), prompt KV committed; draft <- the AR reading of the
        last prompt row, then the diffusion reading of block rows 1..L-1
    while a row runs:   # one graph-capturable step
        QUADRATIC(L) forward of L copies of [d_a, MASK x L] at positions P + a + b:
            verifies the draft and drafts the next block after every possible accept length
        accept the longest agreeing prefix; keep its d-slot KV (compacted to P..P+L-1);
        emit; draft <- the next draft for the accepted length
"""
from __future__ import annotations

import torch

from tridiff import ops
from tridiff.decode.state import RunState
from tridiff.modes import Mode


class QuadraticSpec(RunState):
    name = "quadratic-spec"
    graphable = True
    speculative = True
    block_multiple = True
    greedy_only = True

    @staticmethod
    def extra_len(max_new, L, anchors=None):
        # the last iteration may commit up to L-1 past max_new_tokens (trimmed later), and
        # a finished row keeps running its QUADRATIC forward (L*(L+1) scratch slots)
        return max_new + L - 1 + L * (L + 1)

    def draft_forward(self):
        """The first forward, [prompt | MASK x L] with the prompt causal and the block
        bidirectional; commits the prompt and counts the forward. Returns the draft's
        logits [B, L, V]: row 0 the last prompt row (its AR reading is d_0), row j > 0 block
        row j (its diffusion reading is d_j)."""
        L, B, dev = self.block_length, self.batch, self.dev
        tok = self.padded_prompts(int(max(len(p) for p in self.prompts)) + L)
        q = self.prompt_lens + L
        logits = self.forward(tok, modes=Mode.CAUSAL_THEN_BIDIR, mode_args=L, kv="write", q_lens=q)
        self.cache.commit_(self.prompt_lens)
        self.count(self.active)
        rows = torch.arange(B, device=dev)[:, None]
        cols = self.prompt_lens.long()[:, None] + torch.arange(L, device=dev)[None, :]
        cols[:, 0] -= 1
        return logits[rows, cols]

    def decode(self):
        L, B, dev = self.block_length, self.batch, self.dev
        self.keep("draft", self.pick(self.draft_forward()))   # state: the current draft per row
        a = torch.arange(L, device=dev)[:, None]
        b = torch.arange(L + 1, device=dev)[None, :]
        self.keep("offsets", (a + b).reshape(1, -1))   # slot (a, b) sits at position P + a + b
        self.keep("verify_slots", ops.quadratic_verify_slots(L, B, device=dev))
        self.iterate(self.quadratic_step)

    def iterate(self, fn):
        """Run step fn (eager or as its graph) until no row runs."""
        step = self.stepper(fn)
        for it in range(self.max_new):   # every iteration emits >= 1 token per running row
            if not self.running(it):
                break
            step()

    def quadratic_step(self):
        """One QUADRATIC(L) forward, accept, keep the d-slot KV, emit (graph-capturable)."""
        L, B, draft = self.block_length, self.batch, self.draft
        act = self.active.clone()
        P = self.cache.lens.clone()
        qtok = torch.full((B, L, L + 1), self.mask, dtype=torch.int64, device=self.dev)
        qtok[:, :, 0] = draft
        logits = self.forward(qtok.reshape(B, -1), modes=Mode.QUADRATIC, mode_args=L, kv="write",
                              positions=P.long()[:, None] + self.offsets)
        self.count(act)
        res = ops.accept_quadratic(logits, draft, P, eos_id=self.eos, backend=self.backend)
        self.cache.compact_(self.verify_slots)          # d slots -> P .. P+L-1
        self.cache.commit_(torch.where(act, res.n_accepted.to(torch.int32), 0))
        self.emit(res.tokens, torch.where(act, res.n_emitted.long(), 0))
        self.accepted += torch.where(act, res.n_accepted.long(), 0)
        self.iterations += act
        draft.copy_(torch.where(act[:, None], res.next_draft, draft))
        self.active &= ~res.hit_eos & (self.n_out < self.max_new)

    def trim(self, tokens):
        return super().trim(tokens[:self.max_new])   # the reference returns exactly max_new_tokens
