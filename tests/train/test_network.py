"""The training network is the inference network: its state_dict is a checkpoint that
tridiff.model loads, and both give the same logits for the same attention pattern.
A few optimiser steps on a tiny config lower the joint loss."""
import dataclasses

import torch

from tridiff import Mode
from tridiff.config import preset
from tridiff.model import Model
from tridiff.train import objective as ob
from tridiff.train.loop import TrainSettings, make_optimizer, step_loss
from tridiff.train.network import TrainNetwork


def _tiny(block=4):
    return preset("tiny", block_length=block)


def _pair(seed=0):
    cfg = _tiny()
    net = TrainNetwork(cfg).init_weights_(seed).double()
    with torch.no_grad():  # larger than the init so the comparison is not trivially small
        for p in net.parameters():
            p.mul_(10.0 if p.ndim >= 2 else 1.0)
    model = Model(cfg, dtype=torch.float64)
    model.load_state_dict(net.state_dict())
    return net, model


def test_state_dict_names_are_checkpoint_names():
    from tridiff.checkpoint import expected_shapes

    cfg = _tiny()
    shapes = {k: tuple(v.shape) for k, v in TrainNetwork(cfg).state_dict().items()}
    assert shapes == expected_shapes(cfg)


def test_causal_logits_equal_the_inference_model():
    net, model = _pair()
    tokens = torch.randint(0, 512, (2, 80), generator=torch.Generator().manual_seed(0))
    S = tokens.shape[1]  # 80 > original_max_position_embeddings 64: llama-4 scale active
    got = net(tokens, torch.arange(S), torch.ones(S, S, dtype=torch.bool).tril())
    want = model(tokens, model.new_cache(2, S), modes=Mode.CAUSAL)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_noisy_block_logits_equal_a_bidir_block_forward():
    """The last noisy block of the two-stream input sees the clean tokens before it and
    itself: exactly a BIDIR_BLOCK forward of that block over a committed cache."""
    net, model = _pair(1)
    S, L = 12, 4
    windows = torch.randint(200, 512, (2, S + 1), generator=torch.Generator().manual_seed(2))
    batch = ob.make_batch(windows, L, mask_id=100, generator=torch.Generator().manual_seed(3))
    got = net(batch.inputs, ob.two_stream_positions(S), ob.two_stream_mask(S, L))[:, S - L:S]
    cache = model.new_cache(2, S)
    model(batch.clean[:, :S - L], cache, modes=Mode.CAUSAL, kv="commit")
    want = model(batch.inputs[:, S - L:S], cache, modes=Mode.BIDIR_BLOCK)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_a_few_steps_lower_the_joint_loss():
    torch.manual_seed(0)
    cfg = _tiny()
    net = TrainNetwork(cfg).init_weights_(0)
    s = TrainSettings(steps=30, batch=4, seq_len=16, lr=3e-3, warmup=1, bf16=False)
    opt = make_optimizer(net, s)
    # a repetitive stream: learnable in a few steps
    stream = torch.arange(200, 232).repeat(8)
    windows = torch.stack([stream[i:i + 17] for i in range(0, 32, 8)])
    losses = []
    for step in range(s.steps):
        loss, _, _ = step_loss(net, windows, s, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_ar_only_objective_ignores_the_noisy_stream():
    cfg = _tiny()
    net = TrainNetwork(cfg).init_weights_(0)
    s = dataclasses.replace(TrainSettings(batch=2, seq_len=8, bf16=False), diffusion_weight=0.0)
    windows = torch.randint(200, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    loss, ar, diff = step_loss(net, windows, s, torch.Generator().manual_seed(0))
    assert float(diff) == 0.0 and torch.equal(loss.detach(), ar)
