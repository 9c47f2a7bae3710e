"""Linear self-speculation (docs/spec.md section 3.3).

    prefill the prompt (KV committed); seed <- pick(last logits); emit seed
    while a row runs:
        block <- [seed, MASK x (L-1)]
        draft: BIDIR_BLOCK forward(s) of block with the adapter, nothing committed: one
               forward fills every mask (no threshold), or threshold passes until none is left
        verify: CAUSAL forward of block (KV committed for all L); accept the longest
               agreeing prefix (greedy / reference compare, or lossless rejection sampling)
        roll the cache back to the accepted length; emit; seed <- the verify's next token
"""
from __future__ import annotations

import torch

from tridiff import ops
from tridiff.decode import hooks
from tridiff.decode.state import RunState
from tridiff.modes import Mode


class LinearSpec(RunState):
    name = "linear-spec"
    graphable = True
    speculative = True
    zero_threshold = True   # 0 (like None): one draft forward fills every mask

    @staticmethod
    def extra_len(max_new, L, anchors=None):
        return max_new + L          # verify writes L slots from P <= prompt+new-1

    def decode(self):
        B, L, dev = self.batch, self.block_length, self.dev
        self.keep("seed_tok", self.pick(self.prefill()))   # state: next seed per row (uncommitted)
        self.count(self.active)
        self.emit(self.seed_tok[:, None], self.active.long())
        self.active &= (self.seed_tok != self.eos) & (self.n_out < self.max_new)
        # Per-iteration state shared by the pieces of a threshold draft.
        self.keep("act", torch.zeros(B, dtype=torch.bool, device=dev))
        self.keep("todo", torch.zeros(B, dtype=torch.bool, device=dev))
        self.keep("block_start", torch.zeros(B, dtype=torch.int32, device=dev))
        self.keep("block", torch.full((B, L), self.mask, dtype=torch.int64, device=dev))
        if not self.threshold:
            step = self.stepper(self.linear_step)
            for it in range(self.max_new):   # every iteration emits >= 1 token per running row
                if not self.running(it):
                    break
                step()
            return
        # Threshold draft: a data-dependent number of passes (like the finish check, the
        # "any mask left" check is a host read every check_every passes, between graphs).
        if self.lossless_sampling():
            V = self.model.config.vocab_size
            ldt = torch.float64 if self.model.dtype == torch.float64 else torch.float32
            self.keep("draft_logits", torch.zeros((B, L, V), dtype=ldt, device=dev))
        first = self.stepper(self.linear_begin_and_pass)
        more = self.stepper(self.draft_pass)
        verify = self.stepper(self.linear_verify)
        for it in range(self.max_new):
            if not self.running(it):
                break
            first()
            for step in range(1, L):   # each pass fills >= 1 mask or ends by the no-hang rule
                if not self.masks_left(step):
                    break
                more()
            verify()

    def masks_left(self, step):
        """Host check, every `check_every` draft passes: does any row still draft?"""
        return hooks.host_check(self, step, lambda: (step % self.check_every) or bool(self.todo.any()))

    def lossless_sampling(self):
        return self.temperature > 0 and self.rule == "lossless"

    def linear_step(self):
        """One iteration, one-forward draft: draft + fill, verify, accept, roll back,
        emit, state update (graph-capturable)."""
        self.linear_begin()
        logits = self.forward(self.block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
        x0, _ = self.confidence(logits)   # every mask takes its argmax (mask id included)
        self.count(self.act)
        self.block.copy_(torch.where(self.block == self.mask, x0, self.block))
        self.linear_verify(logits)

    def linear_begin(self):
        self.act.copy_(self.active)
        self.block_start.copy_(self.cache.lens)
        self.block.copy_(self.block_of(self.seed_tok))
        self.todo.copy_(self.act & (self.block == self.mask).any(1))

    def linear_begin_and_pass(self):
        self.linear_begin()
        if self.lossless_sampling():
            self.draft_logits.zero_()
        self.draft_pass()

    def draft_pass(self):
        """One threshold draft pass over self.block for the rows in self.todo (adapter on,
        nothing committed); self.draft_logits keeps the logits each position was drawn from
        (they feed the lossless acceptance)."""
        mask, block, todo = self.mask, self.block, self.todo
        logits = self.forward(block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=self.adapter)
        x0, conf = self.confidence(logits)
        if self.lossless_sampling():
            # choose WHICH positions to fill by greedy confidence, so that the choice
            # does not depend on the sampled values (keeps the draft law = softmax/T)
            conf = self.confidence(logits, greedy=True)[1]
        new, moved = ops.diffusion_unmask(block, x0, conf, mask_id=mask, threshold=float(self.threshold),
                                          backend=self.backend)
        # No-hang rule: a pass that changes nothing (every chosen position predicted the
        # mask id) fills all remaining masks with their best non-mask token.
        stuck = todo & (new == block).all(1)
        no_mask = logits.clone()
        no_mask[..., mask] = float("-inf")
        fx0, _ = self.confidence(no_mask)
        forced = stuck[:, None] & (block == mask)
        new = torch.where(forced, fx0, new)
        if self.lossless_sampling():
            drawn = todo[:, None, None] & (moved | forced)[..., None]
            self.draft_logits.copy_(torch.where(drawn, torch.where(forced[..., None], no_mask, logits),
                                                self.draft_logits))
        block.copy_(torch.where(todo[:, None], new, block))
        self.count(todo)
        self.forced_fills += stuck
        todo &= (block == mask).any(1)

    def linear_verify(self, draft_logits=None):
        """Verify forward (KV committed for all L), accept, roll back, emit, next seed."""
        L, act, block, start = self.block_length, self.act, self.block, self.block_start
        if draft_logits is None and self.lossless_sampling():
            draft_logits = self.draft_logits
        offset = self.rng_offset.clone()   # the verify's own random offset
        logits = self.forward(block, modes=Mode.CAUSAL, kv="commit", q_lens=act.int() * L)
        self.count(act)
        T = self.temperature
        if not self.lossless_sampling():
            res = ops.accept_linear(logits, block[:, 1:], start, eos_id=self.eos, temperature=T,
                                    seed=self.seeds if T else None, offset=offset if T else None,
                                    backend=self.backend)
        else:
            res = ops.accept_rejection(logits, draft_logits[:, 1:], block[:, 1:], start, eos_id=self.eos,
                                       temperature=T, seed=self.seeds, offset=offset, backend=self.backend)
        self.cache.rollback_(torch.where(act, res.new_cache_lens.to(torch.int32), self.cache.lens))
        self.emit(res.tokens[:, :L], torch.where(act, res.n_emitted.long(), 0))
        self.accepted += torch.where(act, res.n_accepted.long(), 0)
        self.iterations += act
        self.seed_tok.copy_(torch.where(act, res.next_token, self.seed_tok))
        self.active &= ~res.hit_eos & (self.n_out < self.max_new)
