"""The parts of training that can be wrong silently: the two-stream mask against the
sentence of docs/spec.md section 2.3, the noisy stream's positions, the masking schedule
and its 1/t weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from tridiff.train import objective as ob


def spec_two_stream_allowed(i: int, j: int, S: int, L: int) -> bool:
    """docs/spec.md section 2.3, transcribed literally: a noisy row sees noisy keys
    of its own block and clean keys of strictly earlier blocks; clean rows are
    token-causal over clean keys."""
    row_noisy, key_noisy = i < S, j < S
    ti, tj = i % S, j % S
    if row_noisy:
        return (key_noisy and ti // L == tj // L) or (not key_noisy and tj // L < ti // L)
    return (not key_noisy) and tj <= ti


@pytest.mark.parametrize("S,L", [(8, 4), (12, 4), (16, 16), (6, 1), (9, 3)])
def test_two_stream_mask_matches_spec(S, L):
    mask = ob.two_stream_mask(S, L)
    want = torch.tensor([[spec_two_stream_allowed(i, j, S, L) for j in range(2 * S)] for i in range(2 * S)])
    assert mask.dtype == torch.bool and mask.shape == (2 * S, 2 * S)
    assert torch.equal(mask, want)


def test_two_stream_mask_rejects_partial_block():
    with pytest.raises(ValueError, match="seq_len"):
        ob.two_stream_mask(10, 4)


def test_noisy_positions_equal_the_clean_tokens_they_stand_for():
    pos = ob.two_stream_positions(12)
    assert torch.equal(pos[:12], torch.arange(12)) and torch.equal(pos[12:], torch.arange(12))


def test_noise_rate_is_constant_per_block_and_in_range():
    masked, t = ob.sample_noise(64, 32, 8, eps=0.05, generator=torch.Generator().manual_seed(0))
    blocks = t.view(64, 4, 8)
    assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))  # one t per block
    assert float(t.min()) >= 0.05 and float(t.max()) <= 1.0
    # t ~ U(eps, 1): mean (1 + eps) / 2, and the masked fraction follows t
    assert abs(float(blocks[..., 0].mean()) - 0.525) < 0.03
    assert abs(float(masked.float().mean()) - 0.525) < 0.03


def test_masked_fraction_tracks_each_blocks_rate():
    gen = torch.Generator().manual_seed(1)
    masked, t = ob.sample_noise(4000, 4, 4, eps=1e-3, generator=gen)
    low, high = t[:, 0] < 0.3, t[:, 0] > 0.7
    frac = masked.float().mean(1)
    assert float(frac[low].mean()) < 0.2 and float(frac[high].mean()) > 0.8


def test_make_batch_layout():
    windows = torch.arange(200, 217)[None].repeat(3, 1)  # S = 16
    b = ob.make_batch(windows, 4, mask_id=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(b.clean, windows[:, :-1]) and torch.equal(b.next_tokens, windows[:, 1:])
    assert torch.equal(b.inputs[:, 16:], b.clean)
    noisy = b.inputs[:, :16]
    assert torch.equal(noisy == 100, b.masked)
    assert torch.equal(noisy[~b.masked], b.clean[~b.masked])


def test_joint_loss_weights_masked_tokens_by_inverse_t():
    B, S, V = 2, 4, 7
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(B, 2 * S, V, generator=gen)
    clean = torch.randint(0, V, (B, S), generator=gen)
    nxt = torch.randint(0, V, (B, S), generator=gen)
    masked = torch.tensor([[True, False, True, True], [False, False, False, True]])
    t = torch.tensor([[0.5] * 4, [0.25] * 4])
    batch = ob.Batch(torch.zeros(B, 2 * S, dtype=torch.long), clean, nxt, masked, t)
    loss, ar, diff = ob.joint_loss(logits, batch, diffusion_weight=0.3)
    # the same quantities written out token by token
    want_ar = sum(-F.log_softmax(logits[b, S + i], -1)[nxt[b, i]] for b in range(B) for i in range(S)) / (B * S)
    want_diff = sum(-F.log_softmax(logits[b, i], -1)[clean[b, i]] / t[b, i]
                    for b in range(B) for i in range(S) if masked[b, i]) / (B * S)
    assert math.isclose(float(ar), float(want_ar), rel_tol=1e-5)
    assert math.isclose(float(diff), float(want_diff), rel_tol=1e-5)
    assert math.isclose(float(loss), float(want_ar + 0.3 * want_diff), rel_tol=1e-5)


def test_noise_power_one_is_the_uniform_schedule_bit_for_bit():
    a = ob.sample_noise(32, 32, 8, generator=torch.Generator().manual_seed(5))
    b = ob.sample_noise(32, 32, 8, power=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("power", [2.0, 3.0])
def test_noise_power_skews_the_rates_toward_one(power):
    # t = eps + (1 - eps) u^(1/p): E[t] ~ p / (p + 1), P(t > 0.9) = 1 - 0.9^p
    masked, t = ob.sample_noise(20000, 4, 4, eps=1e-3, power=power, generator=torch.Generator().manual_seed(2))
    rates = t[:, 0]
    assert abs(float(rates.mean()) - power / (power + 1)) < 0.01
    assert abs(float((rates > 0.9).float().mean()) - (1 - 0.9 ** power)) < 0.015
    assert abs(float(masked.float().mean()) - power / (power + 1)) < 0.01


def test_noise_power_must_be_positive():
    with pytest.raises(ValueError, match="power"):
        ob.sample_noise(2, 8, 4, power=0.0)
