"""Building blocks of the end-to-end benchmark: a random-weight model, a cache filled to
P, and one callable per decoding step (AR step, draft/verify forwards, a whole linear or
quadratic self-speculation iteration, a diffusion denoise step), each leaving the cache
length as it found it so it can be timed over and over.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile

import torch

from tridiff.modes import Mode


def build_model(preset_name: str, device: torch.device, dtype, adapter_rank: int, seed: int = 0):
    """Random bf16 weights of the preset's shapes, with the drafter adapter.

    tiny (CPU): written with tridiff.checkpoint.write_random_checkpoint and loaded with
    Model.from_pretrained, which exercises the released layout end to end. 8b (GPU):
    filled on the device with the same scaling rules (fan-in scaled projections, norms
    near 1, head std ~4/sqrt(hidden)): writing 16 GB to disk first would spend minutes
    of a short GPU lease on file I/O."""
    from tridiff.config import LoraConfig, preset
    from tridiff.model import Model

    if preset_name == "tiny":
        from tridiff.checkpoint import write_random_checkpoint

        with tempfile.TemporaryDirectory() as d:
            write_random_checkpoint(d, "tiny", seed=seed, dtype=torch.float32, with_adapter=True,
                                    with_tokenizer=False)
            return Model.from_pretrained(d, device=device, dtype=dtype)
    cfg = dataclasses.replace(preset(preset_name), lora=LoraConfig(rank=adapter_rank, alpha=4.0 * adapter_rank))
    model = Model(cfg, device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, device=device, generator=g))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, device=device, generator=g))
            else:
                scale = (4.0 if name.startswith("diffusion_head") else (0.25 if "lora" in name else 1.0))
                p.copy_(torch.randn(p.shape, device=device, generator=g) * (scale / math.sqrt(p.shape[1])))
    return model


def weight_bytes(model, with_adapter: bool = False) -> int:
    """Bytes one decode step must stream: every weight except the embedding table (a
    decode step reads B rows of it), the adapter only for drafting forwards."""
    total = 0
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            continue
        if "lora" in name and not with_adapter:
            continue
        total += p.numel() * p.element_size()
    return total


def kv_bytes(model, B: int, P: int) -> int:
    c = model.config
    return 2 * c.num_hidden_layers * B * P * c.num_key_value_heads * c.head_dim * model.dtype.itemsize


def filled_cache(model, B: int, P: int, extra: int, seed: int = 1):
    """A cache with P committed random (never zero) keys/values per row."""
    cache = model.new_cache(B, P + extra)
    g = torch.Generator(device=cache.k.device).manual_seed(seed)
    for t in (cache.k, cache.v):
        t.copy_(torch.randn(t.shape, device=t.device, generator=g).to(t.dtype))
    cache.lens.fill_(P)
    return cache


class Steps:
    """One step callable per decoding stage over a cache held at length P."""

    def __init__(self, model, B: int, P: int, L: int, quad_L: int, backend: str = "auto"):
        import tridiff.ops as ops

        self.ops, self.model, self.B, self.P, self.L, self.qL = ops, model, B, P, L, quad_L
        self.backend = backend
        c = model.config
        self.mask = int(c.mask_token_id)
        dev = model.device
        self.cache = filled_cache(model, B, P, extra=max(L, quad_L * (quad_L + 1)) + 1)
        self.P0 = self.cache.lens.clone()
        g = torch.Generator(device=dev).manual_seed(3)
        ids = lambda *s: torch.randint(200, c.vocab_size, s, device=dev, generator=g)  # noqa: E731
        self.tok = ids(B, 1)
        self.block = torch.full((B, L), self.mask, dtype=torch.int64, device=dev)
        self.block[:, 0] = ids(B)
        self.drafted = ids(B, L)
        self.qdraft = ids(B, quad_L)
        a = torch.arange(quad_L, device=dev)[:, None]
        b = torch.arange(quad_L + 1, device=dev)[None, :]
        self.q_offsets = (a + b).reshape(1, -1)
        self.verify_slots = ops.quadratic_verify_slots(quad_L, B, device=dev)

    def fwd(self, tokens, **kw):
        return self.model.forward(tokens, self.cache, backend=self.backend, **kw)

    def ar_step(self):
        logits = self.fwd(self.tok, modes=Mode.CAUSAL, kv="write")
        return self.ops.sample(logits[:, 0], backend=self.backend)

    def draft_forward(self):
        logits = self.fwd(self.block, modes=Mode.BIDIR_BLOCK, kv="none", adapter=True)
        x0, _ = self.ops.diffusion_confidence(logits, backend=self.backend)
        return torch.where(self.block == self.mask, x0, self.block)

    def verify_forward(self):
        return self.fwd(self.drafted, modes=Mode.CAUSAL, kv="write")

    def linear_iteration(self):
        """Draft forward + verify forward + acceptance + rollback (generate's linear loop)."""
        block = self.draft_forward()
        logits = self.fwd(block, modes=Mode.CAUSAL, kv="commit")
        res = self.ops.accept_linear(logits, block[:, 1:], self.P0, eos_id=-1, backend=self.backend)
        self.cache.rollback_(res.new_cache_lens.to(torch.int32))
        self.cache.lens.copy_(self.P0)  # restore for the next rep
        return res.next_token

    def quadratic_iteration(self):
        """One QUADRATIC forward + acceptance + KV compaction + commit."""
        B, L = self.B, self.qL
        qtok = torch.full((B, L, L + 1), self.mask, dtype=torch.int64, device=self.tok.device)
        qtok[:, :, 0] = self.qdraft
        logits = self.fwd(qtok.reshape(B, -1), modes=Mode.QUADRATIC, mode_args=L, kv="write",
                          positions=self.P0.long()[:, None] + self.q_offsets)
        res = self.ops.accept_quadratic(logits, self.qdraft, self.P0, eos_id=-1, backend=self.backend)
        self.cache.compact_(self.verify_slots)
        self.cache.commit_(res.n_accepted.to(torch.int32))
        self.cache.lens.copy_(self.P0)
        return res.next_draft

    def diffusion_step(self, threshold: float = 0.9):
        logits = self.fwd(self.block, modes=Mode.BIDIR_BLOCK, kv="none")
        x0, conf = self.ops.diffusion_confidence(logits, backend=self.backend)
        return self.ops.diffusion_unmask(self.block, x0, conf, mask_id=self.mask, threshold=threshold,
                                         backend=self.backend)


def draw_accept_lengths(n: int, mean: float, L: int, seed: int = 0) -> list:
    """Per-iteration accepted lengths a in [1, L] (a-1 drafts accepted + 1 token), drawn
    from a geometric law truncated to [1, L] whose mean is `mean` (bisection on its ratio)."""
    ks = torch.arange(1, L + 1, dtype=torch.float64)

    def law(r):
        w = r ** (ks - 1)
        return w / w.sum()

    lo, hi = 1e-6, 1.0 - 1e-9
    if mean >= float((law(hi) * ks).sum()):
        probs = law(hi)
    else:
        for _ in range(100):
            mid = (lo + hi) / 2
            if float((law(mid) * ks).sum()) < mean:
                lo = mid
            else:
                hi = mid
        probs = law((lo + hi) / 2)
    g = torch.Generator().manual_seed(seed)
    return (torch.multinomial(probs, n, replacement=True, generator=g) + 1).tolist()
