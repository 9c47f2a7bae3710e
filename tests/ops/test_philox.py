"""Philox4x32-10 reference: published known answers, uniform / Gumbel statistics, stream independence."""
import math

import pytest
import torch

from tests.ops.stats import chi2_pvalue
from tridiff.reference.philox import ACCEPT, DIFFUSION, RESIDUAL, SAMPLE, gumbel, philox, uniform

# Random123 known-answer vectors for philox4x32_10 (kat_vectors): counter, key -> first output word.
KAT = [
    pytest.param((0, 0, 0, 0), (0, 0), 0x6627E8D5, id="zeros"),
    pytest.param((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), 0x408F276D, id="ones"),
    pytest.param((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 0xD16CFE09, id="pi"),
]


def seed_of(key):
    """The int64 seed whose (lo, hi) 32-bit words are `key`."""
    lo, hi = key
    word = (hi << 32) | lo
    return word - (1 << 64) if word >= 1 << 63 else word




@pytest.mark.parametrize("ctr,key,want", KAT)
def test_known_answer(ctr, key, want):
    got = philox(torch.tensor(seed_of(key)), *ctr)
    assert int(got) == want


def test_known_answers_batched_broadcast():
    # The same vectors computed in one broadcast call (how the ops use it).
    vectors = [p.values for p in KAT]
    seeds = torch.tensor([seed_of(k) for _, k, _ in vectors])
    ctrs = [torch.tensor([c[i] for c, _, _ in vectors]) for i in range(4)]
    got = philox(seeds, *ctrs)
    assert got.tolist() == [w for _, _, w in vectors]


def test_uniform_range_exactness_mean_and_histogram():
    N = 1 << 18
    u = uniform(torch.tensor(42), torch.arange(N), 7, SAMPLE, 3)
    assert u.dtype == torch.float32
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # u = (k + 0.5) * 2**-23 for an integer k in [0, 2**23): exact in float32.
    k = u.double() * 2**23 - 0.5
    assert torch.equal(k, k.round()) and float(k.min()) >= 0 and float(k.max()) <= 2**23 - 1
    mean = float(u.double().mean())
    assert abs(mean - 0.5) < 5 * math.sqrt(1 / 12 / N)
    bins = 64
    counts = torch.bincount((u * bins).long(), minlength=bins).double()
    stat = float(((counts - N / bins) ** 2 / (N / bins)).sum())
    assert chi2_pvalue(stat, bins - 1) > 1e-6, stat


def test_gumbel_moments():
    N = 1 << 18
    g = gumbel(torch.tensor(-7), torch.arange(N), 0, RESIDUAL, 11).double()
    euler_gamma, var = 0.5772156649015329, math.pi ** 2 / 6
    assert abs(float(g.mean()) - euler_gamma) < 5 * math.sqrt(var / N)
    # sd of the sample variance: sigma^2 * sqrt((kurtosis - 1) / N), Gumbel kurtosis 5.4.
    assert abs(float(g.var()) - var) < 5 * var * math.sqrt(4.4 / N)


def _joint_independent(a: torch.Tensor, b: torch.Tensor, bins=8) -> float:
    """p-value of a chi-square test that two uniform streams are independent (bins x bins cells)."""
    N = a.numel()
    cell = (a * bins).long() * bins + (b * bins).long()
    counts = torch.bincount(cell, minlength=bins * bins).double()
    expect = N / bins ** 2
    return chi2_pvalue(float(((counts - expect) ** 2 / expect).sum()), bins * bins - 1)


@pytest.mark.parametrize("vary", ["stream", "offset", "position", "seed_lo", "seed_hi"])
def test_streams_are_independent(vary):
    N = 1 << 16
    v = torch.arange(N)
    base = dict(seed=torch.tensor(5), t=3, stream=SAMPLE, offset=9)
    other = dict(base)
    if vary == "stream":
        other["stream"] = ACCEPT
    elif vary == "offset":
        other["offset"] = 10
    elif vary == "position":
        other["t"] = 4
    elif vary == "seed_lo":
        other["seed"] = torch.tensor(6)
    else:
        other["seed"] = torch.tensor(5 + (1 << 32))  # same low key word: the high word must matter
    a = uniform(base["seed"], v, base["t"], base["stream"], base["offset"])
    b = uniform(other["seed"], v, other["t"], other["stream"], other["offset"])
    assert float((a == b).double().mean()) < 1e-3  # equal 23-bit values: ~N/2**23 expected
    r = float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])
    assert abs(r) < 5 / math.sqrt(N)
    assert _joint_independent(a, b) > 1e-6


def test_all_four_streams_differ_and_are_deterministic():
    v = torch.arange(4096)
    words = [philox(torch.tensor(123), v, 2, s, 1) for s in (SAMPLE, ACCEPT, RESIDUAL, DIFFUSION)]
    for i in range(4):
        assert torch.equal(words[i], philox(torch.tensor(123), v, 2, i, 1))
        for j in range(i):
            assert int((words[i] == words[j]).sum()) == 0
