"""A decode step (KV append + linear acceptance + commit of the accepted length) captured
in a CUDA graph with the cuda backend, replayed on new inputs, equals eager torch."""
import pytest
import torch

import tridiff.ops as ops
from tests.cuda.support import CUDA, gen, randn


def _step(kc, vc, k, v, lens, logits, drafts, backend):
    ops.kv_append_(kc, vc, k, v, lens, backend=backend)
    res = ops.accept_linear(logits, drafts, lens, eos_id=-1, backend=backend)
    ops.kv_rollback_(lens, res.new_cache_lens - k.shape[1], backend=backend)  # keep what was accepted
    return res


@pytest.mark.parametrize("backend", CUDA)
def test_graph_capture_replay(backend):
    g = gen(9)
    B, n, H, D, Tmax, V = 4, 7, 8, 128, 1024, 32000
    kc, vc = randn((B, Tmax, H, D), torch.bfloat16, g), randn((B, Tmax, H, D), torch.bfloat16, g)
    lens = torch.tensor([0, 10, 100, 500], dtype=torch.int32, device="cuda")
    k, v = randn((B, n + 1, H, D), torch.bfloat16, g), randn((B, n + 1, H, D), torch.bfloat16, g)
    logits = randn((B, n + 1, V), torch.bfloat16, g)
    drafts = logits[:, :n].argmax(-1)
    drafts[1, 2] = (drafts[1, 2] + 1) % V
    static = [kc.clone(), vc.clone(), k, v, lens.clone(), logits, drafts]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: load the extension, allocate pools
        _step(kc.clone(), vc.clone(), k, v, lens.clone(), logits, drafts, backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res = _step(*static, backend)

    for trial in range(3):
        new = [randn(k.shape, torch.bfloat16, g), randn(v.shape, torch.bfloat16, g), randn(logits.shape, torch.bfloat16, g)]
        new_drafts = new[2][:, :n].argmax(-1)
        new_drafts[trial, trial] = (new_drafts[trial, trial] + 1) % V
        ref_state = [kc.clone(), vc.clone(), lens.clone()]
        static[0].copy_(kc); static[1].copy_(vc); static[4].copy_(lens)
        static[2].copy_(new[0]); static[3].copy_(new[1]); static[5].copy_(new[2]); static[6].copy_(new_drafts)
        graph.replay()
        ref = _step(ref_state[0], ref_state[1], new[0], new[1], ref_state[2], new[2], new_drafts, "torch")
        torch.cuda.synchronize()
        assert torch.equal(static[0], ref_state[0]) and torch.equal(static[1], ref_state[1])
        assert torch.equal(static[4], ref_state[2])
        for r, o in zip(ref, res):
            assert torch.equal(r, o)
