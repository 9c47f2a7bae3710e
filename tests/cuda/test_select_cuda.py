"""CUDA sampling / diffusion / acceptance kernels against the torch reference on the GPU,
bf16 logits with a real vocabulary (128256): ids and counts exact, confidence within twice
torch's own bf16 error against float64."""
import pytest
import torch

import tridiff.ops as ops
from tests.cuda.support import CUDA, gen, randn
from tridiff import _dispatch

V = 128256


def _seeds(B, g):
    seed = torch.randint(-2**62, 2**62, (B,), generator=g, device="cuda", dtype=torch.int64)
    offset = torch.randint(0, 2**40, (B,), generator=g, device="cuda", dtype=torch.int64)
    return seed, offset


@pytest.mark.parametrize("backend", CUDA)
def test_auto_picks_cuda(backend):
    x = torch.zeros(2, 1, 16, device="cuda")
    assert _dispatch.resolve("sample", "auto", x.device, (x, 0.0, None, None), {}) == "cuda"


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_sample(backend, temperature, dtype):
    g = gen(1)
    B, T = 8, 4
    x = randn((B, T, V), dtype, g) * 3
    x[0, 0] = 0.5  # ties -> lowest id
    seed, offset = _seeds(B, g) if temperature else (None, None)
    ref = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    out = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend=backend)
    assert torch.equal(ref, out) and int(out[0, 0]) == (0 if temperature == 0 else int(ref[0, 0]))


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_accept_linear(backend, temperature):
    g = gen(2)
    B, n = 4, 31
    x = randn((B, n + 1, V), torch.bfloat16, g) * 2
    seed, offset = _seeds(B, g) if temperature else (None, None)
    ar = ops.sample(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    drafts = ar[:, :n].clone()
    drafts[1, 3] = (drafts[1, 3] + 1) % V
    drafts[2, 0] = (drafts[2, 0] + 1) % V
    lens = torch.tensor([0, 50, 4000, 7], dtype=torch.int32, device="cuda")
    eos = int(ar[3, 10])
    ref = ops.accept_linear(x, drafts, lens, eos_id=eos, temperature=temperature, seed=seed, offset=offset,
                            backend="torch")
    out = ops.accept_linear(x, drafts, lens, eos_id=eos, temperature=temperature, seed=seed, offset=offset,
                            backend=backend)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    assert out.n_accepted.tolist()[:3] == [n + 1, 4, 1]


@pytest.mark.parametrize("backend", CUDA)
def test_accept_rejection(backend):
    g = gen(5)
    B, n, T = 4, 8, 0.9
    target = randn((B, n + 1, V), torch.bfloat16, g) * 2
    draft_logits = (target[:, :n].float() + randn((B, n, V), torch.float32, g) * 0.3).to(torch.bfloat16)
    seed, offset = _seeds(B, g)
    drafts = ops.sample(draft_logits, temperature=T, seed=seed + 1, offset=offset, backend="torch")
    lens = torch.zeros(B, dtype=torch.int32, device="cuda")
    ref = ops.accept_rejection(target, draft_logits, drafts, lens, eos_id=-1, temperature=T, seed=seed,
                               offset=offset, backend="torch")
    out = ops.accept_rejection(target, draft_logits, drafts, lens, eos_id=-1, temperature=T, seed=seed,
                               offset=offset, backend=backend)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("L", [4, 16])
def test_accept_quadratic(backend, L):
    g = gen(3)
    B = 2
    x = randn((B, L * (L + 1), V), torch.bfloat16, g)
    pred0 = x.view(B, L, L + 1, V)[:, :, 0].argmax(-1)
    draft = torch.randint(0, V, (B, L), generator=g, device="cuda")
    draft[0, 1:] = pred0[0, : L - 1]
    draft[1, 1:3] = pred0[1, :2]
    lens = torch.tensor([10, 3000], dtype=torch.int32, device="cuda")
    ref = ops.accept_quadratic(x, draft, lens, eos_id=-1, backend="torch")
    out = ops.accept_quadratic(x, draft, lens, eos_id=-1, backend=backend)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    assert out.n_accepted.tolist() == [L, min(3, L)]


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_diffusion_confidence_and_unmask(backend, temperature):
    g = gen(4)
    B, L, mask_id = 4, 32, V - 1
    x = randn((B, L, V), torch.bfloat16, g) * 4
    seed, offset = _seeds(B, g) if temperature else (None, None)
    x0_ref, conf_ref = ops.diffusion_confidence(x, temperature=temperature, seed=seed, offset=offset, backend="torch")
    x0, conf = ops.diffusion_confidence(x, temperature=temperature, seed=seed, offset=offset, backend=backend)
    assert torch.equal(x0, x0_ref)
    exact = torch.softmax(x.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
    ulp = torch.finfo(torch.bfloat16).eps * exact.max().item()
    assert (conf.double() - exact).abs().max().item() <= 2 * (conf_ref.double() - exact).abs().max().item() + 0.5 * ulp
    block = torch.where(torch.rand((B, L), generator=g, device="cuda") < 0.7, mask_id, 5)
    for kw in ({"threshold": 0.05}, {"num_transfer": torch.tensor([1, 4, 0, 32], dtype=torch.int32, device="cuda")}):
        ref = ops.diffusion_unmask(block, x0, conf, mask_id=mask_id, backend="torch", **kw)
        out = ops.diffusion_unmask(block, x0, conf, mask_id=mask_id, backend=backend, **kw)
        assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
