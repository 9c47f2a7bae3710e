"""pytest-benchmark entry points: `pytest bench/ --benchmark-only` (not collected by the
default `pytest`, whose testpaths is tests/). Tiny shapes on CPU, verify shapes on CUDA;
each tridiff op sits in a benchmark group with its baseline so pytest-benchmark's table
compares them. The bench_*.py modules are the full benchmarks (roofline, JSON rows).
"""
import pytest
import torch

from bench.attention_shapes import CPU_DIMS, GPU_DIMS, make_case

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU = DEV.type == "cuda"
DIMS = GPU_DIMS if GPU else CPU_DIMS
DTYPE = torch.bfloat16 if GPU else torch.float32
P = 4096 if GPU else 32
V = 131072 if GPU else 512


def _synced(fn):
    def call():
        out = fn()
        if GPU:
            torch.cuda.synchronize()
        return out
    return call


def _attention_inputs(label, B=1):
    from bench.bench_attention import make_inputs

    case = make_case(label, B, DIMS.new)
    return case, make_inputs(case, B, P, DIMS, DTYPE, DEV, seed=0)


@pytest.mark.parametrize("label", ["CAUSAL", "BIDIR_BLOCK", "MIXED"])
@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch"), pytest.param("triton", id="triton")])
def test_attention(benchmark, backend, label):
    from bench.bench_attention import tridiff_call
    from tridiff.ops import BackendUnavailable

    if backend == "triton" and not GPU:
        pytest.skip("triton speed needs a CUDA device (the CPU interpreter is not a speed number)")
    case, x = _attention_inputs(label)
    call = _synced(tridiff_call(backend, x, DIMS.D ** -0.5))
    try:
        call()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"attention {label}"
    out = benchmark(call)
    assert out.shape == x["q"].shape and bool(torch.isfinite(out.float()).all())


@pytest.mark.parametrize("label", ["CAUSAL", "BIDIR_BLOCK", "MIXED"])
def test_attention_sdpa_baseline(benchmark, label):
    from bench import attention_baselines as bl

    case, x = _attention_inputs(label)
    which = "flash" if "flash" in bl.sdpa_backends() else "math"
    try:
        call = bl.build_sdpa(which, case, P, x["q"], x["kbuf"], x["vbuf"], DIMS.D ** -0.5)
    except bl.Unsupported as exc:
        pytest.skip(str(exc))
    benchmark.group = f"attention {label}"
    out = benchmark(_synced(call))
    assert out.shape[0] == 1 and bool(torch.isfinite(out.float()).all())


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch")])
def test_kv_append(benchmark, backend):
    import tridiff.ops as ops

    B, n = 8, DIMS.new
    kc = torch.randn(B, P + n, DIMS.Hkv, DIMS.D, device=DEV).to(DTYPE)
    vc = torch.randn_like(kc)
    k = torch.randn(B, n, DIMS.Hkv, DIMS.D, device=DEV).to(DTYPE)
    v = torch.randn_like(k)
    P0 = torch.full((B,), P, dtype=torch.int32, device=DEV)
    lens = P0.clone()

    def call():
        ops.kv_append_(kc, vc, k, v, lens, backend=backend)
        lens.copy_(P0)

    benchmark.group = "kv_append_"
    benchmark(_synced(call))
    assert torch.equal(kc[:, P:], k) and torch.equal(vc[:, P:], v)


def test_kv_append_index_copy_baseline(benchmark):
    B, n = 8, DIMS.new
    kc = torch.randn(B * (P + n), DIMS.Hkv, DIMS.D, device=DEV).to(DTYPE)
    k = torch.randn(B * n, DIMS.Hkv, DIMS.D, device=DEV).to(DTYPE)
    idx = (torch.arange(B, device=DEV)[:, None] * (P + n) + P + torch.arange(n, device=DEV)).reshape(-1)
    benchmark.group = "kv_append_"
    benchmark(_synced(lambda: kc.index_copy_(0, idx, k)))
    assert torch.equal(kc[idx], k)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch")])
def test_accept_linear(benchmark, backend):
    import tridiff.ops as ops

    B = 8
    logits = (torch.randn(B, 32, V, device=DEV) * 4).to(DTYPE)
    drafts = logits[:, :-1].float().argmax(-1)
    lens = torch.zeros(B, dtype=torch.int32, device=DEV)
    benchmark.group = "accept_linear"
    res = benchmark(_synced(lambda: ops.accept_linear(logits, drafts, lens, eos_id=-1, backend=backend)))
    assert bool((res.n_accepted == 32).all())  # drafts equal the argmax: everything accepted


def test_accept_linear_torch_baseline(benchmark):
    from bench.bench_accept import torch_accept_linear

    B = 8
    logits = (torch.randn(B, 32, V, device=DEV) * 4).to(DTYPE)
    drafts = logits[:, :-1].float().argmax(-1)
    benchmark.group = "accept_linear"
    n_acc, _ = benchmark(lambda: torch_accept_linear(logits, drafts))
    assert n_acc == [32] * B
