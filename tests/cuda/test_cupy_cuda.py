"""The cupy path (NVRTC-compiled csrc/ headers) equals the torch path on the GPU."""
import pytest
import torch

import tridiff.ops as ops
from tests.cuda.support import gen, randn

cupy_status = None
try:
    import tridiff.cupy as tc

    cupy_status = tc.unavailable()
except Exception as exc:  # noqa: BLE001
    cupy_status = str(exc)
needs_cupy = pytest.mark.skipif(not torch.cuda.is_available() or cupy_status is not None,
                                reason="needs CUDA" if not torch.cuda.is_available() else str(cupy_status))


def _cp(t):
    import cupy

    return cupy.from_dlpack(t)


def _th(a):
    return torch.from_dlpack(a)


@needs_cupy
@pytest.mark.parametrize("paged", [pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
def test_cupy_kv_append_and_compact(paged):
    g = gen(11)
    B, T, H, D, page, max_pages = 4, 16, 8, 128, 32, 16
    lens = torch.tensor([0, 5, 100, 300], dtype=torch.int32, device="cuda")
    q_lens = torch.tensor([16, 3, 0, 16], dtype=torch.int32, device="cuda")
    if paged:
        num_pages = B * max_pages
        table = torch.randperm(num_pages, generator=g, device="cuda").view(B, max_pages).int()
        shape = (num_pages, page, H, D)
    else:
        table, shape = None, (B, page * max_pages, H, D)
    kc, vc = randn(shape, torch.bfloat16, g), randn(shape, torch.bfloat16, g)
    k, v = randn((B, T, H, D), torch.bfloat16, g), randn((B, T, H, D), torch.bfloat16, g)
    ref = [kc.clone(), vc.clone(), lens.clone()]
    ops.kv_append_(ref[0], ref[1], k, v, ref[2], q_lens=q_lens, block_table=table, backend="torch")
    out = [kc.clone(), vc.clone(), lens.clone()]
    view = [x.view(torch.int16) for x in out[:2]]
    tc.kv_append_(_cp(view[0]), _cp(view[1]), _cp(k.view(torch.int16)), _cp(v.view(torch.int16)), _cp(out[2]),
                  _cp(q_lens), None if table is None else _cp(table))
    torch.cuda.synchronize()
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    src = ops.quadratic_verify_slots(3, B, device="cuda")
    ops.kv_compact_(ref[0], ref[1], lens, src, block_table=table, backend="torch")
    tc.kv_compact_(_cp(view[0]), _cp(view[1]), _cp(lens), _cp(src), None if table is None else _cp(table))
    torch.cuda.synchronize()
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])


@needs_cupy
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cupy_sample_and_accept(temperature):
    g = gen(12)
    B, n, V = 4, 7, 50000
    x = randn((B, n + 1, V), torch.bfloat16, g)
    seed = torch.arange(B, device="cuda", dtype=torch.int64) * 977
    offset = torch.full((B,), 5, device="cuda", dtype=torch.int64)
    s, o = (seed, offset) if temperature else (None, None)
    ref = ops.sample(x, temperature=temperature, seed=s, offset=o, backend="torch")
    out = tc.sample(_cp(x.view(torch.int16)), temperature, _cp(seed) if temperature else None,
                    _cp(offset) if temperature else None, bf16=True)
    assert torch.equal(_th(out), ref)
    drafts = ref[:, :n].clone()
    drafts[2, 1] = (drafts[2, 1] + 1) % V
    lens = torch.tensor([1, 2, 3, 4], dtype=torch.int32, device="cuda")
    r = ops.accept_linear(x, drafts, lens, eos_id=-1, temperature=temperature, seed=s, offset=o, backend="torch")
    c = tc.accept_linear(_cp(x.view(torch.int16)), _cp(drafts), _cp(lens), -1, temperature,
                         _cp(seed) if temperature else None, _cp(offset) if temperature else None, bf16=True)
    for a, b in zip(r, c):
        assert torch.equal(a, _th(b))
    L = 3
    q = randn((B, L * (L + 1), V), torch.float32, g)
    dq = torch.randint(0, V, (B, L), generator=g, device="cuda")
    r = ops.accept_quadratic(q, dq, lens, eos_id=-1, backend="torch")
    c = tc.accept_quadratic(_cp(q), _cp(dq), _cp(lens), -1)
    for a, b in zip(r, c):
        assert torch.equal(a, _th(b))
