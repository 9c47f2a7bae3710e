"""Block diffusion against a cache-free transcription of docs/spec.md section 3."""
import pytest
from gen_support import Patched, diffusion_reference

from tridiff import Mode
from tridiff._checks import TridiffInputError
from tridiff.generate import generate


@pytest.mark.parametrize("threshold", [None, 0.5, 0.9], ids=["topk", "thr0.5", "thr0.9"])
def test_diffusion_matches_transcription(model, prompts, threshold):
    p, L, n = prompts[0], 8, 16
    cfg = model.config
    want, want_nfe = diffusion_reference(model, p, n, L, threshold=threshold, eos=-1, mask=cfg.mask_token_id)
    pm = Patched(model)
    r = generate(pm, [p], mode="diffusion", max_new_tokens=n, block_length=L, threshold=threshold,
                 eos_id=-1).results[0]
    assert r.tokens == want and len(want) == n
    assert r.nfe == want_nfe
    assert r.nfe == len(pm.calls) - 1  # the prefill is not counted
    assert [c["modes"] for c in pm.calls].count(Mode.CAUSAL) == 1 + n // L  # prefill + commits
    # the drafter adapter (docs/spec.md section 1) is on for denoise forwards only
    assert all(c["adapter"] == (c["modes"] == Mode.BIDIR_BLOCK) for c in pm.calls)
    assert r.mean_accepted is None
    if threshold == 0.5:  # this row has steps that unmask several positions at once
        assert r.nfe < n


def test_diffusion_eos_early_stop_and_truncation(model, prompts):
    p, L, n = prompts[2], 4, 12
    cfg = model.config
    free, _ = diffusion_reference(model, p, n, L, threshold=None, eos=-1, mask=cfg.mask_token_id)
    eos = free[5]  # a token the row really produces, in its second block
    want, want_nfe = diffusion_reference(model, p, n, L, threshold=None, eos=eos, mask=cfg.mask_token_id)
    r = generate(model, [p], mode="diffusion", max_new_tokens=n, block_length=L, eos_id=eos).results[0]
    assert r.tokens == want and r.nfe == want_nfe
    assert r.tokens[-1] == eos and r.tokens.count(eos) == 1 and len(r.tokens) < n


def test_diffusion_mask_id_is_not_excluded(model, prompts):
    """Positions whose argmax is the mask id stay masks (parity quirk) and can survive."""
    mask = model.config.mask_token_id

    def edit(logits, info):
        boost = (info["positions"] % 5 == 2)
        logits[..., mask] += 60.0 * boost.to(logits.dtype)
        return logits

    pm = Patched(model, edit)
    p, L, n = prompts[1], 4, 8
    want, want_nfe = diffusion_reference(pm, p, n, L, threshold=None, eos=-1, mask=mask)
    r = generate(pm, [p], mode="diffusion", max_new_tokens=n, block_length=L, eos_id=-1).results[0]
    assert r.tokens == want and r.nfe == want_nfe
    assert mask in r.tokens


def test_diffusion_rejects_bad_lengths(model, prompts):
    with pytest.raises(TridiffInputError, match="max_new_tokens"):
        generate(model, [prompts[0]], mode="diffusion", max_new_tokens=6, block_length=4)
    with pytest.raises(TridiffInputError, match="threshold"):
        generate(model, [prompts[0]], mode="diffusion", max_new_tokens=8, block_length=4, threshold=0.0)
    too_long = [1] * (model.config.max_position_embeddings - 4)
    with pytest.raises(TridiffInputError, match="context"):
        generate(model, [too_long], mode="diffusion", max_new_tokens=8, block_length=4)
    with pytest.raises(TridiffInputError, match="mode"):
        generate(model, [prompts[0]], mode="beam", max_new_tokens=8)
