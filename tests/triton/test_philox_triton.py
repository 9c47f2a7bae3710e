"""The Triton Philox4x32-10 against tridiff.reference.philox, bit for bit."""
import numpy as np
import pytest
import torch

from tests.triton.support import CUDA, DEV, NEEDS_CUDA, TRITON, triton
from tridiff.kernels.philox import philox_fill_kernel
from tridiff.reference import philox as ref

SPECIAL_SEEDS = [0, 1, -1, 2**63 - 1, -2**63, 2**32, 2**32 - 1, 2**31, -2**31, 0x0123456789ABCDEF]


def _inputs(n=4096):
    g = torch.Generator().manual_seed(1234)
    seed = torch.randint(-2**63, 2**63 - 1, (n,), dtype=torch.int64, generator=g)
    seed[: len(SPECIAL_SEEDS)] = torch.tensor(SPECIAL_SEEDS, dtype=torch.int64)
    seed[len(SPECIAL_SEEDS):len(SPECIAL_SEEDS) + 64] |= -2**63  # high bit set
    c = torch.randint(0, 2**32, (n, 4), dtype=torch.int64, generator=g)
    edge = torch.tensor([0, 2**32 - 1, 1, 2**31])
    c[:16] = torch.stack(torch.meshgrid(edge, edge, indexing="ij"), -1).reshape(16, 2).repeat(1, 2)
    c[16:1040, 0] = torch.arange(1024)  # consecutive vocabulary ids, as the kernels use them
    c[16:1040, 1:] = torch.tensor([7, 2, 99])
    return seed.to(DEV), c.to(DEV)


def _run(seed, c, precise):
    n = seed.shape[0]
    word = torch.empty(n, dtype=torch.int64, device=DEV)
    u = torch.full((n,), float("nan"), device=DEV)
    g = torch.full((n,), float("nan"), device=DEV)
    philox_fill_kernel[(triton.cdiv(n, 1024),)](word, u, g, seed, c.contiguous(), n, PRECISE=precise, BLOCK=1024)
    return word, u, g


@TRITON
def test_word_and_uniform_bit_exact(backend):
    seed, c = _inputs()
    word, u, _ = _run(seed, c, precise=CUDA)
    want = ref.philox(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3])
    assert torch.equal(word, want)
    assert torch.equal(u, ref.uniform(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3]))
    assert bool(((u > 0) & (u < 1)).all())


@TRITON
@pytest.mark.skipif(CUDA, reason="interpreter-only check (numpy log); CUDA has the torch bit-exact test")
def test_gumbel_formula_interpreter(backend):
    """The interpreter's log is numpy's: the kernel must equal -log(-log(u)) computed by
    numpy in float32 from the reference uniforms, bit for bit (torch's CPU log may differ
    from numpy's by an ulp, which the outer log near 0 amplifies)."""
    seed, c = _inputs()
    _, _, g = _run(seed, c, precise=False)
    u = ref.uniform(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3]).numpy()
    want = -np.log(-np.log(u))
    assert want.dtype == np.float32
    assert np.array_equal(g.numpy(), want)
    close = torch.allclose(g, ref.gumbel(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3]), rtol=0, atol=2e-6)
    assert close


@TRITON
@NEEDS_CUDA
def test_gumbel_bit_exact_cuda(backend):
    """libdevice logf on the GPU is the CUDA math library torch uses: bit-exact."""
    seed, c = _inputs()
    _, _, g = _run(seed, c, precise=True)
    assert torch.equal(g, ref.gumbel(seed, c[:, 0], c[:, 1], c[:, 2], c[:, 3]))
