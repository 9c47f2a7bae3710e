"""The public ops trace under torch.compile(fullgraph=True) and match eager results."""
import torch

from tridiff import ops


def step(q, k, v, kc, vc, lens, modes):
    out = ops.attention(q, k, v, kc, vc, lens, modes, write_kv=True)
    ops.kv_commit_(lens, q.shape[1], capacity=kc.shape[1])
    return out * 2


def test_attention_and_commit_compile_fullgraph_without_breaks():
    g = torch.Generator().manual_seed(0)
    B, T, H, Hkv, D = 2, 4, 4, 2, 8
    q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (H, Hkv, Hkv))
    modes = torch.tensor([0, 1], dtype=torch.int8)
    state = [(torch.zeros(B, 16, Hkv, D), torch.zeros(B, 16, Hkv, D), torch.tensor([2, 5], dtype=torch.int32))
             for _ in range(2)]
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(q, k, v, *state[0], modes)
    want = step(q, k, v, *state[1], modes)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    for a, b in zip(state[0], state[1]):
        assert torch.equal(a, b)
    assert state[0][2].tolist() == [6, 9]


def test_trusted_scope_skips_device_value_checks_only(monkeypatch):
    """Inside checks.trusted() device tensors skip host value checks; CPU ones never do."""
    from tridiff import _checks

    cpu = torch.zeros(2, dtype=torch.int32)
    meta_like = torch.zeros(2, dtype=torch.int32, device="meta")
    with _checks.trusted():
        assert _checks.values_checkable(cpu)
        assert not _checks.values_checkable(meta_like)
    assert _checks.values_checkable(meta_like)
