"""sample / diffusion_confidence / diffusion_unmask / num_transfer_schedule: exact greedy
results, the Philox-stream formulas bit for bit, distributions, unmasking rules, bad input,
torch.library registration."""

import pytest
import torch

from tests.ops.stats import chi2_test, power_against
from tests.ops.support import DEVICE, I64, assert_names_argument, need, opcheck
from tridiff import ops
from tridiff.reference.philox import DIFFUSION, SAMPLE, gumbel, uniform

LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")  # keeps "torch" out of ids: -k torch selects a backend


def seeds(B, start=1):
    return (torch.arange(B, dtype=torch.int64) * 7919 + start).to(DEVICE)


def with_ties(B, T, V, dtype, gen):
    """Random logits where every position's maximum appears twice (at j < k): argmax must say j."""
    x = torch.randn(B, T, V, generator=gen, dtype=torch.float32)
    j = torch.randint(0, V - 1, (B, T, 1), generator=gen)
    k = j + 1 + torch.randint(0, V - 1, (B, T, 1), generator=gen) % (V - 1 - j)
    top = x.amax(-1, keepdim=True) + 1
    x.scatter_(-1, j, top).scatter_(-1, k, top)
    return x.to(dtype).to(DEVICE), j.squeeze(-1).to(DEVICE)


# ---- sample ------------------------------------------------------------------------------------------

def test_argmax_returns_the_first_maximum():
    # The references rely on this (ties -> lowest id), for long rows and low precision too.
    x = torch.zeros(3, 131072, dtype=torch.bfloat16)
    x[:, [70000, 9, 131071]] = 1
    assert torch.argmax(x, -1).tolist() == [9, 9, 9]
    y = torch.zeros(100003)
    y[[99999, 50001, 4]] = 2
    assert int(torch.argmax(y)) == 4


@pytest.mark.parametrize("dtype", LOW_PRECISION + [torch.float64], ids=dtype_id)
@pytest.mark.parametrize("V", [1, 7, 1000, 33001])
def test_sample_greedy_exact_with_ties(backend, dtype, V):
    g = torch.Generator().manual_seed(V)
    if V == 1:
        logits, first = torch.randn(3, 2, 1, dtype=dtype).to(DEVICE), torch.zeros(3, 2, **I64)
    else:
        logits, first = with_ties(3, 2, V, dtype, g)
    need(backend, "sample", logits, 0.0, None, None)
    got = ops.sample(logits, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (3, 2)
    assert torch.equal(got, first) and torch.equal(got, torch.argmax(logits.float(), -1))
    flat = ops.sample(logits[:, 1], backend=backend)  # [B, V] -> [B]
    assert flat.shape == (3,) and torch.equal(flat, first[:, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_sample_is_the_sample_stream_gumbel_max(backend, dtype):
    # Bit-level definition: argmax_v(float32(logits)/T + gumbel(seed[b], v, t, SAMPLE, offset[b])).
    g = torch.Generator().manual_seed(3)
    B, T, V, temp = 4, 5, 301, 0.7
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype).to(DEVICE)
    seed, offset = seeds(B), torch.tensor([0, 1, 2**33 + 5, 17], **I64)
    need(backend, "sample", logits, temp, seed, offset)
    got = ops.sample(logits, temperature=temp, seed=seed, offset=offset, backend=backend)
    v = torch.arange(V, device=DEVICE)
    t = torch.arange(T, device=DEVICE)[None, :, None]
    noise = gumbel(seed[:, None, None], v, t, SAMPLE, offset[:, None, None])
    # A device tensor keeps the division exact on CUDA too (a CPU scalar there means a * (1/T)).
    want = torch.argmax(logits.float() / torch.tensor(temp, device=DEVICE) + noise, -1)
    assert torch.equal(got, want)


def test_sample_reproducible_per_row_and_offset_sensitive(backend):
    B, T, V = 6, 64, 1000
    logits = torch.zeros(B, T, V, device=DEVICE)  # uniform: every token equally likely
    seed, offset = seeds(B), torch.arange(B, **I64)
    need(backend, "sample", logits, 1.0, seed, offset)
    a = ops.sample(logits, temperature=1.0, seed=seed, offset=offset, backend=backend)
    assert torch.equal(a, ops.sample(logits, temperature=1.0, seed=seed, offset=offset, backend=backend))
    # Each row depends only on its own seed/offset: the batch equals one call per row.
    for b in range(B):
        one = ops.sample(logits[b:b + 1], temperature=1.0, seed=seed[b:b + 1], offset=offset[b:b + 1],
                         backend=backend)
        assert torch.equal(one[0], a[b])
    b2 = ops.sample(logits, temperature=1.0, seed=seed, offset=offset + 1, backend=backend)
    c2 = ops.sample(logits, temperature=1.0, seed=seed + 1, offset=offset, backend=backend)
    # Two independent uniform draws over 1000 tokens agree with probability 1/1000.
    assert float((a == b2).double().mean()) < 0.02 and float((a == c2).double().mean()) < 0.02
    # Positions of one row are different draws, not one repeated value.
    assert all(len(set(row)) > T // 2 for row in a.tolist())


def test_sample_distribution_is_softmax_of_logits_over_temperature(backend):
    logits8 = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.8, -0.4, 1.5, 0.1], dtype=torch.float64)
    temp = 0.7
    B, T = 64, 4096  # 262144 draws: distinct seeds per row, distinct positions within a row
    logits = logits8.float().to(DEVICE).expand(B, T, 8).contiguous()
    seed, offset = seeds(B, 11), torch.arange(B, **I64) * 3
    need(backend, "sample", logits, temp, seed, offset)
    got = ops.sample(logits, temperature=temp, seed=seed, offset=offset, backend=backend)
    counts = torch.bincount(got.flatten().cpu(), minlength=8).double()
    p = torch.softmax(logits8 / temp, 0)
    assert chi2_test(counts, p) > 1e-6
    # The test has the power to reject wrong formulas: a missing temperature (softmax(l)) or
    # logits*T instead of logits/T (softmax(l*T)) would give mean chi-square statistics of about
    # 2.2e4 and 8.0e4 on 7 degrees of freedom (the 1e-6 cut is at 40; p-values underflow to 0).
    N = B * T
    for wrong in (torch.softmax(logits8, 0), torch.softmax(logits8 * temp, 0)):
        assert power_against(N, p, wrong) < 1e-30


# ---- diffusion_confidence --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
def test_confidence_greedy_exact_and_within_torch_error(backend, dtype):
    g = torch.Generator().manual_seed(5)
    B, L, V = 3, 33, 517
    logits, first = with_ties(B, L, V, dtype, g)
    logits[0, 0] = torch.randn(V, generator=g).to(dtype)  # one row without a forced tie
    first[0, 0] = torch.argmax(logits[0, 0])
    need(backend, "diffusion_confidence", logits, 0.0, None, None)
    x0, conf = ops.diffusion_confidence(logits, backend=backend)
    assert torch.equal(x0, first) and conf.dtype == dtype and conf.shape == (B, L)
    plain = torch.softmax(logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1).to(dtype)
    truth = torch.softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
    err_torch = float((plain.double() - truth).abs().max())
    assert not torch.isnan(conf).any()
    assert float((conf.double() - truth).abs().max()) <= 2 * err_torch
    if backend == "torch":
        assert torch.equal(conf, plain)


def test_confidence_fp64_is_computed_in_fp64(backend):
    logits = torch.randn(2, 4, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    need(backend, "diffusion_confidence", logits, 0.0, None, None)
    x0, conf = ops.diffusion_confidence(logits, backend=backend)
    assert torch.equal(x0, logits.argmax(-1))
    want = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
    assert conf.dtype == torch.float64
    assert float((conf - want).abs().max()) <= 4 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_confidence_sampled_x0_is_the_fp64_diffusion_stream(backend, dtype):
    g = torch.Generator().manual_seed(9)
    B, L, V, temp = 3, 8, 129, 0.6
    logits = torch.randn(B, L, V, generator=g).to(dtype).to(DEVICE)
    seed, offset = seeds(B, 5), torch.tensor([4, 0, 9], **I64)
    need(backend, "diffusion_confidence", logits, temp, seed, offset)
    x0, conf = ops.diffusion_confidence(logits, temperature=temp, seed=seed, offset=offset, backend=backend)
    v = torch.arange(V, device=DEVICE)
    t = torch.arange(L, device=DEVICE)[None, :, None]
    u = uniform(seed[:, None, None], v, t, DIFFUSION, offset[:, None, None]).double()
    want = torch.argmax(logits.double() - temp * torch.log(-torch.log(u)), -1)
    assert torch.equal(x0, want)
    assert not torch.equal(x0, logits.argmax(-1))  # the noise really changed some choices
    # The temperature never enters conf: it is softmax(logits), not softmax(logits / T).
    plain = torch.softmax(logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1).to(dtype)
    truth = torch.softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
    assert float((conf.double() - truth).abs().max()) <= 2 * float((plain.double() - truth).abs().max())


def test_confidence_sampled_distribution(backend):
    logits8 = torch.tensor([1.0, -0.5, 0.2, 1.4, -1.2, 0.0, 0.6, 0.9], dtype=torch.float64)
    temp = 1.6
    B, L = 64, 2048  # 131072 draws
    logits = logits8.float().to(DEVICE).expand(B, L, 8).contiguous()
    seed, offset = seeds(B, 3), torch.zeros(B, **I64)
    need(backend, "diffusion_confidence", logits, temp, seed, offset)
    x0, _ = ops.diffusion_confidence(logits, temperature=temp, seed=seed, offset=offset, backend=backend)
    counts = torch.bincount(x0.flatten().cpu(), minlength=8).double()
    p = torch.softmax(logits8 / temp, 0)
    assert chi2_test(counts, p) > 1e-6
    # Power: no temperature (softmax(l)) or noise scaled by 1/T instead of T (softmax(l*T)) give
    # mean chi-square statistics of about 6.7e3 and 3.4e4 (the 1e-6 cut is at 40).
    for wrong in (torch.softmax(logits8, 0), torch.softmax(logits8 * temp, 0)):
        assert power_against(B * L, p, wrong) < 1e-30


# ---- diffusion_unmask ------------------------------------------------------------------------------

M = 99  # mask id in the hand-built cases


def unmask(backend, block, x0, conf, mask_id, threshold=None, num_transfer=None):
    block, x0, conf = block.to(DEVICE), x0.to(DEVICE), conf.to(DEVICE)
    if isinstance(num_transfer, torch.Tensor):
        num_transfer = num_transfer.to(DEVICE)
    nt_args = num_transfer
    if isinstance(num_transfer, int):
        nt_args = torch.full((block.shape[0],), num_transfer, dtype=torch.int32, device=DEVICE)
    need(backend, "diffusion_unmask", block, x0, conf, mask_id, threshold, nt_args)
    out = ops.diffusion_unmask(block, x0, conf, mask_id=mask_id, threshold=threshold,
                               num_transfer=num_transfer, backend=backend)
    return out.new_block.cpu(), out.transferred.cpu()


def test_unmask_threshold_rule(backend):
    block = [[5, M, M, M, 7, M],     # 2 and 5 clear the threshold; 4 is confident but not masked
             [M, M, 1, M, 2, 3],     # nobody clears it: only the best, ties -> position 1
             [1, 2, 3, 4, 5, 6],     # no masks: unchanged
             [M, M, M, 8, 8, 8]]     # best predicts the mask id: "unmasked" to the mask id
    conf = [[0.99, 0.30, 0.95, 0.50, 0.99, 0.90],
            [0.20, 0.60, 0.99, 0.60, 0.99, 0.99],
            [0.99, 0.99, 0.99, 0.99, 0.99, 0.99],
            [0.40, 0.80, 0.10, 0.99, 0.99, 0.99]]
    x0 = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25], [30] * 6, [40, M, 42, 43, 44, 45]]
    new, tr = unmask(backend, torch.tensor(block), torch.tensor(x0), torch.tensor(conf), mask_id=M,
                     threshold=0.9)
    assert tr.tolist() == [[False, False, True, False, False, True],
                           [False, True, False, False, False, False],
                           [False] * 6,
                           [False, True, False, False, False, False]]
    assert new.tolist() == [[5, M, 12, M, 7, 15], [M, 21, 1, M, 2, 3], [1, 2, 3, 4, 5, 6], [M, M, M, 8, 8, 8]]


def test_unmask_threshold_compares_in_conf_dtype(backend):
    # conf >= threshold as PyTorch evaluates it: the threshold is rounded to conf's dtype.
    # bf16(0.9) == 0.8984375, so a bf16 confidence of 0.8984375 clears a 0.9 threshold.
    conf = torch.tensor([[0.8984375, 0.99, 0.5, 0.8984375]], dtype=torch.bfloat16)
    block = torch.full((1, 4), M)
    x0 = torch.tensor([[1, 2, 3, 4]])
    new, tr = unmask(backend, block, x0, conf, mask_id=M, threshold=0.9)
    assert tr.tolist() == [[True, True, False, True]]
    _, tr32 = unmask(backend, block, x0, conf.float(), mask_id=M, threshold=0.9)
    assert tr32.tolist() == [[False, True, False, False]]  # fp32 0.8984375 < fp32(0.9)


def test_unmask_top_k_ties_clamping_and_rows(backend):
    block = torch.tensor([[M, M, M, M, M, M],
                          [M, M, M, M, M, M],
                          [3, M, 4, M, 5, 6],
                          [1, 2, 3, 4, 5, 6],
                          [M, M, M, M, M, M]])
    conf = torch.tensor([[0.5, 0.7, 0.7, 0.2, 0.7, 0.9]] * 2 + [[0.9, 0.1, 0.9, 0.2, 0.9, 0.9]]
                        + [[0.5] * 6] + [[0.3] * 6])
    x0 = torch.arange(30).view(5, 6) + 100
    k = torch.tensor([3, 0, 10, 2, 4], dtype=torch.int32)
    new, tr = unmask(backend, block, x0, conf, mask_id=M, num_transfer=k)
    assert tr.tolist() == [[False, True, True, False, False, True],   # 0.9, then the 0.7 ties by position
                           [False] * 6,                               # k = 0
                           [False, True, False, True, False, False],  # clamped to the 2 candidates
                           [False] * 6,                               # no masks
                           [True, True, True, True, False, False]]    # all tied: lowest positions
    assert torch.equal(new, torch.where(tr, x0, block))
    # An int num_transfer applies to every row.
    _, tr_int = unmask(backend, block[:2], x0[:2], conf[:2], mask_id=M, num_transfer=1)
    assert tr_int.tolist() == [[False] * 5 + [True]] * 2


def _brute_force(block, x0, conf, mask_id, threshold, k):
    new, tr = block.clone(), torch.zeros_like(block, dtype=torch.bool)
    for b in range(block.shape[0]):
        cands = [i for i in range(block.shape[1]) if int(block[b, i]) == mask_id]
        order = sorted(cands, key=lambda i: (-float(conf[b, i]), i))
        if threshold is not None:
            thr = float(torch.tensor(threshold, dtype=conf.dtype))
            chosen = order[:1] + [i for i in order[1:] if float(conf[b, i]) >= thr]
        else:
            chosen = order[:int(k[b])]
        for i in chosen:
            tr[b, i], new[b, i] = True, x0[b, i]
    return new, tr


@pytest.mark.parametrize("rule", ["threshold", "top_k"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=dtype_id)
def test_unmask_matches_a_sorting_brute_force(backend, rule, dtype):
    g = torch.Generator().manual_seed(17)
    B, L = 16, 33
    block = torch.where(torch.rand(B, L, generator=g) < 0.6, M, torch.randint(0, 50, (B, L), generator=g))
    block[3] = 7  # one row without masks
    x0 = torch.randint(0, 120, (B, L), generator=g)
    conf = (torch.randint(1, 11, (B, L), generator=g).float() / 10).to(dtype)  # many ties
    k = torch.randint(0, L + 3, (B,), generator=g, dtype=torch.int32)
    thr, kk = (0.7, None) if rule == "threshold" else (None, k)
    new, tr = unmask(backend, block, x0, conf, mask_id=M, threshold=thr, num_transfer=kk)
    want_new, want_tr = _brute_force(block, x0, conf, M, thr, k)
    assert torch.equal(tr, want_tr) and torch.equal(new, want_new)


def test_num_transfer_schedule_exact():
    counts = torch.tensor([10, 3, 0, 32, 33, 31])
    got = ops.num_transfer_schedule(counts, 4)
    assert got.dtype == torch.int32
    assert got.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [8, 8, 8, 8], [9, 8, 8, 8], [8, 8, 8, 7]]
    s32 = ops.num_transfer_schedule(torch.tensor([33, 31], dtype=torch.int32), 32)
    assert s32[0].tolist() == [2] + [1] * 31 and s32[1].tolist() == [1] * 31 + [0]
    many = torch.arange(0, 200)
    for steps in (1, 5, 32):
        sched = ops.num_transfer_schedule(many, steps).long()
        assert torch.equal(sched.sum(1), many)
        assert bool((sched[:, :-1] >= sched[:, 1:]).all()) and bool((sched.amax(1) - sched.amin(1) <= 1).all())


# ---- bad input -------------------------------------------------------------------------------------

def _bad_calls():
    lg = torch.randn(2, 3, 5)
    s = torch.zeros(2, dtype=torch.int64)
    blk, cf = torch.full((2, 4), M), torch.rand(2, 4)
    x0 = torch.zeros(2, 4, dtype=torch.int64)
    return [
        ("logits", lambda: ops.sample(lg.long())),
        ("logits", lambda: ops.sample(lg[None])),
        ("logits", lambda: ops.sample(torch.randn(2, 0))),
        ("logits", lambda: ops.sample([[0.0, 1.0]])),
        ("temperature", lambda: ops.sample(lg, temperature=-0.1)),
        ("temperature", lambda: ops.sample(lg, temperature=float("nan"))),
        ("temperature", lambda: ops.sample(lg, temperature=True)),
        ("temperature", lambda: ops.sample(lg, temperature=torch.tensor(1.0))),
        ("seed", lambda: ops.sample(lg, temperature=1.0, offset=s)),
        ("offset", lambda: ops.sample(lg, temperature=1.0, seed=s)),
        ("seed", lambda: ops.sample(lg, temperature=1.0, seed=s.int(), offset=s)),
        ("offset", lambda: ops.sample(lg, temperature=1.0, seed=s, offset=torch.zeros(3, dtype=torch.int64))),
        ("logits", lambda: ops.diffusion_confidence(lg[0])),
        ("temperature", lambda: ops.diffusion_confidence(lg, temperature=-1.0)),
        ("seed", lambda: ops.diffusion_confidence(lg, temperature=0.5, seed=None, offset=s)),
        ("block", lambda: ops.diffusion_unmask(blk.int(), x0, cf, mask_id=M, threshold=0.9)),
        ("x0", lambda: ops.diffusion_unmask(blk, x0[:, :3], cf, mask_id=M, threshold=0.9)),
        ("conf", lambda: ops.diffusion_unmask(blk, x0, cf.long(), mask_id=M, threshold=0.9)),
        ("conf", lambda: ops.diffusion_unmask(blk, x0, cf[:1], mask_id=M, threshold=0.9)),
        ("mask_id", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=-1, threshold=0.9)),
        ("mask_id", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=99.0, threshold=0.9)),
        ("threshold", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M)),
        ("threshold", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M, threshold=0.9, num_transfer=1)),
        ("threshold", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M, threshold=0.0)),
        ("threshold", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M, threshold=1.5)),
        ("num_transfer", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M, num_transfer=-1)),
        ("num_transfer", lambda: ops.diffusion_unmask(blk, x0, cf, mask_id=M,
                                                      num_transfer=torch.ones(3, dtype=torch.int32))),
        ("mask_counts", lambda: ops.num_transfer_schedule(torch.tensor([1.0]), 4)),
        ("mask_counts", lambda: ops.num_transfer_schedule(torch.tensor([-1]), 4)),
        ("steps", lambda: ops.num_transfer_schedule(torch.tensor([3]), 0)),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_input_names_the_argument(i):
    assert_names_argument(*_bad_calls()[i])


# ---- torch.library registration ----------------------------------------------------------------------

def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(2, 3, 11, generator=g).to(DEVICE)
    s, o = seeds(2), torch.tensor([1, 2], **I64)
    blk = torch.tensor([[M, 1, M, M], [M, M, 2, 3]], device=DEVICE)
    x0 = torch.randint(0, 10, (2, 4), generator=g).to(DEVICE)
    cf = torch.rand(2, 4, generator=g).to(DEVICE)
    nt = torch.tensor([2, 1], dtype=torch.int32, device=DEVICE)
    return [
        ("sample", (lg, 0.0, None, None)),
        ("sample", (lg.half(), 0.9, s, o)),
        ("diffusion_confidence", (lg, 0.0, None, None)),
        ("diffusion_confidence", (lg.bfloat16(), 1.3, s, o)),
        ("diffusion_unmask", (blk, x0, cf, M, 0.5, None)),
        ("diffusion_unmask", (blk, x0, cf, M, None, nt)),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_cases())))
def test_opcheck(backend, case):
    opcheck(backend, *_opcheck_cases()[case])
