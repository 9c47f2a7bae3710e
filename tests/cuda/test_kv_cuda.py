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


@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("H,D", [(8, 128), (3, 5)])
def test_head_major_paged_views(backend, H, D):
    """bf16 head-major pages [N, H, page, D] seen as [N, page, H, D] with 5-D layers, k/v of a
    [B, H, T, D] buffer: append and compaction as per-head runs, storage bit-exact."""
    g = gen()
    B, T, page, max_pages, layers = 4, 32, 64, 8, 2
    N = B * max_pages + 3
    store = randn((2, layers, N, H, page, D), torch.bfloat16, g)
    k = randn((B, H, T, D), torch.bfloat16, g).transpose(1, 2)
    v = randn((B, H, T, D), torch.bfloat16, g).transpose(1, 2)
    table = torch.randperm(N, device="cuda", generator=g)[: B * max_pages].view(B, max_pages).int()
    lens = torch.tensor([0, 63, 100, 460], dtype=torch.int32, device="cuda")
    q_lens = torch.tensor([32, 1, 0, 32], dtype=torch.int32, device="cuda")
    want, want_lens = store.clone(), lens.clone()
    view = lambda s: s.transpose(3, 4)  # noqa: E731  [2, layers, N, page, H, D]
    ops.kv_append_(view(want)[0, 1], view(want)[1, 1], k, v, want_lens, q_lens=q_lens, block_table=table,
                   backend="torch")
    ops.kv_append_(view(store)[0, 1], view(store)[1, 1], k, v, lens, q_lens=q_lens, block_table=table,
                   backend=backend)
    torch.cuda.synchronize()
    assert torch.equal(store, want) and torch.equal(lens, want_lens)
    src = ops.quadratic_verify_slots(4, B, device="cuda")
    ops.kv_compact_(view(want)[0], view(want)[1], lens, src, block_table=table, backend="torch")
    ops.kv_compact_(view(store)[0], view(store)[1], lens, src, block_table=table, backend=backend)
    torch.cuda.synchronize()
    assert torch.equal(store, want)


# ---- CPU-runnable: the cuda backend's stride rules and argument packing (nothing launched) ----

KV_OPS = ("kv_write_", "kv_append_", "kv_commit_", "kv_rollback_", "kv_compact_", "paged_reserve_",
          "paged_release_")


def test_every_kv_op_of_the_native_backends_has_a_stride_rule():
    import tridiff.cpp
    import tridiff.cuda

    for mod in (tridiff.cpp, tridiff.cuda):
        for op in KV_OPS:
            assert callable(getattr(mod, f"supports_{op}")), (mod.__name__, op)


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


def _glue(monkeypatch):
    """The cuda backend's argument packing (tridiff.native) over CPU tensors, its compiled
    module replaced by a recorder: what the kernels would be handed, without a GPU."""
    from tridiff.native import Native

    glue = Native("cuda", "cpu")
    rec = _Recorder()
    monkeypatch.setattr(glue, "lib", lambda: rec)
    monkeypatch.setattr(glue, "stream", lambda t: 0)
    return glue, rec.calls


def test_cuda_glue_packs_head_major_views_as_per_head_runs(monkeypatch):
    glue, calls = _glue(monkeypatch)
    B, T, H, D, Tmax = 2, 3, 4, 8, 16
    kc = torch.zeros(B, H, Tmax, D, dtype=torch.bfloat16).transpose(1, 2)   # head-major cache
    vc = torch.zeros(B, H, Tmax, D, dtype=torch.bfloat16).transpose(1, 2)
    k = torch.zeros(B, T, H, D, dtype=torch.bfloat16)                        # dense k
    v = torch.zeros(B, T, 3, H, D, dtype=torch.bfloat16)[:, :, 2]            # dense slab in a fused qkv
    lens, q_lens = torch.zeros(B, dtype=torch.int32), torch.full((B,), T, dtype=torch.int32)
    assert glue.supports_kv_append_(kc, vc, k, v, lens, q_lens, None) is None
    glue.kv_append_(kc, vc, k, v, lens, q_lens, None)
    (name, args), = calls
    heads, head_bytes, k_hs, v_hs, cache_hs = args[-6:-1]
    assert (name, heads, head_bytes) == ("kv_write", H, D * 2)
    assert (k_hs, v_hs, cache_hs) == (D * 2, D * 2, Tmax * D * 2)
    calls.clear()
    glue.kv_append_(kc.contiguous(), vc.contiguous(), k, v, lens, q_lens, None)  # all dense: one run
    assert calls[0][1][-6:-4] == (1, H * D * 2)


def test_cuda_glue_compacts_paged_layers_in_one_call(monkeypatch):
    glue, calls = _glue(monkeypatch)
    layers, N, page, H, D = 3, 5, 4, 2, 8
    kc = torch.zeros(layers, N, H, page, D).transpose(2, 3)
    lens, src = torch.zeros(2, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32)
    table = torch.zeros(2, 2, dtype=torch.int32)
    assert glue.supports_kv_compact_(kc, kc.clone(), lens, src, table) is None  # equal strides
    glue.kv_compact_(kc, kc.clone(), lens, src, table)
    (name, args), = calls
    assert args[2:4] == (layers, kc.stride(0) * 4)                      # layers, layer stride
    assert args[9:13] == (kc.stride(1) * 4, kc.stride(2) * 4, page, 2)  # page, slot strides
    assert args[13:16] == (H, D * 4, kc.stride(3) * 4)                  # per-head runs


@pytest.mark.parametrize("case", ["d_strided_k", "d_strided_cache", "v_cache_strides", "lens_int64",
                                  "lens_strided", "table_strided"])
def test_cuda_glue_refuses_what_its_kernels_cannot_address(monkeypatch, case):
    glue, calls = _glue(monkeypatch)
    B, T, H, D, Tmax = 2, 3, 2, 4, 8
    kc, vc = torch.zeros(B, Tmax, H, D), torch.zeros(B, Tmax, H, D)
    k, v = torch.zeros(B, T, H, D), torch.zeros(B, T, H, D)
    lens, q_lens = torch.zeros(B, dtype=torch.int32), torch.ones(B, dtype=torch.int32)
    table = None
    if case == "d_strided_k":
        k = torch.zeros(B, T, H, D, 2)[..., 0]
    elif case == "d_strided_cache":
        kc = torch.zeros(B, Tmax, H, D, 2)[..., 0]
        vc = torch.zeros(B, Tmax, H, D, 2)[..., 0]
    elif case == "v_cache_strides":
        vc = torch.zeros(B, H, Tmax, D).transpose(1, 2)
    elif case == "lens_int64":
        lens = lens.long()
    elif case == "lens_strided":
        lens = torch.zeros(2 * B, dtype=torch.int32)[::2]
    else:
        kc, vc = torch.zeros(5, Tmax, H, D), torch.zeros(5, Tmax, H, D)
        table = torch.zeros(2, B, dtype=torch.int32).t()
    for op in ("kv_write_", "kv_append_"):
        assert getattr(glue, f"supports_{op}")(kc, vc, k, v, lens, q_lens, table), (op, case)
    assert calls == []
