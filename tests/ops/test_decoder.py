"""decoder_layers_ (tridiff.ops.decoder): every backend that serves it against the
reference (tridiff.reference.decoder) with dtype-aware bounds, the KV slots it writes,
the slots it must not touch, and bad input refused before anything is written."""
import pytest
import torch

from tests.conftest import require_backend
from tests.ops.support import BACKENDS, DEVICE, assert_names_argument
from tridiff import ops
from tridiff.modes import Mode
from tridiff.ops import TridiffInputError


def make_stack(L, H, Hq, Hkv, D, I, rank, seed):
    """fp64 weights, 8 per layer, scaled so activations stay O(1). rank: the LoRA rank of
    every layer, or a tuple of one per layer (PEFT's rank_pattern / layers_to_transform);
    0: no LoRA on that layer."""
    g = torch.Generator().manual_seed(seed)
    ranks = tuple(rank) if isinstance(rank, (tuple, list)) else (rank,) * L
    assert len(ranks) == L

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE)

    weights = []
    for rank in ranks:
        weights += [1 + rnd(H, scale=0.1), rnd((Hq + 2 * Hkv) * D, H, scale=H ** -0.5),
                    rnd(H, Hq * D, scale=(Hq * D) ** -0.5), 1 + rnd(H, scale=0.1),
                    rnd(2 * I, H, scale=H ** -0.5), rnd(H, I, scale=I ** -0.5)]
        weights += [rnd(rank, Hq * D, scale=(Hq * D) ** -0.5), rnd(H, rank, scale=rank ** -0.5)] if rank \
            else [None, None]
    return weights


def paged_view(cache, page, g):
    """[L, B, Tmax, Hkv, D] -> ([L, pages, page, Hkv, D] with shuffled pages + spares, table)."""
    L, B, Tmax = cache.shape[:3]
    per_row = Tmax // page
    total = B * per_row + 2
    perm = torch.randperm(total, generator=g)[: B * per_row]
    pages = torch.randn(L, total, page, *cache.shape[3:], generator=g, dtype=torch.float64).to(cache)
    table = perm.view(B, per_row).to(torch.int32)
    for b in range(B):
        for c in range(per_row):
            pages[:, table[b, c]] = cache[:, b, c * page:(c + 1) * page]
    return pages, table.to(cache.device)


def make_case(B=2, T=3, H=72, Hq=4, Hkv=2, D=32, I=40, L=2, Tmax=48, rank=0, lens=(5, 17), seed=0,
              page=None):
    g = torch.Generator().manual_seed(seed + 1)
    case = dict(weights=make_stack(L, H, Hq, Hkv, D, I, rank, seed),
                x=torch.randn(B, T, H, generator=g, dtype=torch.float64).to(DEVICE),
                k=torch.randn(L, B, Tmax, Hkv, D, generator=g, dtype=torch.float64).to(DEVICE),
                v=torch.randn(L, B, Tmax, Hkv, D, generator=g, dtype=torch.float64).to(DEVICE),
                cos=torch.rand(B, T, D, generator=g, dtype=torch.float64).to(DEVICE) * 2 - 1,
                sin=torch.rand(B, T, D, generator=g, dtype=torch.float64).to(DEVICE) * 2 - 1,
                q_scale=1 + 0.2 * torch.rand(B, T, generator=g, dtype=torch.float64).to(DEVICE),
                final_norm=1 + 0.1 * torch.randn(H, generator=g, dtype=torch.float64).to(DEVICE),
                lens=torch.tensor(lens, dtype=torch.int32, device=DEVICE), table=None)
    if page is not None:
        case["k"], case["table"] = paged_view(case["k"], page, torch.Generator().manual_seed(seed + 2))
        case["v"], _ = paged_view(case["v"], page, torch.Generator().manual_seed(seed + 2))
    return case


def cast(case, dtype):
    out = dict(case)
    for name in ("x", "k", "v", "cos", "sin", "q_scale", "final_norm"):
        out[name] = case[name].to(dtype).clone()
    out["weights"] = [w.to(dtype) if w is not None else None for w in case["weights"]]
    return out


def run(case, backend, modes=Mode.CAUSAL, mode_args=None, q_lens=None, write_kv=True, lora_scale=0.5,
        final_norm=False):
    ops.decoder_layers_(case["x"], case["weights"], case["k"], case["v"], case["lens"], modes, cos=case["cos"],
                        sin=case["sin"], q_scale=case["q_scale"], eps=1e-5, mode_args=mode_args, q_lens=q_lens,
                        block_table=case["table"], lora_scale=lora_scale, write_kv=write_kv,
                        final_norm=case["final_norm"] if final_norm else None, backend=backend)
    return case["x"], case["k"], case["v"]


def args_of(case, modes=Mode.CAUSAL, mode_args=None, q_lens=None, write_kv=True, final_norm=False):
    """The normalised positional arguments (for require_backend's supports_ check)."""
    from tridiff.ops.decoder import normalize_decoder_args
    return normalize_decoder_args(case["x"], case["weights"], case["k"], case["v"], case["lens"], modes,
                                  mode_args, q_lens, case["table"], case["cos"], case["sin"], case["q_scale"],
                                  1e-5, 0.5, None, write_kv, case["final_norm"] if final_norm else None)


def check_against_reference(backend, case, dtype, **kw):
    """Backend output and cache vs the fp64 reference: error <= 2x the reference's own
    error in `dtype` + one ulp of the largest value (fp64: 1e-12 relative)."""
    want = run(cast(case, torch.float64), "torch", **kw)
    own = run(cast(case, dtype), "torch", **kw)
    mine = cast(case, dtype)
    require_backend(backend, "decoder_layers_", args_of(mine, **kw))
    got = run(mine, backend, **kw)
    for name, w, o, g in zip(("x", "k_cache", "v_cache"), want, own, got):
        assert not torch.isnan(g).any(), f"{name}: NaN"
        scale = w.abs().max().item()
        if dtype == torch.float64:
            bound = 1e-12 * scale
        else:
            bound = 2 * (o.double() - w).abs().max().item() + torch.finfo(dtype).eps * scale
        err = (g.double() - w).abs().max().item()
        assert err <= bound, f"{name}: max abs error {err} > {bound}"


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]
# The backends compared with the reference: every one but "torch", which is the reference
# (tridiff.reference.decoder) and would be compared with itself.
STACK_BACKENDS = [b for b in BACKENDS if b != "torch"]


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 3, 9])
@pytest.mark.parametrize("rank", [pytest.param(0, id="no-lora"), pytest.param(4, id="lora4")])
def test_causal_matches_reference(backend, dtype, T, rank):
    check_against_reference(backend, make_case(T=T, rank=rank), dtype)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ranks", [
    pytest.param((4, 8), id="larger-rank-later"),
    pytest.param((8, 2), id="smaller-rank-later"),
    pytest.param((0, 4), id="lora-not-on-layer-0"),
    pytest.param((4, 0), id="layer-without-lora"),
    pytest.param((0, 5, 0), id="one-middle-layer-rank5"),
])
def test_per_layer_lora_ranks_match_reference(backend, dtype, ranks):
    """PEFT adapters may give each layer its own rank (rank_pattern) or only some layers an
    adapter (layers_to_transform): every layer's LoRA is read with its own rank."""
    check_against_reference(backend, make_case(T=5, L=len(ranks), rank=ranks), dtype)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_rank_zero_lora_is_no_lora(backend):
    """A layer's LoRA given as empty [0, Hq D] / [H, 0] tensors (rank 0) adds nothing."""
    case = make_case(T=3, rank=(4, 4))
    w = case["weights"]
    w[14], w[15] = w[14][:0], w[15][:, :0]
    check_against_reference(backend, case, torch.float64)


def test_auto_serves_per_layer_lora_ranks():
    """auto takes the C++ stack for mixed ranks too (it reads each layer's own rank), and the
    result is the reference's."""
    from tridiff import _dispatch
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    case = cast(make_case(T=2, L=3, rank=(0, 6, 3)), torch.float64)
    assert _dispatch.resolve("decoder_layers_", "auto", case["x"].device, args_of(case), {}) == "cpp"
    want = run(cast(case, torch.float64), "torch")
    got = run(case, "auto")
    for name, w, g in zip(("x", "k_cache", "v_cache"), want, got):
        assert (g - w).abs().max().item() <= 1e-12 * w.abs().max().item(), name


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T", [pytest.param(2, 1, id="1-row-tiles"), pytest.param(2, 5, id="4-row-tiles")])
def test_odd_sizes_match_reference(backend, dtype, B, T):
    """Hidden 73 and intermediate 37 (K not a multiple of 8 or 4 lanes, K > 8; output counts
    73, 37 and 74 leave a last chunk of 9 or 5 features) and LoRA rank 5: every tail loop
    of the GEMM panels (decoder_gemm.inc: the K tail of both tiles, the odd feature of the
    4x2 tile and the features past the last 1x8 tile), with 4-row tiles (B*T = 10) and
    without (B*T = 2)."""
    check_against_reference(backend, make_case(B=B, T=T, H=73, I=37, rank=5, lens=(5, 17)), dtype)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("shape", [pytest.param(dict(), id="h72-rank4"),
                                   pytest.param(dict(H=73, I=37, rank=5), id="h73-i37-rank5")])
def test_rows_equal_their_solo_runs_bit_for_bit(backend, dtype, T, shape):
    """A row's output and cache slots do not depend on what shares its call (an engine batches
    requests and must give each the answer it gets alone): every row of a 3-row call equals,
    bit for bit, the same row run alone. 3 x T rows take the 4-row tiles where one row does
    not, so this holds only if every tile sums an element in the same order."""
    shape = dict(shape)
    case = cast(make_case(B=3, T=T, lens=(5, 17, 30), rank=shape.pop("rank", 4), **shape), dtype)
    require_backend(backend, "decoder_layers_", args_of(case))
    whole = dict(case, x=case["x"].clone(), k=case["k"].clone(), v=case["v"].clone())
    x, k, v = run(whole, backend)
    for b in range(3):
        solo = dict(case, lens=case["lens"][b:b + 1], x=case["x"][b:b + 1].clone(), k=case["k"][:, b:b + 1].clone(),
                    v=case["v"][:, b:b + 1].clone(), cos=case["cos"][b:b + 1], sin=case["sin"][b:b + 1],
                    q_scale=case["q_scale"][b:b + 1])
        xs, ks, vs = run(solo, backend)
        assert torch.equal(xs[0], x[b]), f"row {b}: max diff {(xs[0] - x[b]).abs().max().item()}"
        assert torch.equal(ks[:, 0], k[:, b]) and torch.equal(vs[:, 0], v[:, b]), f"row {b}: cache"


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("case", [
    pytest.param(dict(modes=Mode.BIDIR_BLOCK), id="bidir-block"),
    pytest.param(dict(modes=torch.tensor([3, 0], dtype=torch.int8, device=DEVICE),
                      mode_args=torch.tensor([4, 0], dtype=torch.int32, device=DEVICE)), id="causal-then-bidir+causal"),
    pytest.param(dict(modes=Mode.QUADRATIC, mode_args=2), id="quadratic-L2"),
    pytest.param(dict(modes=Mode.ANCHORED_QUADRATIC, mode_args=0b1), id="anchored-L3-k1"),
    pytest.param(dict(q_lens=torch.tensor([6, 2], dtype=torch.int32, device=DEVICE)), id="ragged-q-lens"),
    pytest.param(dict(write_kv=False), id="no-write"),
    pytest.param(dict(final_norm=True), id="final-norm"),
])
def test_modes_match_reference(backend, case):
    check_against_reference(backend, make_case(T=6), torch.float32, **case)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("shape", [
    pytest.param(dict(Hq=2, Hkv=2, D=16), id="mha-d16"),
    pytest.param(dict(Hq=8, Hkv=1, D=64, H=64, I=96), id="gqa8-d64"),
    pytest.param(dict(B=1, T=1, H=256, Hq=8, Hkv=2, D=32, I=768, L=3, lens=(40,)), id="bench-small-decode"),
])
def test_shapes_match_reference(backend, shape):
    check_against_reference(backend, make_case(**shape), torch.float32)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
@pytest.mark.parametrize("page", [1, 16])
def test_paged_matches_reference(backend, page):
    check_against_reference(backend, make_case(T=5, page=page), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "paged16"])
def test_writes_only_the_new_slots(backend, page):
    """Slots outside [lens, lens + q_lens) of every layer keep their bits; the new slots
    hold the layer's k/v (compared with the reference, fp64)."""
    case = cast(make_case(T=4, page=page), torch.float64)
    q_lens = torch.tensor([4, 1], dtype=torch.int32, device=DEVICE)
    require_backend(backend, "decoder_layers_", args_of(case, q_lens=q_lens))
    k0, v0 = case["k"].clone(), case["v"].clone()
    ref = run(cast(case, torch.float64), "torch", q_lens=q_lens)
    _, k, v = run(case, backend, q_lens=q_lens)
    written = torch.zeros_like(k0, dtype=torch.bool)
    for b, (P, n) in enumerate(zip(case["lens"].tolist(), q_lens.tolist())):
        for t in range(P, P + n):
            if page is None:
                written[:, b, t] = True
            else:
                written[:, int(case["table"][b, t // page]), t % page] = True
    assert torch.equal(k[~written], k0[~written]) and torch.equal(v[~written], v0[~written])
    assert torch.allclose(k[written], ref[1][written], rtol=0, atol=1e-12)
    assert torch.allclose(v[written], ref[2][written], rtol=0, atol=1e-12)
    assert not torch.equal(k[written], k0[written]), "the new slots were not written"


def test_zero_layers_leave_x_unchanged(backend):
    case = make_case(L=0)
    x0 = case["x"].clone()
    require_backend(backend, "decoder_layers_", args_of(case))
    run(case, backend)
    assert torch.equal(case["x"], x0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [0, 2])
def test_final_norm_is_applied_after_the_last_layer(backend, L):
    """With final_norm, x leaves as rms_norm(stack output) (the reference's own layers
    without it, then the norm: checks the norm is the last step and happens once)."""
    from tridiff.layer_math import rms_norm
    case = cast(make_case(L=L), torch.float64)
    require_backend(backend, "decoder_layers_", args_of(case, final_norm=True))
    plain = cast(case, torch.float64)
    run(plain, "torch")
    want = rms_norm(plain["x"], case["final_norm"], 1e-5)
    got = run(case, backend, final_norm=True)[0]
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


# ---- bad input ------------------------------------------------------------------------

def _bad(name):
    case = make_case()
    w = case["weights"]
    if name == "weights-count":
        case["weights"] = w[:-1]
    elif name == "weights-shape":
        w[1] = w[1][:-1]
    elif name == "weights-lora-half":
        case["weights"] = w[:6] + [torch.zeros(4, 128, dtype=torch.float64, device=DEVICE), None] + w[8:]
    elif name == "weights-o-empty":   # [H, 0]: no query head (q rows dropped to match)
        for l in range(2):
            w[l * 8 + 2], w[l * 8 + 1] = w[l * 8 + 2][:, :0], w[l * 8 + 1][128:]
    elif name == "weights-mlp-empty":   # gate/up [0, H], down [H, 0]
        for l in range(2):
            w[l * 8 + 4], w[l * 8 + 5] = w[l * 8 + 4][:0], w[l * 8 + 5][:, :0]
    elif name == "weights-dtype":
        w[9] = w[9].float()
    elif name == "x":
        case["x"] = case["x"][0]   # 2-D
    elif name == "cos":
        case["cos"] = case["cos"][:, :, :-2]
    elif name == "q_scale":
        case["q_scale"] = case["q_scale"][:, :1]
    elif name == "v_cache":
        case["v"] = case["v"][:1]
    elif name == "final_norm":
        case["final_norm"] = case["final_norm"][:-1]
    elif name == "cache_lens":
        case["lens"] = torch.tensor([5, 46], dtype=torch.int32, device=DEVICE)   # 46 + 3 > 48
    return case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("what", ["weights-count", "weights-shape", "weights-lora-half", "weights-o-empty",
                                  "weights-mlp-empty", "weights-dtype", "x", "cos",
                                  "q_scale", "v_cache", "cache_lens", "final_norm"])
def test_bad_input_names_argument_and_writes_nothing(backend, what):
    case = _bad(what)
    arg = what.split("-")[0]
    before = [t.clone() for t in (case["x"], case["k"], case["v"])]
    if arg == "weights":   # an entry is named by its index and role: weights[9] (input_layernorm of layer 1)
        with pytest.raises(TridiffInputError, match=r"^weights(\[\d+\] \([a-zA-Z_/]+ of layer \d+\))?: expected"):
            run(case, backend)
    else:
        assert_names_argument(arg, lambda: run(case, backend, final_norm=arg == "final_norm"))
    for t, b in zip((case["x"], case["k"], case["v"]), before):
        assert torch.equal(t, b)


def test_cpp_refuses_what_it_cannot_take():
    from tridiff import _dispatch
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    half = cast(make_case(), torch.bfloat16)
    reason = _dispatch.why_not("cpp", "decoder_layers_", args_of(half), {})
    assert reason is not None and "float32/float64" in reason
    odd = make_case(D=24, H=48)
    reason = _dispatch.why_not("cpp", "decoder_layers_", args_of(odd), {})
    assert reason is not None and "head_dim 24" in reason


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_gpu_backends_do_not_implement_it(name):
    """The GPU backends' modules have no decoder_layers_ (auto must not pick them); read from
    the module itself, which imports without a GPU."""
    from tridiff import _dispatch
    mod = _dispatch.backend_module(name)
    if mod is None:
        pytest.skip(f"backend {name!r} cannot be imported here: {_dispatch.backend_unavailable(name)}")
    assert not hasattr(mod, "decoder_layers_")
    reason = _dispatch.why_not(name, "decoder_layers_", args_of(make_case()), {})
    assert reason is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_decoder_layers(backend):
    case = cast(make_case(T=2), torch.float32)
    args = args_of(case)
    require_backend(backend, "decoder_layers_", args)
    args = (args[0], list(args[1])) + tuple(args[2:])
    torch.library.opcheck(torch.ops.tridiff.decoder_layers_.default, args + (backend,))


def test_baseline_gemm_build_matches_reference():
    """The GEMM panels' baseline build (CPUs without AVX2+FMA) is forced with
    TRIDIFF_CPU_GEMM=base in a fresh process (the choice is made once per process)."""
    import os
    import subprocess
    import sys
    from tridiff import _dispatch
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, TRIDIFF_CPU_GEMM="base")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "cpp and (test_causal_matches_reference or test_modes_match_reference or "
                                "test_shapes_match_reference or test_odd_sizes_match_reference or "
                                "test_per_layer_lora_ranks_match_reference or "
                                "test_rows_equal_their_solo_runs_bit_for_bit) or test_reports_gemm_build"],
                         env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_reports_gemm_build():
    """decoder_gemm_build() names the build that runs: AVX2+FMA exactly where this x86 CPU
    has both (read from /proc/cpuinfo) and TRIDIFF_CPU_GEMM=base does not force the other."""
    import os
    import platform
    from tridiff import _dispatch, _ext
    reason = _dispatch.backend_unavailable("cpp")
    if reason:
        pytest.skip(reason)
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("reads the CPU's flags from /proc/cpuinfo on x86-64")
    with open("/proc/cpuinfo") as fh:
        flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    forced = os.environ.get("TRIDIFF_CPU_GEMM") == "base"
    want = "avx2+fma" if {"avx2", "fma"} <= flags and not forced else "baseline"
    assert _ext.load("cpp").decoder_gemm_build() == want
