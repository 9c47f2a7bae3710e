"""ACCEPTANCE ORACLE for linear self-speculation (numbers from here are ORACLE numbers).

Random weights accept almost nothing, so the real loop says little about speculative
speed. The oracle first decodes the AR greedy continuation of the prompt, then runs the
real linear self-speculation loop (draft forward with the adapter, verify forward,
accept_linear, rollback -- every kernel of the real iteration) but replaces the draft's
tokens with the AR continuation for a per-iteration number of positions drawn with the
target mean (6.82 tokens per iteration), and a surely-wrong token after it. The
verifier then accepts what it really accepts: the achieved mean is measured, not assumed
(it can fall short of the drawn mean where bf16 batch shapes change an argmax).
All state stays on the device: one host read at the end.
"""
from __future__ import annotations

import time

import torch

from bench.e2e_steps import draw_accept_lengths
from tridiff.modes import Mode


def ar_continuation(model, prompt: list, n: int, backend: str) -> torch.Tensor:
    from tridiff.generate import generate

    out = generate(model, [prompt], mode="ar", max_new_tokens=n, eos_id=-1, backend=backend)
    return torch.tensor(out.results[0].tokens, dtype=torch.int64, device=model.device)


def oracle_linear(model, prompt: list, iters: int, L: int, mean_accept: float, backend: str = "auto",
                  seed: int = 0) -> dict:
    import tridiff.ops as ops

    dev, V, mask = model.device, model.config.vocab_size, int(model.config.mask_token_id)
    drawn = draw_accept_lengths(iters, mean_accept, L, seed=seed)
    need = sum(drawn) + 2 * L
    cont = ar_continuation(model, prompt, need, backend)  # cont[0] is the first generated token
    cont = torch.cat([cont, cont.new_zeros(2 * L)])[None]  # [1, need + 2L]
    wrong = (cont + 1) % V                                     # never equal to cont
    c_drawn = torch.tensor(drawn, dtype=torch.int64, device=dev) - 1  # drafts to get right

    def prefill():
        cache = model.new_cache(1, len(prompt) + need + 2 * L)
        tok = torch.tensor([prompt], dtype=torch.int64, device=dev)
        model.forward(tok, cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
        return cache

    def run_loop(cache):
        m = torch.zeros(1, dtype=torch.int64, device=dev)     # index of the current seed in cont
        ar_idx = torch.arange(L, device=dev)[None]
        acc_sum = torch.zeros(1, dtype=torch.int64, device=dev)
        for it in range(iters):
            P = cache.lens.clone()
            seed_block = torch.full((1, L), mask, dtype=torch.int64, device=dev)
            seed_block[:, 0] = cont[0, m]
            d_logits = model.forward(seed_block, cache, modes=Mode.BIDIR_BLOCK, kv="none", adapter=True,
                                     backend=backend)
            ops.diffusion_confidence(d_logits, backend=backend)  # the draft's own work, then overridden
            idx = (m[:, None] + ar_idx).clamp(max=cont.shape[1] - 1)
            block = torch.where(ar_idx <= c_drawn[it], cont[0, idx], wrong[0, idx])
            logits = model.forward(block, cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
            res = ops.accept_linear(logits, block[:, 1:], P, eos_id=-1, backend=backend)
            cache.rollback_(res.new_cache_lens.to(torch.int32))
            m += res.n_accepted.long()
            acc_sum += res.n_accepted.long()
        return acc_sum

    run_loop(prefill())  # warm-up (kernels compiled, allocator settled)
    cache = prefill()    # the prefill stays outside the timed region
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    acc = run_loop(cache)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = int(acc.item())
    return dict(seconds=seconds, iterations=iters, tokens=tokens, forwards=2 * iters,
                tokens_per_forward=tokens / (2 * iters),
                drawn_mean=sum(drawn) / iters, achieved_mean=tokens / iters,
                tok_per_s=tokens / seconds, ms_per_iteration=1e3 * seconds / iters)
