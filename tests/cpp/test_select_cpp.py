"""Sampling, diffusion confidence/unmask and acceptance of the "cpp" backend against the
torch reference: token ids and counts exact (greedy and Philox-driven sampling),
confidence within twice torch's own same-dtype error against float64. Vocabulary sizes
straddle the scan chunk (8192 for 16-bit dtypes) and include odd ones; ties and NaN
rows follow torch.argmax (lowest id; NaN wins)."""
import pytest
import torch

import tridiff.ops as ops
from tests.cpp.support import CPP, randn
from tridiff import _ext

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def _seeds(B, gen):
    seed = torch.randint(-2**62, 2**62, (B,), generator=gen, dtype=torch.int64)
    offset = torch.randint(0, 2**40, (B,), generator=gen, dtype=torch.int64)
    return seed, offset


@pytest.mark.parametrize("backend", CPP)
def test_philox_bits(backend, rng):
    """The C++ Philox (shared with the kernels) equals tridiff.reference.philox bit for bit."""
    from tridiff.reference import philox

    lib = _ext.load("cpp")
    seeds = [0, 1, -1, 2**63 - 1, -2**63, 123456789012345]
    for seed in seeds:
        for c in [(0, 0, 0, 0), (7, 3, 1, 2**33 + 5), (2**32 - 1, 2**31, 3, 99)]:
            ref_x = int(philox.philox(torch.tensor(seed), *c))
            assert lib.philox_x0(seed, *[x & 0xFFFFFFFF for x in c]) == ref_x
            ref_u = float(philox.uniform(torch.tensor(seed), c[0], c[1], c[2], c[3]))
            assert lib.philox_uniform(seed, c[0], c[1], c[2], c[3]) == ref_u


def _logits(B, T, V, dtype, gen):
    x = randn((B, T, V), dtype, gen) * 3
    x[0, 0, :] = 1.0            # all tied: lowest id
    x[-1, -1, V // 2] = float("nan")  # NaN wins, like torch.argmax
    x[0, 1, :] = float("-inf")   # nothing finite: lowest id
    x[-1, 0, 3] = x[-1, 0, V - 2] = float("nan")  # two NaNs (in different chunks): the first
    return x


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [37, 8193, 20000])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sample(backend, dtype, V, temperature, rng):
    B, T = 2, 3
    x = _logits(B, T, V, dtype, rng)
    seed, offset = _seeds(B, rng) if temperature else (None, None)
    ref = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    out = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend=backend)
    assert out.dtype == torch.int64 and torch.equal(ref, out)
    out2 = ops.sample(x[:, 1], temperature=temperature, seed=seed, offset=offset, backend=backend)  # [B, V]
    assert torch.equal(out2, ref[:, 1]) if temperature == 0 else out2.shape == (B,)


@pytest.mark.parametrize("backend", CPP)
def test_sample_noncontiguous_rows(backend, rng):
    x = randn((3, 10, 40), torch.float32, rng)[:, ::3]  # row stride 120, not uniform over [B, T]
    assert torch.equal(ops.sample(x, backend=backend), x.argmax(-1))


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_diffusion_confidence(backend, dtype, temperature, rng):
    B, L, V = 2, 5, 8200
    x = randn((B, L, V), dtype, rng) * 4
    seed, offset = _seeds(B, rng) if temperature else (None, None)
    x0_ref, conf_ref = ops.diffusion_confidence(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    x0, conf = ops.diffusion_confidence(x, temperature=temperature, seed=seed, offset=offset, backend=backend)
    assert torch.equal(x0, x0_ref)
    assert conf.dtype == dtype and not conf.isnan().any()
    exact = torch.softmax(x.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
    torch_err = (conf_ref.double() - exact).abs().max().item()
    err = (conf.double() - exact).abs().max().item()
    # Bound: twice torch's own error, plus the half-ulp that rounding the result to `dtype`
    # may add; for float64 the "exact" reference is torch's own float64 result, so allow a
    # few ulps of a differently ordered sum instead.
    ulp = torch.finfo(dtype).eps * exact.max().item()
    bound = 4 * ulp if dtype == torch.float64 else 2 * torch_err + 0.5 * ulp
    assert err <= bound


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mode", ["threshold", "topk"])
def test_diffusion_unmask(backend, dtype, mode, rng):
    B, L, mask_id = 4, 16, 99
    block = torch.randint(0, 3, (B, L), generator=rng)
    block = torch.where(block == 0, torch.full_like(block, 7), torch.full_like(block, mask_id))
    block[3] = mask_id
    x0 = torch.randint(0, 100, (B, L), generator=rng)
    conf = torch.rand((B, L), generator=rng).to(dtype)
    conf[1, :8] = 0.5  # ties -> lower position first
    kw = {"threshold": 0.6} if mode == "threshold" else {"num_transfer": torch.tensor([3, 0, 20, 5], dtype=torch.int32)}
    ref = ops.diffusion_unmask(block, x0, conf, mask_id=mask_id, backend="torch", **kw)
    out = ops.diffusion_unmask(block, x0, conf, mask_id=mask_id, backend=backend, **kw)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert out[1].dtype == torch.bool and out[1].any()


def _drafts_from(ar, n, gen, keep):
    """Drafts agreeing with ar on the first keep[b] positions, then differing."""
    B = ar.shape[0]
    d = ar[:, :n].clone()
    for b in range(B):
        if keep[b] < n:
            d[b, keep[b]] = (d[b, keep[b]] + 1) % 50
            d[b, keep[b] + 1:] = torch.randint(0, 50, (n - keep[b] - 1,), generator=gen)
    return d


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("temperature", [0.0, 1.3])
@pytest.mark.parametrize("eos", [-1, "hit"])
def test_accept_linear(backend, dtype, temperature, eos, rng):
    B, n, V = 4, 6, 9000
    x = randn((B, n + 1, V), dtype, rng) * 2
    seed, offset = _seeds(B, rng) if temperature else (None, None)
    ar = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    drafts = _drafts_from(ar, n, rng, keep=[0, 2, 6, 4])
    eos_id = int(ar[3, 1]) if eos == "hit" else -1
    lens = torch.tensor([0, 5, 100, 7], dtype=torch.int32)
    ref = ops.accept_linear(x, drafts, lens, eos_id=eos_id, temperature=temperature, seed=seed, offset=offset,
                            backend="torch")
    out = ops.accept_linear(x, drafts, lens, eos_id=eos_id, temperature=temperature, seed=seed, offset=offset,
                            backend=backend)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and torch.equal(r, o)
    assert out.n_accepted.tolist() == [1, 3, 7, 5]
    assert bool(out.hit_eos[3]) == (eos == "hit")


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("L", [1, 4])
def test_accept_quadratic(backend, dtype, L, rng):
    B, V = 3, 8300
    x = randn((B, L * (L + 1), V), dtype, rng)
    pred0 = x.view(B, L, L + 1, V)[:, :, 0].argmax(-1)  # pred[a, 0]
    draft = torch.randint(0, V, (B, L), generator=rng)
    for b, keep in enumerate([L, 1, max(1, L - 1)]):
        draft[b, 1:keep] = pred0[b, : keep - 1]
    eos_id = int(draft[0, min(2, L - 1)])
    lens = torch.tensor([0, 9, 31], dtype=torch.int32)
    ref = ops.accept_quadratic(x, draft, lens, eos_id=eos_id, backend="torch")
    out = ops.accept_quadratic(x, draft, lens, eos_id=eos_id, backend=backend)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and torch.equal(r, o)
    assert int(out.n_accepted[0]) == L


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [0, 1, 5])
def test_accept_rejection(backend, dtype, n, rng):
    """Lossless rule with the ACCEPT/RESIDUAL/SAMPLE Philox streams: identical tokens, counts
    and eos handling. Draft logits near the target make acceptance and rejection both occur."""
    B, V, T = 6, 9000, 0.8
    target = randn((B, n + 1, V), dtype, rng) * 2
    draft_logits = (target[:, :n].float() + randn((B, n, V), torch.float32, rng) * 0.5).to(dtype)
    draft_logits[0] = target[0, :n]  # identical distributions: every draft accepted
    seed, offset = _seeds(B, rng)
    drafts = ops.sample(draft_logits, temperature=T, seed=seed + 1, offset=offset, backend="torch") if n else \
        torch.empty(B, 0, dtype=torch.int64)
    lens = torch.arange(B, dtype=torch.int32) * 3
    results = []
    for name in ("torch", backend):
        results.append(ops.accept_rejection(target, draft_logits, drafts, lens, eos_id=int(drafts[1, 0]) if n else -1,
                                            temperature=T, seed=seed, offset=offset, backend=name))
    ref, out = results
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and torch.equal(r, o)
    assert int(out.n_accepted[0]) == n + 1


@pytest.mark.parametrize("backend", CPP)
def test_accept_rejection_greedy_limit(backend, rng):
    B, n, V = 3, 4, 500
    target = randn((B, n + 1, V), torch.float32, rng)
    drafts = target[:, :n].argmax(-1)
    drafts[1, 2] = (drafts[1, 2] + 1) % V
    lens = torch.zeros(B, dtype=torch.int32)
    out = ops.accept_rejection(target, target[:, :n].clone(), drafts, lens, eos_id=-1, temperature=0.0,
                               backend=backend)
    ref = ops.accept_linear(target, drafts, lens, eos_id=-1, backend="torch")
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    assert out.n_accepted.tolist() == [n + 1, 3, n + 1]
