"""Pruned (anchored) quadratic self-speculation (docs/spec.md section 3.5); greedy only.

    first forward: [prompt | MASK x L] as in quadratic self-speculation (CAUSAL_THEN_BIDIR,
        K = L), prompt KV committed; draft d <- the AR reading of the last prompt row, then
        the diffusion reading of block rows 1..L-1, with their confidences c; emit d_0
    while a row runs:   # one graph-capturable step
        S <- the k most likely acceptance lengths - 1 under c (anchor 0 forced), or the fixed S
        ANCHORED_QUADRATIC(S) forward of [d_0..d_{L-1} | MASK x L for each anchor]:
            the clean slots verify d; anchor a's masks draft the block after d_0..d_a
        accept the longest agreeing prefix (n tokens; the clean slots' KV is already at
        P..P+n-1: commit n); emit the n AR tokens after it (d_1..d_{n-1} and the AR
        prediction d'_0, cut at eos); d, c <- the next draft from the largest anchor <= n-1

Emitting d'_0 when it is predicted (rather than when it is verified, as section 3.4
writes it) gives the same tokens and lets accept_linear do the verify.
"""
from __future__ import annotations

import torch

from tridiff import ops
from tridiff.decode import anchors as anc
from tridiff.decode.quadratic import QuadraticSpec
from tridiff.modes import Mode


class AnchoredSpec(QuadraticSpec):
    """Quadratic self-speculation with its forward pruned to k anchor groups (same name,
    flags, first forward and trim as QuadraticSpec)."""

    @staticmethod
    def extra_len(max_new, L, anchors=None):
        # the last iteration may commit up to L-1 past max_new_tokens (trimmed later), and
        # a finished row keeps running its forward (L(k+1) scratch slots)
        return max_new + L - 1 + L * (num_anchors(anchors) + 1)

    def decode(self):
        logits = self.draft_forward()
        first = self.pick(logits[:, 0])
        x0, conf = self.confidence(logits, greedy=True)                     # rows 1.. are the block's
        self.keep("draft", torch.cat([first[:, None], x0[:, 1:]], dim=1))   # state: draft per row
        self.keep("conf", conf)                                             # state: its confidences
        self.emit(first[:, None], torch.ones_like(self.n_out))
        if self.eos >= 0:
            self.active &= first != self.eos
        self.active &= self.n_out < self.max_new
        if isinstance(self.shape.anchors, tuple):
            self.keep("fixed", anc.fixed_anchors(self.shape.anchors, self.batch, self.dev))
        self.iterate(self.anchored_step)

    def anchored_step(self):
        """One ANCHORED_QUADRATIC forward, accept, commit, emit, next draft (graph-capturable)."""
        L, B, draft, conf = self.block_length, self.batch, self.draft, self.conf
        act = self.active.clone()
        P = self.cache.lens.clone()
        S = self.fixed if isinstance(self.shape.anchors, tuple) else anc.choose_anchors(conf, self.shape.anchors)
        k = S.shape[1]
        tok = torch.full((B, L * (k + 1)), self.mask, dtype=torch.int64, device=self.dev)
        tok[:, :L] = draft
        logits = self.forward(tok, modes=Mode.ANCHORED_QUADRATIC, mode_args=anc.anchor_bitmask(S), kv="write",
                              positions=P.long()[:, None] + anc.slot_offsets(S, L))
        self.count(act)
        res = ops.accept_linear(logits[:, :L], draft[:, 1:], P, eos_id=self.eos, backend=self.backend)
        n = torch.where(act, res.n_accepted, 0)
        self.cache.commit_(n.to(torch.int32))
        self.emit(res.tokens[:, :L], torch.where(act, res.n_emitted.long(), 0))
        self.accepted += n.long()
        self.iterations += act
        x0, c = self.confidence(logits[:, L:], greedy=True)
        new_draft, new_conf = anc.next_draft(res.next_token, x0.reshape(B, k, L), c.reshape(B, k, L), S,
                                             res.n_accepted, self.mask)
        draft.copy_(torch.where(act[:, None], new_draft, draft))
        conf.copy_(torch.where(act[:, None], new_conf, conf))
        self.active &= ~res.hit_eos & (self.n_out < self.max_new)


def num_anchors(anchors) -> int:
    """k for a generate(anchors=...) value: an int k or a tuple of anchors."""
    return len(anchors) if isinstance(anchors, tuple) else int(anchors)
