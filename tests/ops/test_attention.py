"""tridiff.ops.attention against the plain transcription of docs/spec.md section 2, on every backend present."""
import random

import pytest
import torch

from tridiff import Mode, ops
from tridiff._checks import TridiffInputError
from tridiff.reference.attention import visibility
from tests.conftest import backends_serving, require_backend
from tests.ops.spec_attention import dense_attention, visible
from tests.ops.support import DEVICE

# On CPU only the reference runs here (Triton's interpreter has its own tiny-shape
# tests in tests/triton); on a GPU every backend takes this whole grid.
BACKENDS = backends_serving("attention")


def make_inputs(B, Tq, Hq, Hkv, D, Tmax, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).to(device)  # noqa: E731
    return r(B, Tq, Hq, D), r(B, Tq, Hkv, D), r(B, Tq, Hkv, D), r(B, Tmax, Hkv, D), r(B, Tmax, Hkv, D)


def run_case(backend, dtype, rows, Hq=4, Hkv=2, D=16, Tmax=None, scale=None):
    """rows: list of (mode, mode_arg, P, n). Checks against the dense computation of docs/spec.md section 2."""
    B = len(rows)
    Tq = max(n for *_, n in rows)
    Tmax = Tmax or max(P + n for _, _, P, n in rows) + 3
    q, k, v, kc, vc = make_inputs(B, Tq, Hq, Hkv, D, Tmax, dtype)
    modes = torch.tensor([m for m, *_ in rows], dtype=torch.int8, device=DEVICE)
    args = torch.tensor([a for _, a, _, _ in rows], dtype=torch.int32, device=DEVICE)
    P = torch.tensor([p for _, _, p, _ in rows], dtype=torch.int32, device=DEVICE)
    n = torch.tensor([x for *_, x in rows], dtype=torch.int32, device=DEVICE)
    require_backend(backend, "attention", (q, k, v, kc, vc, P, modes, args, n, None, D ** -0.5, False))
    out = torch.full_like(q, float("nan"))
    out = ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, q_lens=n, softmax_scale=scale,
                        backend=backend)
    want = dense_attention(q.cpu(), k.cpu(), v.cpu(), kc.cpu(), vc.cpu(), P.tolist(), modes.tolist(),
                           args.tolist(), n.tolist(), scale)
    assert not torch.isnan(out).any()
    # the op's layout contract (its torch.compile fake kernel returns this layout)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    err = (out.cpu().double() - want).abs().max().item()
    if dtype == torch.float64:
        tol = 1e-10
    else:
        tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
        # Same-dtype bound: at most 2x the error of the torch reference run in this dtype (both
        # against the float64 computation), plus one unit of the dtype at the output's scale for
        # outputs the reference gets exactly (one visible key).
        own = ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, q_lens=n, softmax_scale=scale,
                            backend="torch")
        own_err = (own.cpu().double() - want).abs().max().item()
        bound = 2 * own_err + torch.finfo(dtype).eps * want.abs().max().item()
        assert err <= bound, f"max abs error {err} > {bound} (2x the reference's {own_err} + one ulp)"
    assert err <= tol, f"max abs error {err} > {tol}"
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n,P", [(1, 0), (1, 40), (31, 0), (33, 7), (31, 97)])
@pytest.mark.parametrize("mode", [Mode.CAUSAL, Mode.BIDIR_BLOCK], ids=["causal", "bidir"])
def test_causal_and_bidir(backend, dtype, n, P, mode):
    run_case(backend, dtype, [(int(mode), 0, P, n)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("L,P", [(1, 0), (2, 5), (3, 0), (4, 33)])
def test_quadratic(backend, dtype, L, P):
    run_case(backend, dtype, [(int(Mode.QUADRATIC), L, P, L * (L + 1))])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,K,P", [(33, 32, 0), (33, 31, 4), (97, 32, 1), (5, 5, 3), (5, 0, 2)])
def test_causal_then_bidir(backend, n, K, P):
    run_case(backend, torch.float64, [(int(Mode.CAUSAL_THEN_BIDIR), K, P, n)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (8, 2), (8, 1)], ids=["gqa1", "gqa4", "gqa8"])
@pytest.mark.parametrize("D", [64, 128, 24])
def test_gqa_and_head_dims(backend, Hq, Hkv, D):
    run_case(backend, torch.float32, [(0, 0, 9, 5), (1, 0, 0, 3)], Hq=Hq, Hkv=Hkv, D=D)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_modes_ragged_batch(backend):
    """One call mixing AR decode, a diffusion block, QUADRATIC and prefill+draft rows."""
    rows = [(0, 0, 50, 1), (1, 0, 13, 32), (2, 3, 0, 12), (3, 8, 20, 31), (0, 0, 0, 33)]
    run_case(backend, torch.float64, rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_scale_option(backend):
    run_case(backend, torch.float64, [(0, 0, 6, 4), (1, 0, 2, 4)], scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_rows_are_zero_and_rows_independent(backend):
    rows = [(0, 0, 10, 3), (1, 0, 4, 7)]
    out = run_case(backend, torch.float64, rows)
    assert torch.count_nonzero(out[0, 3:]) == 0


def test_vectorised_visibility_matches_spec_loops():
    """The reference's mask (tensor form) equals the loop transcription, every mode."""
    rows = [(0, 0, 3, 7), (1, 0, 0, 5), (2, 2, 4, 6), (2, 3, 0, 12), (3, 4, 2, 9), (3, 0, 1, 3)]
    Tq, Tcap = 12, 8
    P = torch.tensor([r[2] for r in rows], dtype=torch.int32)
    m = visibility(P, torch.tensor([r[0] for r in rows], dtype=torch.int8),
                   torch.tensor([r[1] for r in rows], dtype=torch.int32),
                   torch.tensor([r[3] for r in rows], dtype=torch.int32), Tq, Tcap)
    for b, (mode, arg, p, n) in enumerate(rows):
        for i in range(Tq):
            for j in range(Tcap + Tq):
                key = j if j < Tcap else p + (j - Tcap)  # column -> logical key index
                want = i < n and (j < p if j < Tcap else visible(mode, arg, p, n, i, key))
                assert bool(m[b, i, j]) == want, (b, i, j)


# ---- ANCHORED_QUADRATIC --------------------------------------------------------------------

AN = int(Mode.ANCHORED_QUADRATIC)


def anchor_mask(anchors) -> int:
    """mode_args of an anchor set: bit a <=> anchor a, as the int32 holding those 32 bits."""
    bits = sum(1 << a for a in set(anchors))
    return bits - (1 << 32) if bits >= 1 << 31 else bits


def some_anchors(L: int, k: int, seed: int) -> list:
    return sorted(random.Random(seed).sample(range(L), k))


ANCHOR_GRID = sorted({(L, min(k, L)) for L in (4, 8, 16) for k in (1, 2, 4, L)})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,k", ANCHOR_GRID, ids=[f"L{L}-k{k}" for L, k in ANCHOR_GRID])
def test_anchored_quadratic(backend, L, k):
    anchors = some_anchors(L, k, seed=33 * L + k)
    run_case(backend, torch.float64, [(AN, anchor_mask(anchors), 7, L * (k + 1))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_anchored_quadratic_fp32_last_anchor(backend):
    """fp32; the last clean slot is an anchor (its mask rows see every clean key)."""
    run_case(backend, torch.float32, [(AN, anchor_mask([2, 7]), 19, 24)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_anchored_mixed_batch(backend):
    """Anchored rows with different masks beside other modes, an idle anchored row and
    L = 32 with anchor 31 (bit 31: a negative int32 mode_args)."""
    rows = [(AN, anchor_mask([1, 3]), 5, 12), (0, 0, 20, 1), (AN, anchor_mask([0, 2, 7]), 0, 32),
            (2, 2, 3, 6), (AN, anchor_mask([5]), 9, 0), (AN, anchor_mask([0, 31]), 2, 96), (1, 0, 4, 7)]
    assert anchor_mask([0, 31]) < 0
    run_case(backend, torch.float64, rows)


def test_anchored_visibility_matches_spec_loops():
    """Every anchor set for L = 1..5, and L = 32 with anchors {0, 31}: the reference mask
    equals the loop transcription."""
    rows = [(AN, anchor_mask(S), p, L * (len(S) + 1))
            for L in range(1, 6) for bits in range(1 << L)
            for S in [[a for a in range(L) if bits >> a & 1]] for p in [(bits + L) % 3]]
    rows += [(AN, anchor_mask([0, 31]), 1, 96), (AN, anchor_mask([1]), 2, 0)]
    Tq, Tcap = 96, 2
    m = visibility(torch.tensor([r[2] for r in rows], dtype=torch.int32),
                   torch.full((len(rows),), AN, dtype=torch.int8),
                   torch.tensor([r[1] for r in rows], dtype=torch.int32),
                   torch.tensor([r[3] for r in rows], dtype=torch.int32), Tq, Tcap)
    for b, (mode, arg, p, n) in enumerate(rows):
        want = torch.zeros(Tq, Tcap + Tq, dtype=torch.bool)
        for i in range(n):
            want[i, :p] = True
            for jn in range(n):
                want[i, Tcap + jn] = visible(mode, arg, p, n, i, p + jn)
        assert torch.equal(m[b], want), rows[b]


def _quadratic_to_anchored(L: int) -> torch.Tensor:
    """Slot a*(L+1)+b of QUADRATIC(L) -> its slot with every anchor: d_a at a, mask slot
    b-1 of sub-block a at L + a*L + b-1."""
    return torch.tensor([a if b == 0 else L + a * L + b - 1 for a in range(L) for b in range(L + 1)])


def _anchored_pair(L, seed, dtype=torch.float64):
    """QUADRATIC(L) inputs for rows with P = 5 and 0, and the same inputs permuted into
    the layout of ANCHORED_QUADRATIC with anchors {0..L-1}."""
    n = L * (L + 1)
    q, k, v, kc, vc = make_inputs(2, n, 4, 2, 16, 9, dtype, seed=seed)
    perm = _quadratic_to_anchored(L).to(DEVICE)
    moved = []
    for x in (q, k, v):
        y = torch.full_like(x, float("nan"))
        y[:, perm] = x
        moved.append(y)
    P = torch.tensor([5, 0], dtype=torch.int32, device=DEVICE)
    return (q, k, v), tuple(moved), kc, vc, P, perm


@pytest.mark.parametrize("L", [4, 8, 16])
def test_anchored_all_anchors_is_quadratic_permuted_reference(L):
    """Reference, exact: the mask of anchors {0..L-1} is QUADRATIC(L)'s with rows and new
    keys permuted; and with a softmax so sharp that each row takes exactly its best
    visible key (scale 1e8, fp64: every other weight underflows to 0), the outputs are
    bit-identical. (At ordinary scales the sums run over the keys in another order, so
    only rounding may differ: that is the backend test below.)"""
    n = L * (L + 1)
    perm = _quadratic_to_anchored(L)
    one = lambda x: torch.tensor([x], dtype=torch.int32)  # noqa: E731
    quad = visibility(one(0), torch.tensor([int(Mode.QUADRATIC)], dtype=torch.int8), one(L), one(n), n, 0)[0]
    anch = visibility(one(0), torch.tensor([AN], dtype=torch.int8), one(anchor_mask(range(L))), one(n), n, 0)[0]
    assert torch.equal(anch[perm][:, perm], quad)
    (q, k, v), (qa, ka, va), kc, vc, P, perm = _anchored_pair(L, seed=L)
    want = ops.attention(q, k, v, kc, vc, P, Mode.QUADRATIC, mode_args=L, softmax_scale=1e8, backend="torch")
    got = ops.attention(qa, ka, va, kc, vc, P, Mode.ANCHORED_QUADRATIC, mode_args=anchor_mask(range(L)),
                        softmax_scale=1e8, backend="torch")
    assert torch.equal(got[:, perm], want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [4, 8, 16])
def test_anchored_all_anchors_is_quadratic_permuted(backend, L):
    (q, k, v), (qa, ka, va), kc, vc, P, perm = _anchored_pair(L, seed=L + 1)
    args = (qa, ka, va, kc, vc, P, torch.full((2,), AN, dtype=torch.int8, device=DEVICE),
            torch.full((2,), anchor_mask(range(L)), dtype=torch.int32, device=DEVICE), None, None, 0.25, False)
    require_backend(backend, "attention", args)
    want = ops.attention(q, k, v, kc, vc, P, Mode.QUADRATIC, mode_args=L, backend=backend)
    got = ops.attention(qa, ka, va, kc, vc, P, Mode.ANCHORED_QUADRATIC, mode_args=anchor_mask(range(L)),
                        backend=backend)
    assert not torch.isnan(got).any()
    assert torch.allclose(got[:, perm], want, atol=1e-12, rtol=0)


def _paged_copy(kc, page, g):
    """Scatter a contiguous cache into shuffled pages; returns (pages, block_table)."""
    B, Tmax, H, D = kc.shape
    per_row = Tmax // page
    perm = torch.randperm(B * per_row + 3, generator=g)[: B * per_row]
    pages = torch.randn(B * per_row + 3, page, H, D, generator=g, dtype=torch.float64).to(kc.dtype)
    table = perm.view(B, per_row).to(torch.int32)
    for b in range(B):
        for c in range(per_row):
            pages[table[b, c]] = kc[b, c * page:(c + 1) * page].cpu()
    return pages.to(kc.device), table.to(kc.device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page", [1, 16, 64])
def test_paged_equals_contiguous(backend, page):
    g = torch.Generator().manual_seed(7)
    B, Tq, Hq, Hkv, D, Tmax = 3, 6, 4, 2, 16, 128
    q, k, v, kc, vc = make_inputs(B, Tq, Hq, Hkv, D, Tmax, torch.float64)
    P = torch.tensor([0, 70, 121], dtype=torch.int32, device=DEVICE)
    modes = torch.tensor([0, 1, 2], dtype=torch.int8, device=DEVICE)
    args = torch.tensor([0, 0, 2], dtype=torch.int32, device=DEVICE)
    kp, table = _paged_copy(kc, page, g)
    vp, _ = _paged_copy(vc, page, torch.Generator().manual_seed(7))
    require_backend(backend, "attention", (q, k, v, kp, vp, P, modes, args, P, table, 1.0, False))
    want = ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, backend="torch")
    got = ops.attention(q, k, v, kp, vp, P, modes, mode_args=args, block_table=table, backend=backend)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged16"])
def test_write_kv_is_bit_exact_and_touches_nothing_else(backend, paged):
    B, Tq, Hq, Hkv, D, Tmax = 3, 5, 4, 2, 8, 32
    q, k, v, kc, vc = make_inputs(B, Tq, Hq, Hkv, D, Tmax, torch.float32)
    P = torch.tensor([0, 9, 27], dtype=torch.int32, device=DEVICE)
    n = torch.tensor([5, 0, 3], dtype=torch.int32, device=DEVICE)
    modes = torch.tensor([0, 1, 0], dtype=torch.int8, device=DEVICE)
    table = None
    if paged:
        kc, table = _paged_copy(kc, 16, torch.Generator().manual_seed(3))
        vc, _ = _paged_copy(vc, 16, torch.Generator().manual_seed(3))
    require_backend(backend, "attention", (q, k, v, kc, vc, P, modes, P, n, table, 1.0, True))
    k0, v0, P0 = kc.clone(), vc.clone(), P.clone()
    ops.attention(q, k, v, kc, vc, P, modes, q_lens=n, block_table=table, write_kv=True, backend=backend)
    want_k, want_v = k0.clone(), v0.clone()
    for b in range(B):
        for i in range(int(n[b])):
            t = int(P[b]) + i
            if paged:
                pg, off = int(table[b, t // 16]), t % 16
                want_k[pg, off], want_v[pg, off] = k[b, i], v[b, i]
            else:
                want_k[b, t], want_v[b, t] = k[b, i], v[b, i]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    assert torch.equal(P, P0), "write_kv must not advance the lengths"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page", [1, 16])
def test_anchored_paged_equals_contiguous(backend, page):
    g = torch.Generator().manual_seed(11)
    B, Tq, Hq, Hkv, D, Tmax = 3, 20, 4, 2, 16, 96
    q, k, v, kc, vc = make_inputs(B, Tq, Hq, Hkv, D, Tmax, torch.float64)
    P = torch.tensor([33, 0, 70], dtype=torch.int32, device=DEVICE)
    n = torch.tensor([20, 7, 12], dtype=torch.int32, device=DEVICE)
    modes = torch.tensor([AN, 0, AN], dtype=torch.int8, device=DEVICE)
    args = torch.tensor([anchor_mask([0, 2, 4]), 0, anchor_mask([2, 3])], dtype=torch.int32, device=DEVICE)
    kp, table = _paged_copy(kc, page, g)
    vp, _ = _paged_copy(vc, page, torch.Generator().manual_seed(11))
    require_backend(backend, "attention", (q, k, v, kp, vp, P, modes, args, n, table, 1.0, False))
    want = ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, q_lens=n, backend="torch")
    got = ops.attention(q, k, v, kp, vp, P, modes, mode_args=args, q_lens=n, block_table=table, backend=backend)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged16"])
def test_anchored_write_kv_is_bit_exact(backend, paged):
    """All n = L*(k+1) new rows land at P..P+n-1 (the decoder keeps the clean prefix)."""
    B, Tq, Hq, Hkv, D, Tmax = 3, 12, 4, 2, 16, 48
    q, k, v, kc, vc = make_inputs(B, Tq, Hq, Hkv, D, Tmax, torch.float32)
    P = torch.tensor([3, 20, 36], dtype=torch.int32, device=DEVICE)
    n = torch.tensor([12, 0, 6], dtype=torch.int32, device=DEVICE)
    modes = torch.tensor([AN, AN, AN], dtype=torch.int8, device=DEVICE)
    args = torch.tensor([anchor_mask([0, 3]), 5, anchor_mask([1])], dtype=torch.int32, device=DEVICE)
    table = None
    if paged:
        kc, table = _paged_copy(kc, 16, torch.Generator().manual_seed(4))
        vc, _ = _paged_copy(vc, 16, torch.Generator().manual_seed(4))
    require_backend(backend, "attention", (q, k, v, kc, vc, P, modes, args, n, table, 1.0, True))
    k0, v0 = kc.clone(), vc.clone()
    out = ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, q_lens=n, block_table=table, write_kv=True,
                        backend=backend)
    want_k, want_v = k0.clone(), v0.clone()
    for b in range(B):
        for i in range(int(n[b])):
            t = int(P[b]) + i
            idx = (int(table[b, t // 16]), t % 16) if paged else (b, t)
            want_k[idx], want_v[idx] = k[b, i], v[b, i]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    if not paged:
        want = dense_attention(q.cpu(), k.cpu(), v.cpu(), k0.cpu(), v0.cpu(), P.tolist(), modes.tolist(),
                               args.tolist(), n.tolist())
        assert (out.cpu().double() - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"])
def test_half_precision_reference_within_dtype_error(dtype, tol):
    out = run_case("torch", dtype, [(0, 0, 20, 9), (2, 2, 3, 6)])
    assert out.dtype == dtype


# ---- bad input: clear errors, raised before anything is written ----------------------------

def _good(B=2, Tq=4, Tmax=16):
    q, k, v, kc, vc = make_inputs(B, Tq, 4, 2, 8, Tmax, torch.float32)
    P = torch.tensor([3, 12], dtype=torch.int32, device=DEVICE)
    return dict(q=q, k=k, v=v, k_cache=kc, v_cache=vc, cache_lens=P, modes=Mode.CAUSAL)


BAD_CASES = {
    "q dtype int": (lambda a: a.update(q=a["q"].long()), "q"),
    "k shape": (lambda a: a.update(k=a["k"][:, :3]), "k"),
    "v dtype": (lambda a: a.update(v=a["v"].double()), "v"),
    "heads not multiple": (lambda a: a.update(q=a["q"][:, :, :3]), "q"),
    "cache batch": (lambda a: a.update(k_cache=a["k_cache"][:1], v_cache=a["v_cache"][:1]), "k_cache"),
    "lens dtype": (lambda a: a.update(cache_lens=a["cache_lens"].long()), "cache_lens"),
    "lens batch": (lambda a: a.update(cache_lens=a["cache_lens"][:1]), "cache_lens"),
    "negative lens": (lambda a: a.update(cache_lens=torch.tensor([-1, 0], dtype=torch.int32, device=DEVICE)), "cache_lens"),
    "past capacity with write": (lambda a: a.update(write_kv=True), "cache_lens"),
    "lens past capacity": (lambda a: a.update(cache_lens=torch.tensor([3, 17], dtype=torch.int32, device=DEVICE)), "cache_lens"),
    "mode out of range": (lambda a: a.update(modes=torch.tensor([0, 5], dtype=torch.int8, device=DEVICE)), "modes"),
    "mode int out of range": (lambda a: a.update(modes=7), "modes"),
    "quadratic wrong length": (lambda a: a.update(modes=Mode.QUADRATIC, mode_args=2), "mode_args"),
    "ctb K too big": (lambda a: a.update(modes=Mode.CAUSAL_THEN_BIDIR, mode_args=5), "mode_args"),
    "q_lens too big": (lambda a: a.update(q_lens=5), "q_lens"),
    "scale": (lambda a: a.update(softmax_scale=-1.0), "softmax_scale"),
    "backend": (lambda a: a.update(backend="nope"), "backend"),
    "block_table dtype": (lambda a: a.update(block_table=torch.zeros(2, 1, dtype=torch.int64, device=DEVICE)), "block_table"),
    "block_table bad page": (lambda a: a.update(block_table=torch.tensor([[0], [-1]], dtype=torch.int32, device=DEVICE)), "block_table"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_naming_argument_and_writes_nothing(case):
    a = _good()
    mutate, name = BAD_CASES[case]
    mutate(a)
    if case == "past capacity with write":
        a["cache_lens"] = torch.tensor([3, 13], dtype=torch.int32, device=DEVICE)  # 13 + 4 > 16
    a.setdefault("backend", "torch")
    before = {key: val.clone() for key, val in a.items() if isinstance(val, torch.Tensor)}
    with pytest.raises((TridiffInputError, ops.BackendUnavailable)) as info:
        ops.attention(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"], a["cache_lens"], a["modes"],
                      **{key: val for key, val in a.items() if key not in
                         ("q", "k", "v", "k_cache", "v_cache", "cache_lens", "modes")})
    assert name in str(info.value)
    for key, val in before.items():
        assert torch.equal(a[key], val), f"{key} changed by a refused call"


# (anchor set, q_lens): every way an ANCHORED_QUADRATIC row can be malformed
ANCHORED_BAD = {
    "popcount+1 not dividing q_lens": ([0, 1], 4),
    "anchor not below L": ([2], 4),
    "bit 31 with L = 2": ([31], 4),
    "L over 32": ([0], 66),
    "more anchors than slots": (list(range(8)), 3),
}


@pytest.mark.parametrize("case", list(ANCHORED_BAD))
def test_anchored_bad_mode_args_raise_before_writing(case):
    anchors, n = ANCHORED_BAD[case]
    Tq = 66
    q, k, v, kc, vc = make_inputs(2, Tq, 4, 2, 8, 80, torch.float32)
    k0, v0 = kc.clone(), vc.clone()
    modes = torch.tensor([0, AN], dtype=torch.int8, device=DEVICE)
    args = torch.tensor([0, anchor_mask(anchors)], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([Tq, n], dtype=torch.int32, device=DEVICE)
    P = torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    with pytest.raises(TridiffInputError, match="mode_args") as info:
        ops.attention(q, k, v, kc, vc, P, modes, mode_args=args, q_lens=lens, write_kv=True, backend="torch")
    assert "q_lens" in str(info.value) and "row 1" in str(info.value)
    assert torch.equal(kc, k0) and torch.equal(vc, v0)


def test_anchored_accepted_edge_values():
    """An idle row takes any mask; a Python int with bit 31 set is the uint32 mask; no
    anchor at all is L = q_lens clean slots (token-causal)."""
    q, k, v, kc, vc = make_inputs(1, 96, 2, 2, 8, 100, torch.float64)
    P = torch.tensor([3], dtype=torch.int32, device=DEVICE)
    ops.attention(q, k, v, kc, vc, P, AN, mode_args=anchor_mask([31]), q_lens=0, backend="torch")
    got = ops.attention(q, k, v, kc, vc, P, AN, mode_args=(1 << 31) | 1, backend="torch")
    want = ops.attention(q, k, v, kc, vc, P, AN, mode_args=anchor_mask([0, 31]), backend="torch")
    assert torch.equal(got, want)
    got = ops.attention(q[:, :9], k[:, :9], v[:, :9], kc, vc, P, AN, mode_args=0, backend="torch")
    want = ops.attention(q[:, :9], k[:, :9], v[:, :9], kc, vc, P, Mode.CAUSAL, backend="torch")
    assert torch.equal(got, want)


def test_refused_write_leaves_cache_unchanged():
    a = _good()
    kc0, vc0 = a["k_cache"].clone(), a["v_cache"].clone()
    a["cache_lens"] = torch.tensor([3, 13], dtype=torch.int32, device=DEVICE)  # 13 + 4 > 16
    with pytest.raises(TridiffInputError, match="cache_lens"):
        ops.attention(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"], a["cache_lens"], Mode.CAUSAL,
                      write_kv=True)
    assert torch.equal(a["k_cache"], kc0) and torch.equal(a["v_cache"], vc0)


@pytest.mark.parametrize("name", ["cuda", "cpp"] if not torch.cuda.is_available() else ["cpp"])
def test_named_backend_that_cannot_serve_raises_with_reason(name):
    a = _good()
    with pytest.raises(ops.BackendUnavailable, match=name):
        ops.attention(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"], a["cache_lens"], 0, backend=name)


def test_opcheck_attention():
    from tridiff.ops.attention import _attention_op, normalize_attention_args

    for write in (False, True):
        a = _good()
        a["cache_lens"] = torch.tensor([3, 9], dtype=torch.int32, device=DEVICE)
        args = normalize_attention_args(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"], a["cache_lens"],
                                        torch.tensor([0, 1], dtype=torch.int8, device=DEVICE),
                                        None, None, None, None, write)
        torch.library.opcheck(_attention_op, args + ("torch",))
