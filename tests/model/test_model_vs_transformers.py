"""tridiff.model against transformers' Ministral3ForCausalLM with the same weights.

transformers' Ministral3Attention applies the llama-4 scale as
q *= 1 + beta * log(1 + floor(position_ids / original_max_position_embeddings)) after
rotary, by position_ids: the same rule as docs/spec.md section 1. Its YaRN attention factor is
mscale(s, mscale)/mscale(s, mscale_all_dim) = 1.0 for these configs. Its rotary
angles are computed in float32 even for an fp64 model, so its fp64 logits carry
fp32-level rotary error; the error bound compares against that same truth.

Custom patterns: transformers 5 takes a 4-D attention_mask [B, 1, Tq, Tk] as given
(masking_utils returns it untouched); with eager attention it is added to the
scores, so we pass 0 / finfo.min.
"""
import dataclasses

import pytest
import torch

from tridiff import Mode
from tridiff.rotary import yarn_inv_freq
from tests.model.support import (
    DEVICE, assert_within_torch_error, causal_visible, err, hf_logits, hf_model, ours, run_or_skip,
    tiny_config, with_lora,
)

pytest.importorskip("transformers", reason="needs transformers for the reference model")


def tokens(B, T, vocab, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def prefill(model, toks, lens, backend, cache=None):
    """Causal prefill of rows with different lengths (q_lens), committed."""
    cache = cache or model.new_cache(toks.shape[0], 192)
    q_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    model(toks, cache, modes=Mode.CAUSAL, q_lens=q_lens, kv="commit", backend=backend)
    return cache


def test_yarn_inverse_frequencies_match_transformers():
    c = tiny_config()
    hf = hf_model(c, torch.float32)
    assert hf.model.rotary_emb.attention_scaling == 1.0 == c.attention_factor
    ours_freq = yarn_inv_freq(c, torch.float32)
    assert torch.equal(ours_freq, hf.model.rotary_emb.inv_freq.cpu())
    # YaRN is really active: some dimensions interpolated (divided by the factor), some not.
    plain = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    ratio = plain / ours_freq
    assert torch.isclose(ratio, torch.ones(())).any() and torch.isclose(ratio, torch.tensor(c.factor)).any()


def test_causal_logits_match_transformers(backend):
    c = tiny_config()
    T = 150  # positions 0..149 cross both llama-4 thresholds (64, 128)
    assert T > 2 * c.original_max_position_embeddings
    toks = tokens(2, T, c.vocab_size)
    m32 = ours(c, torch.float32)
    got = run_or_skip(m32, toks, m32.new_cache(2, T), modes=Mode.CAUSAL, backend=backend)
    truth = hf_logits(hf_model(c, torch.float64), toks)
    base = hf_logits(hf_model(c, torch.float32), toks)
    assert got.dtype == torch.float32 and got.shape == (2, T, c.vocab_size)
    assert_within_torch_error(got, truth, base, "fp32 model vs transformers fp64")
    m64 = ours(c, torch.float64)
    got64 = run_or_skip(m64, toks, m64.new_cache(2, T), modes=Mode.CAUSAL, backend=backend)
    assert_within_torch_error(got64, truth, base, "fp64 model vs transformers fp64")


def test_llama4_scale_changes_logits_only_past_threshold():
    c = tiny_config()
    T = 100
    toks = tokens(1, T, c.vocab_size, seed=1)
    a = ours(c, torch.float32)(toks, ours(c, torch.float32).new_cache(1, T))
    c0 = dataclasses.replace(c, llama_4_scaling_beta=0.0)
    m0 = ours(c0, torch.float32)
    b = m0(toks, m0.new_cache(1, T))
    t0 = c.original_max_position_embeddings
    assert torch.equal(a[:, :t0], b[:, :t0])  # scale is exactly 1.0 below the threshold
    assert err(a[:, t0:], b[:, t0:]) > 1e-3


def test_cached_decoding_equals_full_sequence(backend, paged):
    """Prefill, then chunks of 1..8 tokens through the cache (rows of different lengths,
    some rows idle with q_len 0) give the full-sequence logits."""
    c = tiny_config()
    lens_total, lens_prefill = [140, 121], [50, 37]
    toks = tokens(2, max(lens_total), c.vocab_size, seed=2)
    m32, m64 = ours(c, torch.float32), ours(c, torch.float64)

    def decode(model):
        cache = model.new_cache(2, 160, paged=paged, page_size=16)
        out = torch.full((2, toks.shape[1], c.vocab_size), float("nan"), dtype=torch.float64, device=DEVICE)
        pos = list(lens_prefill)
        P = max(pos)
        logits = run_or_skip(model, toks[:, :P], cache, modes=Mode.CAUSAL, kv="commit", backend=backend,
                             q_lens=torch.tensor(pos, dtype=torch.int32, device=DEVICE))
        for b in range(2):
            out[b, :pos[b]] = logits[b, :pos[b]].double()
        chunks = [1, 5, 1, 8, 3]
        step = 0
        while any(p < n for p, n in zip(pos, lens_total)):
            n = chunks[step % len(chunks)]
            step += 1
            q = [min(n, total - p) for p, total in zip(pos, lens_total)]
            chunk = torch.zeros(2, n, dtype=torch.long, device=DEVICE)
            for b in range(2):
                chunk[b, :q[b]] = toks[b, pos[b]:pos[b] + q[b]]
            q_lens = torch.tensor(q, dtype=torch.int32, device=DEVICE)
            logits = model(chunk, cache, modes=Mode.CAUSAL, q_lens=q_lens, kv="commit", backend=backend)
            for b in range(2):
                out[b, pos[b]:pos[b] + q[b]] = logits[b, :q[b]].double()
                pos[b] += q[b]
        assert cache.lens.tolist() == lens_total
        if paged:  # exactly the pages the committed tokens need
            held = (cache.block_table >= 0).sum(1).tolist()
            assert held == [-(-n // 16) for n in lens_total]
        return out

    got = decode(m32)
    for b, n in enumerate(lens_total):
        row = toks[b:b + 1, :n]
        truth = m64(row, m64.new_cache(1, n), backend=backend)[0]
        base = m32(row, m32.new_cache(1, n), backend=backend)[0]
        assert_within_torch_error(got[b, :n], truth, base, f"row {b} cached decode")
    got64 = decode(m64)
    for b, n in enumerate(lens_total):
        row = toks[b:b + 1, :n]
        truth = m64(row, m64.new_cache(1, n), backend=backend)[0]
        # fp64 cached vs fp64 full: only summation-order differences remain
        assert err(got64[b, :n], truth) <= 1e-9


@pytest.fixture(params=[pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
def paged(request):
    return request.param


def block_mask(P, L, device=DEVICE):
    """Rows < P causal; block rows see everything (prefix and whole block)."""
    vis = causal_visible(P + L, device)
    vis[P:, :] = True
    return vis


def test_bidir_block_matches_transformers_4d_mask(backend, paged):
    c = tiny_config()
    P_rows, L = [58, 45], 16  # row 0's block crosses position 64
    toks = tokens(2, max(P_rows) + L, c.vocab_size, seed=3)
    block = tokens(2, L, c.vocab_size, seed=4)
    block[:, 1:5] = c.mask_token_id
    m32 = ours(c, torch.float32)
    cache = m32.new_cache(2, 96, paged=paged, page_size=16)
    run_or_skip(prefill, m32, toks[:, :max(P_rows)], P_rows, backend, cache=cache)
    before = (cache.k.clone(), cache.v.clone(), cache.lens.clone())
    got = m32(block, cache, modes=Mode.BIDIR_BLOCK, kv="none", backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(before, (cache.k, cache.v, cache.lens)))
    hf32, hf64 = hf_model(c, torch.float32), hf_model(c, torch.float64)
    for b, P in enumerate(P_rows):
        seq = torch.cat([toks[b:b + 1, :P], block[b:b + 1]], dim=1)
        vis = block_mask(P, L)[None]
        truth = hf_logits(hf64, seq, visible=vis)[0, P:]
        base = hf_logits(hf32, seq, visible=vis)[0, P:]
        assert_within_torch_error(got[b], truth, base, f"row {b} BIDIR_BLOCK")
        # the mask matters: a causal reading of the same block differs
        assert err(hf_logits(hf64, seq)[0, P:], truth) > 1e-3


def test_causal_then_bidir_matches_transformers_and_keeps_causal_kv(backend):
    c = tiny_config()
    n_prompt, K = 70, 8
    toks = tokens(1, n_prompt + K, c.vocab_size, seed=5)
    toks[:, n_prompt + 1:] = c.mask_token_id
    m32 = ours(c, torch.float32)
    cache = m32.new_cache(1, 96)
    got = run_or_skip(m32, toks, cache, modes=Mode.CAUSAL_THEN_BIDIR, mode_args=K, kv="write", backend=backend)
    vis = causal_visible(n_prompt + K)
    vis[n_prompt:, :] = True
    truth = hf_logits(hf_model(c, torch.float64), toks, visible=vis[None])
    base = hf_logits(hf_model(c, torch.float32), toks, visible=vis[None])
    assert_within_torch_error(got, truth, base, "CAUSAL_THEN_BIDIR")
    # keep only the prompt's KV, then decode one token: equals a plain causal run
    cache.commit_(n_prompt)
    nxt = tokens(1, 1, c.vocab_size, seed=6)
    step = m32(nxt, cache, modes=Mode.CAUSAL, kv="commit", backend=backend)
    full = m32(torch.cat([toks[:, :n_prompt], nxt], 1), m32.new_cache(1, n_prompt + 1), backend=backend)
    m64 = ours(c, torch.float64)
    truth = m64(torch.cat([toks[:, :n_prompt], nxt], 1), m64.new_cache(1, n_prompt + 1), backend=backend)
    assert_within_torch_error(step[:, -1], truth[:, -1], full[:, -1], "decode after CAUSAL_THEN_BIDIR")


def quadratic_layout(P, L, draft, mask_id):
    """Tokens, absolute positions P+a+b, and the visibility among new tokens."""
    S = L + 1
    toks = torch.full((L, S), mask_id, dtype=torch.long)
    toks[:, 0] = draft
    a = torch.arange(L)[:, None].expand(L, S).reshape(-1)
    b = torch.arange(S)[None, :].expand(L, S).reshape(-1)
    pos = P + a + b
    vis = ((b[None, :] == 0) & (a[None, :] <= a[:, None])) | ((b[:, None] != 0) & (a[None, :] == a[:, None]))
    return toks.reshape(-1), pos, vis


def test_quadratic_positions_match_transformers(backend):
    c = tiny_config()
    P_rows, L = [60, 41], 3
    prompt = tokens(2, max(P_rows), c.vocab_size, seed=7)
    drafts = tokens(2, L, c.vocab_size, seed=8).cpu()
    m32 = ours(c, torch.float32)
    cache = run_or_skip(prefill, m32, prompt, P_rows, backend)
    new, positions = [], []
    for b, P in enumerate(P_rows):
        t, p, _ = quadratic_layout(P, L, drafts[b], c.mask_token_id)
        new.append(t)
        positions.append(p)
    new = torch.stack(new).to(DEVICE)
    positions = torch.stack(positions).to(DEVICE)
    got = m32(new, cache, modes=Mode.QUADRATIC, mode_args=L, positions=positions, backend=backend)
    hf32, hf64 = hf_model(c, torch.float32), hf_model(c, torch.float64)
    n = L * (L + 1)
    for b, P in enumerate(P_rows):
        _, pos, vis_new = quadratic_layout(P, L, drafts[b], c.mask_token_id)
        seq = torch.cat([prompt[b:b + 1, :P], new[b:b + 1]], dim=1)
        pid = torch.cat([torch.arange(P), pos])[None].to(DEVICE)
        vis = causal_visible(P + n)
        vis[P:, :P] = True
        vis[P:, P:] = vis_new.to(DEVICE)
        truth = hf_logits(hf64, seq, position_ids=pid, visible=vis[None])[0, P:]
        base = hf_logits(hf32, seq, position_ids=pid, visible=vis[None])[0, P:]
        assert_within_torch_error(got[b], truth, base, f"row {b} QUADRATIC")
    # positions are really used: slot-index positions (the legacy rule) give other logits
    legacy = m32(new, cache, modes=Mode.QUADRATIC, mode_args=L, backend=backend)
    assert err(legacy, got) > 1e-3


def test_adapter_adds_exactly_the_lora_delta(backend):
    c = with_lora(tiny_config(), rank=8, alpha=32.0)
    assert c.lora.scale == 4.0
    T = 80
    toks = tokens(2, T, c.vocab_size, seed=9)
    m32 = ours(c, torch.float32)
    on = run_or_skip(m32, toks, m32.new_cache(2, T), modes=Mode.BIDIR_BLOCK, adapter=True, backend=backend)
    off = m32(toks, m32.new_cache(2, T), modes=Mode.BIDIR_BLOCK, adapter=False, backend=backend)
    plain = ours(tiny_config(), torch.float32)  # same base weights, no adapter at all
    base_logits = plain(toks, plain.new_cache(2, T), modes=Mode.BIDIR_BLOCK, backend=backend)
    assert torch.equal(off, base_logits)
    assert torch.equal(plain(toks, plain.new_cache(2, T), modes=Mode.BIDIR_BLOCK, adapter=True, backend=backend),
                       base_logits)  # a model without adapter ignores adapter=True

    # Manual computation: transformers with o_proj merged W + (alpha/r) B @ A.
    state = {k: v.double() for k, v in m32.state_dict().items() if not k.startswith("linear_spec_lora")}
    for i, lora in enumerate(m32.linear_spec_lora):
        key = f"encoder.layers.{i}.self_attn.o_proj.weight"
        state[key] = state[key] + c.lora.scale * (lora.lora_B.weight.double() @ lora.lora_A.weight.double())
    vis = torch.ones(2, T, T, dtype=torch.bool, device=DEVICE)
    truth = hf_logits(hf_model(c, torch.float64, state=state), toks, visible=vis)
    base = hf_logits(hf_model(c, torch.float32, state={k: v.float() for k, v in state.items()}), toks, visible=vis)
    assert_within_torch_error(on, truth, base, "adapter on vs merged LoRA")
    assert err(on, off) > 100 * err(base, truth)  # the delta is far above rounding
