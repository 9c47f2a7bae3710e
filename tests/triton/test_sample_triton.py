"""Triton sample / diffusion_confidence / diffusion_unmask vs the torch reference.

Integer outputs are compared exactly; conf against a float64 truth with PyTorch's own
same-dtype error as the yardstick. CPU runs use the interpreter and tiny shapes; the
real shape ([B, 32, 131072] bf16) runs on CUDA only.
"""
import numpy as np
import pytest
import torch

from tests.triton.support import CUDA, DEV, NEEDS_CUDA, TRITON, logits
from tridiff import ops
from tridiff import reference as ref
from tridiff.triton import sample as ts

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def seeds(B, base=11):
    s = torch.tensor([base + 977 * b for b in range(B)], dtype=torch.int64)
    s[-1] |= -2**63  # a seed with the high bit set
    return s.to(DEV), torch.arange(B, dtype=torch.int64, device=DEV) * 5 + 3


# ---- sample --------------------------------------------------------------------------------

@TRITON
@pytest.mark.parametrize("V", [1000, 777])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sample_greedy(backend, V, dtype, ranges):
    x = logits(2, 3, V, dtype=dtype, seed=V)
    got = ts.sample(x, 0.0, None, None)
    assert torch.equal(got, ref.sample(x, 0.0, None, None))
    assert got.unique().numel() > 1  # rows really differ


@TRITON
def test_sample_greedy_ties_lowest_id(backend, ranges):
    V = 1000
    x = torch.zeros(1, 4, V, device=DEV)
    x[0, 0, [700, 300]] = 5.0  # tie across ranges/chunks (BLOCK_V 256 under the interpreter)
    x[0, 1, [20, 10, 999]] = 5.0  # tie inside a chunk
    x[0, 2] = -1.0  # the whole row ties
    x[0, 3, [999, 998]] = float("inf")
    got = ts.sample(x, 0.0, None, None)
    assert got.tolist() == [[300, 10, 0, 998]]
    assert torch.equal(got, ref.sample(x, 0.0, None, None))


@TRITON
def test_sample_gumbel_matches_reference(backend, noisy_dtype):
    x = logits(2, 2, 777, dtype=noisy_dtype, seed=5, scale=1.0)
    seed, offset = seeds(2)
    got = ts.sample(x, 0.7, seed, offset)
    assert torch.equal(got, ref.sample(x, 0.7, seed, offset))
    assert not torch.equal(got, ref.sample(x, 0.0, None, None))  # the noise matters here


@TRITON
def test_public_sample_2d_dispatches(backend):
    x = logits(3, 300, seed=6)
    seed, offset = seeds(3)
    for kw in ({}, dict(temperature=1.3, seed=seed, offset=offset)):
        want = ops.sample(x, backend="torch", **kw)
        got = ops.sample(x, backend="triton", **kw)
        assert got.shape == (3,) and torch.equal(got, want)


# ---- diffusion_confidence -----------------------------------------------------------------

def _truth(x, x0):
    """softmax(x)[x0] in numpy long double (80-bit on x86), as float64."""
    xl = x.double().cpu().numpy().astype(np.longdouble)
    e = np.exp(xl - xl.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    picked = np.take_along_axis(p, x0.cpu().numpy()[..., None], axis=-1)[..., 0]
    return torch.from_numpy(picked.astype(np.float64)).to(x.device)


def _conf_error_ok(x, x0, conf):
    """Kernel conf error vs a higher-precision truth <= 2x PyTorch's own error in the same
    dtype (plus half an ulp of the output dtype, a rounding step both pay)."""
    truth = _truth(x, x0)
    _, torch_conf = ref.diffusion_confidence(x, 0.0, None, None)
    err_k = (conf.double() - truth).abs().max().item()
    err_t = (torch_conf.double() - truth).abs().max().item()
    ulp = torch.finfo(conf.dtype).eps * truth.max().item()
    assert err_k <= 2 * err_t + ulp / 2, (err_k, err_t)


@TRITON
@pytest.mark.parametrize("V", [1000, 777])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_confidence_greedy(backend, V, dtype, ranges):
    x = logits(2, 3, V, dtype=dtype, seed=V + 1, scale=4.0)
    x0, conf = ts.diffusion_confidence(x, 0.0, None, None)
    rx0, rconf = ref.diffusion_confidence(x, 0.0, None, None)
    assert torch.equal(x0, rx0)
    assert conf.dtype == dtype and not conf.isnan().any()
    _conf_error_ok(x, x0, conf)


@TRITON
def test_confidence_ties_and_peaked(backend):
    x = torch.zeros(1, 2, 600, device=DEV)
    x[0, 0, [512, 7]] = 2.0  # tie: lowest id, conf of either
    x[0, 1, 444] = 60.0      # conf rounds to 1
    x0, conf = ts.diffusion_confidence(x, 0.0, None, None)
    assert x0.tolist() == [[7, 444]]
    _conf_error_ok(x, x0, conf)


@TRITON
def test_confidence_gumbel_float64(backend, noisy_dtype):
    x = logits(2, 2, 777, dtype=noisy_dtype, seed=8, scale=1.0)
    seed, offset = seeds(2, base=3)
    x0, conf = ts.diffusion_confidence(x, 0.9, seed, offset)
    rx0, rconf = ref.diffusion_confidence(x, 0.9, seed, offset)
    assert torch.equal(x0, rx0)
    assert not torch.equal(x0, ref.sample(x, 0.0, None, None))
    _conf_error_ok(x, x0, conf)


# ---- diffusion_unmask ---------------------------------------------------------------------

MASK = 9


def _unmask_case(B, L, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(0, 12, (B, L), generator=g)
    block[torch.rand(B, L, generator=g) < 0.6] = MASK
    block[0] = MASK                        # all masked
    block[-1] = torch.arange(L) % 8        # no candidate (8 < MASK)
    x0 = torch.randint(0, 12, (B, L), generator=g)  # may predict the mask id itself
    conf = torch.rand(B, L, generator=g).mul(8).round().div(8)  # many exact ties
    return block.to(DEV), x0.to(DEV), conf.to(dtype).to(DEV)


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@TRITON
@pytest.mark.parametrize("L", [5, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("threshold", [0.5, 0.875, 2.0])
def test_unmask_threshold(backend, L, dtype, threshold):
    block, x0, conf = _unmask_case(4, L, dtype, seed=L)
    got = ts.diffusion_unmask(block, x0, conf, MASK, threshold, None)
    assert _same(got, ref.diffusion_unmask(block, x0, conf, MASK, threshold, None))
    cand = block == MASK
    assert torch.equal(got[1].sum(1) >= 1, cand.any(1))  # always at least the best one


@TRITON
@pytest.mark.parametrize("L", [5, 32])
def test_unmask_topk(backend, L):
    block, x0, conf = _unmask_case(4, L, torch.float32, seed=L + 1)
    k = torch.tensor([3, 0, L, 2], dtype=torch.int32, device=DEV)  # L > candidates: clamped
    got = ts.diffusion_unmask(block, x0, conf, MASK, None, k)
    assert _same(got, ref.diffusion_unmask(block, x0, conf, MASK, None, k))
    cand = (block == MASK).sum(1)
    assert torch.equal(got[1].sum(1), torch.minimum(k.long(), cand))


@TRITON
def test_unmask_tie_goes_to_lower_position(backend):
    block = torch.full((1, 6), MASK, device=DEV)
    x0 = torch.arange(6, device=DEV) + 100
    conf = torch.tensor([[0.2, 0.7, 0.3, 0.7, 0.7, 0.1]], device=DEV)
    new, tr = ts.diffusion_unmask(block, x0[None], conf, MASK, None, torch.tensor([2], dtype=torch.int32,
                                                                                  device=DEV))
    assert tr.tolist() == [[False, True, False, True, False, False]]
    assert new.tolist() == [[MASK, 101, MASK, 103, MASK, MASK]]


@TRITON
def test_public_unmask_dispatches(backend):
    block, x0, conf = _unmask_case(3, 8, torch.float32, seed=99)
    want = ops.diffusion_unmask(block, x0, conf, mask_id=MASK, threshold=0.6, backend="torch")
    got = ops.diffusion_unmask(block, x0, conf, mask_id=MASK, threshold=0.6, backend="triton")
    assert _same(got, want)


# ---- real shapes (GPU only) -----------------------------------------------------------------

@TRITON
@NEEDS_CUDA
@pytest.mark.parametrize("B", [1, 4])
def test_real_shape_bf16(backend, B):
    x = logits(B, 32, 131072, dtype=torch.bfloat16, seed=B, scale=2.0)
    seed, offset = seeds(B)
    assert torch.equal(ts.sample(x, 0.0, None, None), ref.sample(x, 0.0, None, None))
    assert torch.equal(ts.sample(x, 0.8, seed, offset), ref.sample(x, 0.8, seed, offset))
    for temp in (0.0, 0.5):
        x0, conf = ts.diffusion_confidence(x, temp, seed, offset)
        rx0, _ = ref.diffusion_confidence(x, temp, seed, offset)
        assert torch.equal(x0, rx0)
        _conf_error_ok(x, x0, conf)
