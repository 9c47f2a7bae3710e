"""tridiff.ops.attention_plan (checked once, run per layer) and the "sdpa" CPU backend.

The plan must give exactly what ops.attention gives for each layer's tensors, on every
backend, and refuse a tensor whose layout differs from the checked one before writing
anything. The sdpa backend's own grid is tests/ops/test_attention.py (it is in
backends_serving); here: half precision against the dtype rule, the once-per-forward
preparation reused over several layers, and the CPU auto order.
"""
import pytest
import torch

from tridiff import Mode, ops
from tridiff import _dispatch
from tridiff._checks import TridiffInputError
from tridiff.ops.attention import attention_plan
from tests.conftest import backends_serving, require_backend
from tests.ops.spec_attention import dense_attention
from tests.ops.support import DEVICE

BACKENDS = backends_serving("attention")
LAYERS = 3


def _layers(B, Tq, Hq, Hkv, D, Tmax, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)  # noqa: E731
    qkv = [(r(B, Tq, Hq, D), r(B, Tq, Hkv, D), r(B, Tq, Hkv, D)) for _ in range(LAYERS)]
    cache = r(2, LAYERS, B, Tmax, Hkv, D)   # [k|v, layer, ...] like tridiff.cache.KVCache
    return qkv, cache


META = dict(  # rows: AR decode, diffusion block, QUADRATIC(2), idle (q_len 0)
    P=[17, 4, 9, 3], n=[1, 6, 6, 0], modes=[Mode.CAUSAL, Mode.BIDIR_BLOCK, Mode.QUADRATIC, Mode.CAUSAL],
    args=[0, 0, 2, 0])


def _meta():
    t = lambda x, dt: torch.tensor([int(v) for v in x], dtype=dt, device=DEVICE)  # noqa: E731
    return t(META["P"], torch.int32), t(META["modes"], torch.int8), t(META["args"], torch.int32), \
        t(META["n"], torch.int32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write_kv", [False, True], ids=["read", "write"])
def test_plan_equals_attention_on_every_layer(backend, write_kv):
    B, Tq, Hq, Hkv, D, Tmax = 4, 6, 4, 2, 16, 40
    qkv, cache = _layers(B, Tq, Hq, Hkv, D, Tmax, torch.float32)
    P, modes, args, n = _meta()
    q0, k0, v0 = qkv[0]
    require_backend(backend, "attention", (q0, k0, v0, cache[0, 0], cache[1, 0], P, modes, args, n, None,
                                           D ** -0.5, write_kv))
    kw = dict(mode_args=args, q_lens=n, write_kv=write_kv, backend=backend)
    direct_cache, plan_cache = cache.clone(), cache.clone()
    plan = attention_plan(q0, k0, v0, plan_cache[0, 0], plan_cache[1, 0], P, modes, **kw)
    assert plan.backend == _dispatch.resolve("attention", backend, q0.device, plan.args, {})
    for i, (q, k, v) in enumerate(qkv):
        want = ops.attention(q, k, v, direct_cache[0, i], direct_cache[1, i], P, modes, **kw)
        got = plan(q, k, v, plan_cache[0, i], plan_cache[1, i])
        assert torch.equal(got, want), f"layer {i}"
    assert torch.equal(plan_cache, direct_cache)   # same writes, bit for bit
    if write_kv:
        assert not torch.equal(plan_cache, cache)


@pytest.mark.parametrize("which,bad", [
    ("q", lambda t: t[:, :-1]),
    ("k", lambda t: t.double()),
    ("v", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)),   # same shape, other strides
    ("k_cache", lambda t: t[:, :-1]),
    ("v_cache", lambda t: "not a tensor"),
])
def test_plan_refuses_other_layouts_naming_the_argument_and_writes_nothing(which, bad):
    B, Tq, Hq, Hkv, D, Tmax = 4, 6, 4, 2, 16, 40
    qkv, cache = _layers(B, Tq, Hq, Hkv, D, Tmax, torch.float32)
    P, modes, args, n = _meta()
    q, k, v = qkv[0]
    plan = attention_plan(q, k, v, cache[0, 0], cache[1, 0], P, modes, mode_args=args, q_lens=n,
                          write_kv=True)
    call = dict(q=q, k=k, v=v, k_cache=cache[0, 1], v_cache=cache[1, 1])
    call[which] = bad(call[which])
    before = cache.clone()
    with pytest.raises(TridiffInputError, match=rf"^{which}: expected"):
        plan(**call)
    assert torch.equal(cache, before)


def test_plan_checks_arguments_like_attention():
    """Bad metadata is refused when the plan is made, with attention's own message."""
    B, Tq, Hq, Hkv, D, Tmax = 4, 6, 4, 2, 16, 40
    qkv, cache = _layers(B, Tq, Hq, Hkv, D, Tmax, torch.float32)
    P, modes, args, n = _meta()
    q, k, v = qkv[0]
    with pytest.raises(TridiffInputError, match=r"^cache_lens: expected"):
        attention_plan(q, k, v, cache[0, 0], cache[1, 0], P + Tmax, modes, mode_args=args, q_lens=n)


@pytest.mark.skipif(DEVICE != "cpu", reason="the sdpa backend serves CPU tensors")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_sdpa_half_precision_within_twice_the_reference_error(dtype):
    """House rule: error vs the fp64 truth <= 2x the reference's own error in this dtype."""
    rows = [(0, 0, 20, 9), (2, 2, 3, 6), (1, 0, 0, 9), (3, 4, 7, 9)]
    B, Tq, Hq, Hkv, D, Tmax = len(rows), 9, 8, 2, 32, 40
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x64 = [r(B, Tq, Hq, D), r(B, Tq, Hkv, D), r(B, Tq, Hkv, D), r(B, Tmax, Hkv, D), r(B, Tmax, Hkv, D)]
    xs = [t.to(dtype) for t in x64]
    P = torch.tensor([p for _, _, p, _ in rows], dtype=torch.int32)
    modes = torch.tensor([m for m, *_ in rows], dtype=torch.int8)
    args = torch.tensor([a for _, a, _, _ in rows], dtype=torch.int32)
    n = torch.tensor([x for *_, x in rows], dtype=torch.int32)
    truth = dense_attention(*[t.double() for t in xs], P.tolist(), modes.tolist(), args.tolist(), n.tolist())
    kw = dict(mode_args=args, q_lens=n)
    ref = ops.attention(*xs, P, modes, backend="torch", **kw)
    out = ops.attention(*xs, P, modes, backend="sdpa", **kw)
    assert out.dtype == dtype and not torch.isnan(out).any()
    ref_err = (ref.double() - truth).abs().max().item()
    err = (out.double() - truth).abs().max().item()
    assert err <= 2 * ref_err + 1e-6, f"sdpa error {err} > 2 x reference error {ref_err}"
    assert torch.count_nonzero(out[0, 9:]) == 0


@pytest.mark.skipif(DEVICE != "cpu", reason="the sdpa backend serves CPU tensors")
def test_sdpa_refuses_device_tensors_with_a_reason():
    from tridiff import sdpa

    meta = torch.empty(1, 1, 2, 8, device="meta")
    reason = sdpa.supports_attention(meta, meta, meta, meta, meta, torch.zeros(1, dtype=torch.int32),
                                     None, None, None, None, 1.0, False)
    assert reason and "CPU tensors only" in reason


def test_cpu_auto_order_for_attention_is_the_measured_one():
    """bench/NOTES.md ("CPU attention per shape") measured sdpa fastest at every decoding
    shape of bench_cpu_e2e; cpp then torch follow (see tridiff._dispatch)."""
    assert _dispatch.auto_order("attention", "cpu")[0] == "sdpa"
    q = torch.zeros(1, 1, 4, 16)
    kv = torch.zeros(1, 1, 2, 16)
    cache = torch.zeros(1, 8, 2, 16)
    plan = attention_plan(q, kv, kv, cache, cache, torch.zeros(1, dtype=torch.int32), Mode.CAUSAL)
    assert plan.backend == "sdpa"
