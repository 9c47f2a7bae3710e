"""CUDA KV-cache kernels against the torch reference on the GPU, bf16 at real shapes
(Hkv=8, D=128, 4k-token rows): bit-exact, untouched slots untouched, lengths exact."""
import pytest
import torch

import tridiff.ops as ops
from tests.cuda.support import CUDA, gen, randn


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("paged", [pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
@pytest.mark.parametrize("H,D", [(8, 128), (2, 80), (3, 5)])
def test_kv_append(backend, paged, H, D):
    g = gen()
    B, T, page = 8, 32, 64
    Tmax = 4096
    lens = torch.tensor([0, 1, 63, 64, 1000, 2048, 4064, 17], dtype=torch.int32, device="cuda")
    q_lens = torch.tensor([32, 31, 1, 0, 32, 5, 32, 9], dtype=torch.int32, device="cuda")
    kv = randn((B, T, 2, H, D), torch.bfloat16, g)
    k, v = kv[:, :, 0], kv[:, :, 1]  # non-contiguous views, like a fused qkv projection
    if paged:
        max_pages = Tmax // page
        num_pages = B * max_pages + 5
        table = torch.randperm(num_pages, device="cuda", generator=g)[: B * max_pages].view(B, max_pages).int()
        shape = (num_pages, page, H, D)
    else:
        table, shape = None, (B, Tmax, H, D)
    kc, vc = randn(shape, torch.bfloat16, g), randn(shape, torch.bfloat16, g)
    ref = [kc.clone(), vc.clone(), lens.clone()]
    out = [kc.clone(), vc.clone(), lens.clone()]
    ops.kv_append_(ref[0], ref[1], k, v, ref[2], q_lens=q_lens, block_table=table, backend="torch")
    ops.kv_append_(out[0], out[1], k, v, out[2], q_lens=q_lens, block_table=table, backend=backend)
    torch.cuda.synchronize()
    for r, o in zip(ref, out):
        assert torch.equal(r, o)
    changed = (out[0] != kc).flatten(2).any(-1)  # token slots that differ from the original cache
    assert 0 < int(changed.sum()) <= int(q_lens.sum())  # only written slots changed
    assert torch.equal(out[2], lens + q_lens)


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("layers", [pytest.param(None, id="4d"), pytest.param(4, id="5d")])
def test_kv_compact(backend, layers):
    g = gen(7)
    B, Tmax, H, D, L = 4, 2048, 8, 128, 16
    shape = (B, Tmax, H, D) if layers is None else (layers, B, Tmax, H, D)
    kc, vc = randn(shape, torch.bfloat16, g), randn(shape, torch.bfloat16, g)
    lens = torch.tensor([0, 100, 1500, Tmax - L * (L + 1)], dtype=torch.int32, device="cuda")
    src = ops.quadratic_verify_slots(L, B, device="cuda").clone()
    src[1, 5:] = -1
    src[2] = torch.arange(L, device="cuda", dtype=torch.int32).flip(0)  # overlapping moves
    ref, out = [kc.clone(), vc.clone()], [kc.clone(), vc.clone()]
    ops.kv_compact_(ref[0], ref[1], lens, src, backend="torch")
    ops.kv_compact_(out[0], out[1], lens, src, backend=backend)
    torch.cuda.synchronize()
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert not torch.equal(out[0], kc)


@pytest.mark.parametrize("backend", CUDA)
def test_paged_reserve_release(backend):
    g = torch.Generator().manual_seed(3)
    B, max_pages, page, N = 8, 16, 64, 200
    states = {}
    free0 = torch.randperm(N, generator=g).int().cuda()
    for name in ("torch", backend):
        states[name] = [torch.full((B, max_pages), -1, dtype=torch.int32, device="cuda"), free0.clone(),
                        torch.tensor([N], dtype=torch.int32, device="cuda")]
    for step in range(6):
        target = torch.randint(0, max_pages * page // 2, (B,), generator=g).int().cuda()
        keep = torch.randint(0, max_pages * page // 2, (B,), generator=g).int().cuda()
        for name, (t, f, c) in states.items():
            ops.paged_reserve_(t, f, c, target, page_size=page, backend=name)
            ops.paged_release_(t, f, c, keep, page_size=page, backend=name)
        for r, o in zip(states["torch"], states[backend]):
            assert torch.equal(r, o)
