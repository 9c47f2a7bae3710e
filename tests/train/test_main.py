"""python -m tridiff.train's options: every TrainSettings field (diffusion_weight is
--objective's) is an option parsed to its field's type, booleans as --x / --no-x."""
import dataclasses

import pytest

from tridiff.train import __main__ as train_main
from tridiff.train import loop
from tridiff.train.loop import TrainSettings


@pytest.fixture
def settings(monkeypatch):
    """Runs main() with train() replaced: returns the settings it would train with."""
    seen = {}

    def fake_train(out, work, s, *, resume=False, threads=None):
        seen.update(out=out, work=work, settings=s, resume=resume, threads=threads)

    monkeypatch.setattr(train_main, "train", fake_train)

    def run(*argv):
        assert train_main.main(["--out", "/tmp/x", *argv]) == 0
        return seen["settings"]
    return run


def test_defaults_are_the_settings_defaults(settings):
    assert settings() == TrainSettings()


def test_bf16_can_be_switched_off_and_on(settings):
    assert TrainSettings().bf16 is loop.fast_bf16()   # on by default only where bf16 is native
    assert settings("--no-bf16").bf16 is False
    assert settings("--bf16").bf16 is True


@pytest.mark.parametrize("value", ["False", "false", "0"])
def test_bf16_takes_no_string_that_would_read_true(settings, value):
    """bool("False") is True: a typed value after --bf16 is refused, not read as true."""
    with pytest.raises(SystemExit) as info:
        settings("--bf16", value)
    assert info.value.code == 2


def test_every_field_is_an_option_of_its_type(settings):
    values = {"steps": "7", "batch": "3", "seq_len": "17", "lr": "0.5", "min_lr_ratio": "0.25", "warmup": "2",
              "weight_decay": "0.0", "clip": "2.5", "eps": "0.01", "seed": "9", "eval_windows": "5",
              "eval_every": "11", "checkpoint_minutes": "0.5", "vocab_size": "600", "noise_power": "3.0",
              "init": "some/dir"}
    fields = {f.name for f in dataclasses.fields(TrainSettings)} - {"diffusion_weight", "bf16"}
    assert set(values) == fields, "a new TrainSettings field: add it here"
    argv = [a for name, v in values.items() for a in ("--" + name.replace("_", "-"), v)]
    s = settings(*argv)
    for name, v in values.items():
        default = getattr(TrainSettings(), name)
        assert type(getattr(s, name)) is type(default) and getattr(s, name) == type(default)(v), name


def test_objective_sets_the_diffusion_weight(settings):
    assert settings("--objective", "ar").diffusion_weight == 0.0
    assert settings().diffusion_weight == TrainSettings().diffusion_weight


def test_documented_flags_exist(capsys):
    """Every flag the package's usage lines show (the base model's, not the drafter's
    own command) is an option of python -m tridiff.train."""
    import re

    import tridiff.train

    usage = [line for doc in (tridiff.train.__doc__, train_main.__doc__) for line in doc.splitlines()
             if "python -m tridiff.train" in line and "--drafter-lora" not in line]
    flags = {f for line in usage for f in re.findall(r"--[a-z][a-z0-9-]*", line)}
    assert "--out" in flags
    with pytest.raises(SystemExit):
        train_main.main(["--help"])
    options = set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))
    assert flags <= options, (flags - options, usage)


def test_fast_bf16_follows_the_cpu_probes(monkeypatch):
    import torch

    for bf16, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert loop.fast_bf16() is want
