"""The drafter adapter's training: its draft forward is the inference model's draft
forward (BIDIR_BLOCK over a committed prefix, adapter on) and its clean stream the
adapter-free AR forward; the masking schedule keeps the seed; training lowers the
loss, resumes to the same adapter, and exports what tridiff's loader reads."""
import dataclasses
import json
import os

import pytest
import torch

from tridiff import Mode
from tridiff import checkpoint as ckpt
from tridiff.config import LoraConfig, preset
from tridiff.model import Model
from tridiff.train import drafter
from tridiff.train import drafter_loop as dl
from tridiff.train import objective as ob
from tridiff.train.network import TrainNetwork

L = 4


def _net(seed=0):
    net = TrainNetwork(preset("tiny", block_length=L)).init_weights_(seed).double()
    with torch.no_grad():   # larger than the init so the comparison is not trivially small
        for p in net.parameters():
            p.mul_(10.0 if p.ndim >= 2 else 1.0)
    return net.requires_grad_(False)


def _lora(net, rank=3, alpha=5.0, seed=1):
    lora = drafter.DrafterLora(net.config, rank, alpha, seed=seed).double()
    with torch.no_grad():   # B starts at zero; make the delta visible
        for b in lora.B:
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed), dtype=b.dtype) * 0.5)
    return lora


def test_zero_adapter_gives_the_two_stream_network():
    net = _net()
    lora = drafter.DrafterLora(net.config, 2, 4.0).double()   # B = 0: no delta
    gen = torch.Generator().manual_seed(0)
    S = 4 * L
    clean = torch.randint(0, net.config.vocab_size, (2, S), generator=gen)
    masked = drafter.sample_masks(2, S, L, {"linear": 1, "prefix": 1, "scattered": 1}, gen)
    noisy = torch.where(masked, torch.full_like(clean, net.config.mask_token_id), clean)
    hn, hc = drafter.draft_hidden(net, lora, noisy, clean, L)
    ref = net(torch.cat((noisy, clean), 1), ob.two_stream_positions(S), ob.two_stream_mask(S, L))
    torch.testing.assert_close(net.diffusion_head(hn), ref[:, :S], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(net.diffusion_head(hc), ref[:, S:], rtol=1e-10, atol=1e-10)


def test_draft_forward_equals_the_inference_draft_with_adapter():
    """Block b of the noisy stream == tridiff.model's BIDIR_BLOCK forward of that block
    (adapter on) after an adapter-free commit of the clean tokens before it."""
    net, S = _net(), 3 * L
    lora = _lora(net)
    cfg = dataclasses.replace(net.config, lora=LoraConfig(rank=lora.rank, alpha=lora.alpha))
    model = Model(cfg, dtype=torch.float64)
    model.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        for i, layer in enumerate(model.linear_spec_lora):
            layer.lora_A.weight.copy_(lora.A[i])
            layer.lora_B.weight.copy_(lora.B[i])
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, cfg.vocab_size, (1, S), generator=gen)
    masked = drafter.sample_masks(1, S, L, {"linear": 1, "scattered": 1}, gen)
    noisy = torch.where(masked, torch.full_like(clean, cfg.mask_token_id), clean)
    with torch.no_grad():
        hn, hc = drafter.draft_hidden(net, lora, noisy, clean, L)
        draft, ar = net.diffusion_head(hn), net.diffusion_head(hc)
    for b in range(1, S // L):
        cache = model.new_cache(1, S)
        prefix = model(clean[:, :b * L], cache, modes=Mode.CAUSAL, kv="commit")   # adapter off
        torch.testing.assert_close(prefix, ar[:, :b * L], rtol=1e-9, atol=1e-9)
        got = model(noisy[:, b * L:(b + 1) * L], cache, modes=Mode.BIDIR_BLOCK, kv="none", adapter=True)
        torch.testing.assert_close(got, draft[:, b * L:(b + 1) * L], rtol=1e-9, atol=1e-9)
        off = model(noisy[:, b * L:(b + 1) * L], cache, modes=Mode.BIDIR_BLOCK, kv="none", adapter=False)
        assert (off - got).abs().max() > 1e-3   # the adapter does change the draft


def test_schedules_keep_the_seed_and_mask_what_they_say():
    gen = torch.Generator().manual_seed(0)
    B, S, blk = 64, 8 * 16, 16
    for kind in drafter.SCHEDULES:
        m = drafter.sample_masks(B, S, blk, {kind: 1.0}, gen).view(B, S // blk, blk)
        assert not m[..., 0].any() and m[..., 1:].any(-1).all()
        if kind == "linear":
            assert m[..., 1:].all()
        if kind == "prefix":   # clean 1..k, then masks to the block's end, k in 1..L-2
            assert (m[..., 1:].int().diff(dim=-1) >= 0).all() and not m[..., 1].any()
        if kind == "scattered":   # some blocks are not suffixes
            assert ((m[..., 1:].int().diff(dim=-1) < 0).any(-1)).any()
    mixed = drafter.sample_masks(B, S, blk, {"linear": 3.0, "prefix": 1.0}, gen).view(B, S // blk, blk)
    share = float(mixed[..., 1:].all(-1).float().mean())
    assert 0.6 < share < 0.9   # 3:1 linear (a prefix block is never all-masked)
    with pytest.raises(ValueError, match="mix"):
        drafter.sample_masks(2, S, blk, {"all-mask": 1.0})
    with pytest.raises(ValueError, match="block"):
        drafter.sample_masks(2, 30, blk, {"linear": 1.0})


def test_batch_excludes_block_zero_and_loss_needs_a_known_target():
    net = _net()
    w = torch.randint(0, net.config.vocab_size, (2, 3 * L), generator=torch.Generator().manual_seed(0))
    batch = drafter.make_draft_batch(w, L, net.config.mask_token_id, {"linear": 1.0})
    assert not batch.masked[:, :L].any() and batch.masked[:, L + 1:2 * L].all()
    assert (batch.noisy[:, 1:L] == net.config.mask_token_id).all()   # block 0 is still drafted
    with pytest.raises(ValueError, match="target"):
        drafter.draft_loss(net, _lora(net), batch, L, target="quadratic")


@pytest.mark.parametrize("target", drafter.TARGETS)
def test_a_few_steps_lower_the_draft_loss(target):
    net = _net().float()
    lora = drafter.DrafterLora(net.config, 4, 8.0)
    w = torch.randint(0, net.config.vocab_size, (4, 4 * L), generator=torch.Generator().manual_seed(1))
    batch = drafter.make_draft_batch(w, L, net.config.mask_token_id, {"linear": 1.0},
                                     torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(lora.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss, _ = drafter.draft_loss(net, lora, batch, L, target)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(drafter.draft_loss(net, lora, batch, L, target)[0]) < 0.9 * first
    assert all(p.grad is None for p in net.parameters())   # the base stays frozen


def _tiny_base(tmp_path):
    base = tmp_path / "base"
    ckpt.write_random_checkpoint(base, preset("tiny", block_length=L), seed=0, with_tokenizer=False)
    work = tmp_path / "work"
    work.mkdir()
    gen = torch.Generator().manual_seed(0)
    vocab = preset("tiny").vocab_size
    torch.save({"train": torch.randint(0, vocab, (4000,), generator=gen, dtype=torch.int32),
                "heldout": torch.randint(0, vocab, (1000,), generator=gen, dtype=torch.int32)},
               work / dl.TOKENS_FILE)
    return str(base), work


def _settings(**kw):
    return dl.DrafterSettings(**{**dict(rank=2, alpha=4.0, steps=4, batch=2, seq_len=4 * L, warmup=1,
                                        eval_windows=2, eval_every=2, checkpoint_minutes=0.0), **kw})


def test_export_is_the_released_adapter_layout_and_loads(tmp_path):
    base, work = _tiny_base(tmp_path)
    out = tmp_path / "out"
    summary = dl.train_drafter(base, str(out), str(work), _settings(), threads=1, log=lambda *_: None)
    assert summary["steps_done"] == 4 and summary["heldout_linear_drafts_before"] is not None
    adir = out / ckpt.ADAPTER_DIR
    assert sorted(os.listdir(adir)) == [ckpt.ADAPTER_CONFIG, ckpt.ADAPTER_WEIGHTS]
    meta = json.loads((adir / ckpt.ADAPTER_CONFIG).read_text())
    assert (meta["r"], meta["lora_alpha"], meta["target_modules"]) == (2, 4.0, ["o_proj"])
    found = ckpt.open_checkpoint(str(out), adapter=True)
    assert found.config.lora.rank == 2 and found.config.lora.scale == 2.0
    model = Model.from_pretrained(str(out), dtype=torch.float32)
    state = torch.load(work / dl.STATE_FILE)
    for i, layer in enumerate(model.linear_spec_lora):
        torch.testing.assert_close(layer.lora_B.weight, state["lora"][f"B.{i}"], rtol=0, atol=0)
        torch.testing.assert_close(layer.lora_A.weight, state["lora"][f"A.{i}"], rtol=0, atol=0)
    assert any(float(b.abs().max()) > 0 for b in (layer.lora_B.weight for layer in model.linear_spec_lora))
    # the base weights were copied unchanged
    torch.testing.assert_close(model.diffusion_head.weight,
                               Model.from_pretrained(base, dtype=torch.float32).diffusion_head.weight)


def test_resume_gives_the_uninterrupted_adapter(tmp_path):
    base, work = _tiny_base(tmp_path)
    whole = dl.train_drafter(base, str(tmp_path / "a"), str(work), _settings(), threads=1, log=lambda *_: None)
    assert whole["steps_done"] == 4
    a = torch.load(work / dl.STATE_FILE)["lora"]
    os.remove(work / dl.STATE_FILE)
    dl.train_drafter(base, str(tmp_path / "b"), str(work), _settings(steps=4), threads=1, log=lambda *_: None,
                     max_minutes=0.0)   # stops after its first step, state saved
    assert torch.load(work / dl.STATE_FILE)["step"] == 1
    dl.train_drafter(base, str(tmp_path / "b"), str(work), _settings(), resume=True, threads=1,
                     log=lambda *_: None)
    b = torch.load(work / dl.STATE_FILE)["lora"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        dl.train_drafter(base, str(tmp_path / "c"), str(work), _settings(rank=3), resume=True, threads=1,
                         log=lambda *_: None)


def test_cli_reaches_the_drafter_trainer(tmp_path):
    from tridiff.train.__main__ import main

    base, work = _tiny_base(tmp_path)
    out = tmp_path / "cli"
    assert main(["--drafter-lora", "--base", base, "--out", str(out), "--work", str(work), "--steps", "1",
                 "--batch", "1", "--seq-len", str(4 * L), "--rank", "2", "--alpha", "2", "--eval-windows", "1",
                 "--warmup", "1", "--threads", "1"]) == 0
    assert ckpt.open_checkpoint(str(out), adapter=True).config.lora.rank == 2


def test_position_decay_weights_the_positions_a_verify_reaches():
    net = _net().float()
    lora = drafter.DrafterLora(net.config, 2, 4.0)
    w = torch.randint(0, net.config.vocab_size, (2, 3 * L), generator=torch.Generator().manual_seed(4))
    batch = drafter.make_draft_batch(w, L, net.config.mask_token_id, {"linear": 1.0})
    only_first = dataclasses.replace(batch, masked=batch.masked & (torch.arange(3 * L) % L == 1))
    with torch.no_grad():
        tiny = drafter.draft_loss(net, lora, batch, L, "data", position_decay=1e-12)[0]
        first = drafter.draft_loss(net, lora, only_first, L, "data")[0]
        flat = drafter.draft_loss(net, lora, batch, L, "data")[0]
    torch.testing.assert_close(tiny, first)
    assert abs(float(flat) - float(first)) > 1e-3
    with pytest.raises(ValueError, match="position_decay"):
        drafter.draft_loss(net, lora, batch, L, "data", position_decay=0.0)
