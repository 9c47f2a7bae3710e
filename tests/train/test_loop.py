"""The training loop end to end on a few small standard-library files: two optimiser
steps, the log closed, and an export that tridiff.model loads; a step that fails still
closes the log."""
import json
import os

import pytest
import torch

from tridiff.train import corpus
from tridiff.train import loop

SETTINGS = loop.TrainSettings(steps=2, batch=2, seq_len=32, warmup=1, eval_windows=2, eval_every=1,
                              bf16=False, vocab_size=600, checkpoint_minutes=60.0)


@pytest.fixture
def small_corpus(monkeypatch):
    """A few small files of the real split (the held-out ones long enough for the demo
    prompts export writes)."""
    train, held = corpus.split()
    small = sorted((f for f in train if 2_000 < os.path.getsize(f.path) < 12_000), key=lambda f: f.relpath)[:6]
    long_held = sorted((f for f in held if 4_000 < os.path.getsize(f.path) < 20_000
                        and f.read().count("\n") > 80), key=lambda f: f.relpath)[:4]
    assert len(small) == 6 and len(long_held) == 4
    monkeypatch.setattr(corpus, "split", lambda root=None: (small, long_held))


@pytest.fixture
def opened(monkeypatch):
    """Every file the loop module opens (by its own open calls)."""
    files = []

    def spy(*args, **kwargs):
        fh = open(*args, **kwargs)
        files.append(fh)
        return fh
    monkeypatch.setattr(loop, "open", spy, raising=False)
    return files


def test_two_steps_close_the_log_and_export_a_loadable_checkpoint(tmp_path, small_corpus, opened):
    from tridiff.model import Model

    out, work = tmp_path / "out", tmp_path / "work"
    summary = loop.train(str(out), str(work), SETTINGS, threads=1, log=lambda *a: None)
    assert opened and all(fh.closed for fh in opened)
    records = [json.loads(line) for line in (work / loop.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and "heldout_ar_loss" in records[-1]
    model = Model.from_pretrained(str(out), dtype=torch.float32)   # shapes checked against config.json
    assert model.config.vocab_size <= SETTINGS.vocab_size and summary["settings"]["steps"] == 2
    cache = model.new_cache(1, 8)
    assert torch.isfinite(model.forward(torch.tensor([[1, 300, 301]]), cache)).all()
    assert (out / "demo_prompts.json").is_file() and (out / loop.SUMMARY_FILE).is_file()


def test_a_failing_step_still_closes_the_log(tmp_path, small_corpus, opened, monkeypatch):
    real, calls = loop.step_loss, []

    def failing(net, *args):
        calls.append(net.training)   # the optimiser's steps, not the held-out evaluation
        if calls.count(True) == 2:
            raise RuntimeError("step failed on purpose")
        return real(net, *args)
    monkeypatch.setattr(loop, "step_loss", failing)
    with pytest.raises(RuntimeError, match="on purpose"):
        loop.train(str(tmp_path / "out"), str(tmp_path / "work"), SETTINGS, threads=1, log=lambda *a: None)
    log = [fh for fh in opened if fh.name.endswith(loop.LOG_FILE)]
    assert len(log) == 1 and log[0].closed
    assert len((tmp_path / "work" / loop.LOG_FILE).read_text().splitlines()) == 1


def test_init_continues_from_a_checkpoint_and_reports_its_losses(tmp_path, small_corpus):
    """--init: the exported checkpoint's weights are where training starts (the summary's
    init_heldout equals the held-out losses of that checkpoint), its tokenizer is reused,
    and a work folder holding another tokenizer is refused before anything is trained."""
    first, work1 = tmp_path / "first", tmp_path / "work1"
    done = loop.train(str(first), str(work1), SETTINGS, threads=1, log=lambda *a: None)
    cont = loop.TrainSettings(**{**SETTINGS.__dict__, "init": str(first), "noise_power": 3.0, "steps": 1})
    summary = loop.train(str(tmp_path / "second"), str(tmp_path / "work2"), cont, threads=1, log=lambda *a: None)
    # export stores bf16 weights, so the start is the bf16 rounding of the first run's end
    assert summary["init_heldout"]["heldout_ar_loss"] == pytest.approx(done["heldout_ar_loss"], abs=2e-2)
    assert summary["init_heldout"]["heldout_ar_loss"] != summary["heldout_ar_loss"]   # it trained on
    assert (tmp_path / "work2" / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    other = tmp_path / "work3"
    other.mkdir()
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="another tokenizer"):
        loop.train(str(tmp_path / "third"), str(other), cont, threads=1, log=lambda *a: None)
    assert not (other / loop.LOG_FILE).exists()


def test_init_refuses_a_checkpoint_of_another_shape(tmp_path):
    from tridiff.checkpoint import SINGLE_FILE, save_safetensors
    from tridiff.train.network import TrainNetwork

    net = TrainNetwork(loop.model_config(600))
    tmp_path.joinpath("ckpt").mkdir()
    save_safetensors({"nope": torch.zeros(2)}, str(tmp_path / "ckpt" / SINGLE_FILE))
    with pytest.raises(ValueError, match="--init"):
        loop.init_from(net, str(tmp_path / "ckpt"))
