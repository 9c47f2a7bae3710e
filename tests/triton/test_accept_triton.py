"""Triton accept_linear / accept_quadratic / accept_rejection vs the torch reference.

Every output of the 6-tuple is compared exactly. Drafts are built from the reference's
own choices so that rows accept different numbers of drafts (none, some, all), with and
without eos. CPU: interpreter, tiny vocabularies (odd sizes, several vocabulary ranges);
CUDA adds the real shape [B, 32, 131072] bf16.
"""
import pytest
import torch

from tests.triton.support import DEV, I32, NEEDS_CUDA, TRITON, logits
from tridiff import reference as ref
from tridiff.ops.accept import accept_linear as op_accept_linear
from tridiff.triton import accept as ta


def seeds(B, base=21):
    s = torch.tensor([base + 1013 * b for b in range(B)], dtype=torch.int64)
    s[-1] |= -2**63
    return s.to(DEV), torch.arange(B, dtype=torch.int64, device=DEV) * 7 + 1


def same(a, b):
    for i, (p, q) in enumerate(zip(a, b)):
        assert p.dtype == q.dtype and torch.equal(p, q), f"output {i}: {p.tolist()} != {q.tolist()}"


def drafts_from(ar, keep):
    """Drafts equal to ar[:, :n] for the first keep[b] positions, then wrong (ar + 1)."""
    n = ar.shape[1] - 1
    i = torch.arange(n, device=ar.device)[None, :]
    return torch.where(i < torch.tensor(keep, device=ar.device)[:, None], ar[:, :n], ar[:, :n] + 1)


# ---- linear -----------------------------------------------------------------------------

@TRITON
@pytest.mark.parametrize("V", [1000, 777])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_linear_greedy(backend, V, dtype, ranges):
    B, n = 3, 4
    x = logits(B, n + 1, V, dtype=dtype, seed=V)
    ar = ref.sample(x, 0.0, None, None)
    draft = drafts_from(ar, [0, 2, n])  # rows accept 0, 2 and all drafts
    P = torch.tensor([0, 5, 17], **I32)
    for eos in (-1, int(ar[1, 1]), int(ar[2, 0])):  # no eos; eos inside row 1; row 2's first token
        got = ta.accept_linear(x, draft, P, eos, 0.0, None, None)
        same(got, ref.accept_linear(x, draft, P, eos, 0.0, None, None))
    assert got[0].tolist() == [1, 3, n + 1]


@TRITON
def test_linear_sampled(backend, ranges):
    B, n, V = 2, 3, 777
    x = logits(B, n + 1, V, seed=4, scale=1.0)
    seed, offset = seeds(B)
    ar = ref.sample(x, 0.9, seed, offset)
    draft = drafts_from(ar, [1, n])
    P = torch.tensor([3, 9], **I32)
    got = ta.accept_linear(x, draft, P, -1, 0.9, seed, offset)
    same(got, ref.accept_linear(x, draft, P, -1, 0.9, seed, offset))
    assert got[0].tolist() == [2, n + 1]


@TRITON
def test_linear_ties_and_zero_drafts(backend):
    V = 300
    x = torch.zeros(2, 1, V, device=DEV)
    x[0, 0, [200, 100]] = 1.0
    draft = torch.zeros(2, 0, dtype=torch.int64, device=DEV)  # n = 0: only the seed's successor
    P = torch.tensor([4, 0], **I32)
    got = ta.accept_linear(x, draft, P, 100, 0.0, None, None)
    same(got, ref.accept_linear(x, draft, P, 100, 0.0, None, None))
    assert got[1].tolist() == [[100], [0]] and got[5].tolist() == [True, False]


@TRITON
def test_linear_public_op_dispatches(backend):
    x = logits(2, 3, 200, seed=1)
    ar = ref.sample(x, 0.0, None, None)
    draft = drafts_from(ar, [2, 1])
    P = torch.tensor([1, 2], **I32)
    want = op_accept_linear(x, draft, P, eos_id=-1, backend="torch")
    got = op_accept_linear(x, draft, P, eos_id=-1, backend="triton")
    same(got, want)


# ---- quadratic ----------------------------------------------------------------------------

def _quad_case(B, L, V, dtype, seed, keep):
    x = logits(B, L * (L + 1), V, dtype=dtype, seed=seed)
    pred0 = ref.sample(x.view(B, L, L + 1, V)[:, :, 0], 0.0, None, None)  # [B, L]
    g = torch.Generator().manual_seed(seed)
    draft = torch.randint(0, V, (B, L), generator=g).to(DEV)
    for b, k in enumerate(keep):  # pred[a, 0] == d[a+1] for a < k, then a mismatch
        draft[b, 1:k + 1] = pred0[b, :k]
        if k + 1 < L:
            draft[b, k + 1] = (pred0[b, k] + 1) % V
    return x, draft


@TRITON
@pytest.mark.parametrize("L", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_quadratic(backend, L, dtype, ranges):
    B, V = 3, 300
    keep = [0, min(2, L - 1), L - 1]
    x, draft = _quad_case(B, L, V, dtype, seed=L, keep=keep)
    P = torch.tensor([2, 0, 30], **I32)
    for eos in (-1, int(draft[2, 0]), int(draft[1, min(1, L - 1)])):
        got = ta.accept_quadratic(x, draft, P, eos)
        same(got, ref.accept_quadratic(x, draft, P, eos))
    assert got[0].tolist() == [k + 1 for k in keep]


# ---- rejection -----------------------------------------------------------------------------

@TRITON
def test_rejection_sampled(backend, noisy_dtype):
    dtype = noisy_dtype
    B, n, V = 3, 4, 777
    x = logits(B, n + 1, V, dtype=dtype, seed=9, scale=2.0)
    noise = logits(B, n, V, seed=10, scale=1.0).to(dtype)
    xd = (x[:, :n].float() + noise.float() * torch.tensor([0.0, 0.3, 3.0], device=DEV)[:, None, None]).to(dtype)
    seed, offset = seeds(B)
    draft = ref.sample(xd, 1.0, seed + 5, offset)  # drafts drawn from the draft model
    P = torch.tensor([0, 8, 3], **I32)
    for eos in (-1, int(draft[1, 0])):
        got = ta.accept_rejection(x, xd, draft, P, eos, 1.0, seed, offset)
        same(got, ref.accept_rejection(x, xd, draft, P, eos, 1.0, seed, offset))
    # row 0 (draft == target) accepts everything and takes the bonus; row 2 rejects early
    assert got[0][0].item() == n + 1 and got[0][2].item() < n + 1


@TRITON
def test_rejection_zero_drafts_and_greedy(backend):
    B, V = 2, 500
    x = logits(B, 1, V, seed=12, scale=1.0)
    seed, offset = seeds(B)
    empty = torch.zeros(B, 0, dtype=torch.int64, device=DEV)
    P = torch.tensor([1, 2], **I32)
    got = ta.accept_rejection(x, x[:, :0], empty, P, -1, 0.6, seed, offset)
    same(got, ref.accept_rejection(x, x[:, :0], empty, P, -1, 0.6, seed, offset))
    x3 = logits(B, 3, V, seed=13)
    draft = drafts_from(ref.sample(x3, 0.0, None, None), [1, 2])
    got = ta.accept_rejection(x3, x3[:, :2], draft, P, -1, 0.0, None, None)
    same(got, ref.accept_linear(x3, draft, P, -1, 0.0, None, None))


# ---- real shapes (GPU only) ------------------------------------------------------------------

@TRITON
@NEEDS_CUDA
@pytest.mark.parametrize("B", [1, 4])
def test_real_shape_bf16(backend, B):
    n, V = 31, 131072
    x = logits(B, n + 1, V, dtype=torch.bfloat16, seed=B, scale=2.0)
    seed, offset = seeds(B)
    ar = ref.sample(x, 0.0, None, None)
    draft = drafts_from(ar, [min(3 * b, n) for b in range(B)])
    P = torch.arange(B, **I32) * 100
    same(ta.accept_linear(x, draft, P, 2, 0.0, None, None), ref.accept_linear(x, draft, P, 2, 0.0, None, None))
    same(ta.accept_linear(x, draft, P, -1, 0.7, seed, offset), ref.accept_linear(x, draft, P, -1, 0.7, seed, offset))
    xd = (x[:, :n].float() + 0.2 * logits(B, n, V, seed=77)).to(torch.bfloat16)
    dr = ref.sample(xd, 1.0, seed + 1, offset)
    same(ta.accept_rejection(x, xd, dr, P, -1, 1.0, seed, offset),
         ref.accept_rejection(x, xd, dr, P, -1, 1.0, seed, offset))
    L = 16
    keep = [7, 0, 15, 10][:B]
    xq, dq = _quad_case(B, L, V, torch.bfloat16, seed=5, keep=keep)
    got = ta.accept_quadratic(xq, dq, P, -1)
    same(got, ref.accept_quadratic(xq, dq, P, -1))
    assert got[0].tolist() == [k + 1 for k in keep]
