"""Decoding on a paged KV cache gives the contiguous cache's results, and a checkpoint
with the drafter adapter keeps self-speculation lossless (the adapter only touches
draft forwards)."""
import pytest
import torch
from gen_support import Patched, greedy_ar, oracle_edit

from tridiff import Mode
from tridiff.checkpoint import write_random_checkpoint
from tridiff.generate import generate

L, N = 4, 8


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear-spec", "quadratic-spec"])
def test_paged_cache_equals_contiguous(model, prompts, mode):
    conts = [p + greedy_ar(model, p, N + L) for p in prompts[:2]]
    pm = Patched(model, oracle_edit(conts, V=model.config.vocab_size))
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=-1)
    flat = generate(pm, prompts[:2], **kw).results
    paged = generate(pm, prompts[:2], paged=True, page_size=3, **kw).results
    def key(rs):
        return [(r.tokens, r.nfe, r.mean_accepted) for r in rs]

    assert key(paged) == key(flat)


@pytest.fixture(scope="module")
def adapter_model(tmp_path_factory):
    from tridiff.model import Model

    d = tmp_path_factory.mktemp("adapter-ckpt")
    write_random_checkpoint(d, "tiny", seed=2, with_tokenizer=False, with_adapter=True, dtype=torch.float32)
    m = Model.from_pretrained(d, dtype=torch.float64)
    assert m.has_adapter
    return m


@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_adapter_model_self_spec_is_lossless(adapter_model, prompts, mode):
    p = prompts[0]
    ar = greedy_ar(adapter_model, p, N + L)
    pm = Patched(adapter_model)
    r = generate(pm, [p], mode=mode, max_new_tokens=N, block_length=L, eos_id=-1).results[0]
    assert r.tokens == ar[:len(r.tokens)] and len(r.tokens) >= N
    used = [c["adapter"] for c in pm.calls]
    if mode == "linear-spec":
        assert used == [c["modes"] == Mode.BIDIR_BLOCK for c in pm.calls] and any(used)
    else:
        assert not any(used)
    off = Patched(adapter_model)
    r_off = generate(off, [p], mode=mode, max_new_tokens=N, block_length=L, eos_id=-1,
                     adapter=False).results[0]
    assert not any(c["adapter"] for c in off.calls)
    assert r_off.tokens == ar[:len(r_off.tokens)]
