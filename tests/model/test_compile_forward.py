"""A whole model forward traces as one graph under torch.compile (inductor, fullgraph) and
gives the eager logits and cache. Guards the ops' fake kernels (inductor checks the real
outputs' strides against them) and the forward's trace-safety (no storage-address
comparisons, no CPU projection timing while traced)."""
import torch

from tridiff import Mode
from tridiff.model import Model
from tests.model.support import tiny_config


def test_forward_compiles_fullgraph_and_matches_eager():
    model = Model(tiny_config(), dtype=torch.float32).init_random_(0)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (2, 6), generator=g)
    step = torch.randint(0, model.config.vocab_size, (2, 3), generator=g)
    caches = [model.new_cache(2, 16) for _ in range(2)]
    for c in caches:
        model.forward(prompt, c, modes=Mode.CAUSAL, kv="commit")
    compiled = torch.compile(model.forward, backend="inductor", fullgraph=True, dynamic=False)
    got = compiled(step, caches[0], modes=Mode.CAUSAL, kv="commit")
    want = model.forward(step, caches[1], modes=Mode.CAUSAL, kv="commit")
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert torch.equal(caches[0].lens, caches[1].lens)
    assert torch.allclose(caches[0].k, caches[1].k, atol=1e-5, rtol=1e-5)
    assert torch.allclose(caches[0].v, caches[1].v, atol=1e-5, rtol=1e-5)
