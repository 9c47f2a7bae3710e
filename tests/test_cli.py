"""The `tridiff` command line: the --json contract of `generate` in every mode, one-line
refusals of bad arguments, and `demo`. Most calls run main() in process (fast); one
success (`python -m tridiff`) and one refusal (`python -m tridiff.cli`) run in a real subprocess."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tridiff.checkpoint import write_random_checkpoint
from tridiff.cli import main

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
ROW_KEYS = {"prompt_ids", "tokens", "text", "nfe", "tokens_per_forward", "mean_accepted"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-ckpt")
    write_random_checkpoint(d, "tiny", seed=0, with_tokenizer=True)
    return str(d)


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("mode", MODES)
def test_generate_json_every_mode(ckpt, capsys, mode):
    from tridiff.generate import generate
    from tridiff.model import Model
    from tridiff.tokenizer import Tokenizer

    rc, out, err = _run(capsys, "generate", "--model", ckpt, "--prompt", "hello tridiff", "--mode", mode,
                        "--max-new-tokens", "8", "--block-length", "4", "--device", "cpu", "--json")
    assert rc == 0, err
    doc = json.loads(out)  # exactly one JSON object on stdout
    assert set(doc) == {"mode", "results", "seconds", "device", "dtype"}
    assert doc["mode"] == mode and doc["device"] == "cpu" and doc["dtype"] == "float32"
    assert isinstance(doc["seconds"], float) and doc["seconds"] >= 0
    (row,) = doc["results"]
    assert set(row) == ROW_KEYS
    tok = Tokenizer(ckpt)
    assert row["prompt_ids"] == tok.encode("hello tridiff")
    assert all(isinstance(t, int) for t in row["tokens"]) and isinstance(row["text"], str)
    assert row["text"] == tok.decode(row["tokens"])
    assert isinstance(row["nfe"], int) and row["nfe"] > 0
    assert row["tokens_per_forward"] == pytest.approx(len(row["tokens"]) / row["nfe"])
    if mode in ("ar", "diffusion"):
        assert row["mean_accepted"] is None
    else:
        assert isinstance(row["mean_accepted"], float) and row["mean_accepted"] >= 1.0
    # same numbers as the library call with the CLI's defaults (diffusion threshold 0.9)
    model = Model.from_pretrained(ckpt, device="cpu", dtype=torch.float32)
    lib = generate(model, [row["prompt_ids"]], mode=mode, max_new_tokens=8, block_length=4,
                   threshold={"diffusion": 0.9, "linear-spec": 0.0}.get(mode)).results[0]
    assert (row["tokens"], row["nfe"]) == (lib.tokens, lib.nfe)


def test_generate_prompt_ids_batch(ckpt, capsys):
    rc, out, err = _run(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,300,301",
                        "--prompt-ids", "1,400,401,402,403", "--mode", "ar", "--max-new-tokens", "4",
                        "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert [r["prompt_ids"] for r in doc["results"]] == [[1, 300, 301], [1, 400, 401, 402, 403]]
    assert all(1 <= len(r["tokens"]) <= 4 for r in doc["results"])


@pytest.mark.parametrize("anchors", [pytest.param("2", id="k2"), pytest.param("0,2", id="fixed02")])
def test_generate_anchors(ckpt, capsys, anchors):
    """--anchors prunes quadratic-spec; the tokens stay AR's."""
    argv = ["generate", "--model", ckpt, "--prompt-ids", "1,300,301", "--max-new-tokens", "8",
            "--block-length", "4", "--device", "cpu", "--json"]
    rc, out, err = _run(capsys, *argv, "--mode", "quadratic-spec", "--anchors", anchors)
    assert rc == 0, err
    rc, ar, err = _run(capsys, *argv, "--mode", "ar")
    assert rc == 0, err
    assert json.loads(out)["results"][0]["tokens"] == json.loads(ar)["results"][0]["tokens"]


def test_generate_plain_output(ckpt, capsys):
    rc, out, err = _run(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,2,3", "--mode", "ar",
                        "--max-new-tokens", "3")
    assert rc == 0, err
    assert "NFE" in out and "ids:" in out


@pytest.mark.parametrize("argv,needle", [
    pytest.param(["--mode", "diffusion", "--max-new-tokens", "10", "--block-length", "4"], "multiple",
                 id="diffusion-multiple"),
    pytest.param(["--mode", "quadratic-spec", "--max-new-tokens", "6", "--block-length", "4"], "multiple",
                 id="quadratic-multiple"),
    pytest.param(["--mode", "beam"], "invalid choice", id="unknown-mode"),
    pytest.param(["--mode", "ar", "--prompt-ids", ",".join(["5"] * 1100)], "context", id="too-long"),
    pytest.param(["--mode", "ar", "--prompt-ids", "1,x"], "integers", id="bad-ids"),
    pytest.param(["--mode", "ar", "--max-new-tokens", "0"], "max_new_tokens", id="zero-new"),
    pytest.param(["--mode", "quadratic-spec", "--temperature", "0.5", "--max-new-tokens", "8", "--block-length", "4"],
                 "temperature", id="quadratic-temperature"),
    pytest.param(["--mode", "ar", "--device", "cpu", "--cuda-graphs", "on"], "cuda_graphs", id="graphs-on-cpu"),
    pytest.param(["--mode", "ar", "--cuda-graphs", "yes"], "invalid choice", id="graphs-bad-choice"),
    pytest.param(["--mode", "ar", "--anchors", "2"], "anchors", id="anchors-other-mode"),
    pytest.param(["--mode", "quadratic-spec", "--max-new-tokens", "8", "--block-length", "4", "--anchors", "1,2"],
                 "include 0", id="anchors-no-zero"),
    pytest.param(["--mode", "quadratic-spec", "--anchors", "two"], "comma-separated anchors", id="anchors-text"),
])
def test_generate_invalid_arguments(ckpt, capsys, argv, needle):
    if "--prompt-ids" not in argv:
        argv = argv + ["--prompt-ids", "1,2,3"]
    rc, out, err = _run(capsys, "generate", "--model", ckpt, *argv)
    assert rc != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert "Traceback" not in err


def test_generate_missing_model_dir(tmp_path, capsys):
    rc, out, err = _run(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt-ids", "1,2",
                        "--mode", "ar")
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "nope" in err


def test_generate_text_prompt_without_tokenizer(tmp_path, capsys):
    d = tmp_path / "no-tok"
    write_random_checkpoint(d, "tiny", seed=1, with_tokenizer=False)
    rc, out, err = _run(capsys, "generate", "--model", str(d), "--prompt", "hi", "--mode", "ar")
    assert rc != 0 and "tokenizer.json" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_subprocess(ckpt, tmp_path):
    """`python -m tridiff` and `python -m tridiff.cli` work: one success (JSON on stdout)
    and one refusal."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    ok = subprocess.run([sys.executable, "-m", "tridiff", "generate", "--model", ckpt, "--prompt-ids",
                         "1,2,3", "--mode", "linear-spec", "--max-new-tokens", "4", "--block-length", "4",
                         "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["mode"] == "linear-spec"
    bad = subprocess.run([sys.executable, "-m", "tridiff.cli", "generate", "--model", str(tmp_path / "x"),
                          "--prompt-ids", "1", "--mode", "ar"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_demo_on_the_bundled_model(capsys):
    """The main job end to end: completions, then a table row per mode with its columns,
    and each self-speculation row marked == AR (the exit status says so too)."""
    rc, out, err = _run(capsys, "demo", "--max-new-tokens", "32")
    assert rc == 0, err
    assert "on cpu" in out and "held-out prompts" in out
    header = next(line for line in out.splitlines() if line.startswith("mode "))
    assert header.split() == ["mode", "tokens", "NFE", "tok/fwd", "accepted", "tok/s", "vs", "AR"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in MODES and len(line.split()) >= 6}
    assert set(rows) == set(MODES)
    for mode in ("linear-spec", "quadratic-spec"):
        assert rows[mode][-2:] == ["==", "AR"] and float(rows[mode][4]) >= 1.0
    assert rows["ar"][-1].endswith("x") and float(rows["ar"][3]) == 1.0
    assert out.count("--- AR (and linear/quadratic self-speculation, identical):") >= 3


def test_generate_defaults_to_the_bundled_model_and_linear_spec(capsys):
    rc, out, err = _run(capsys, "generate", "--prompt", "def main():\n", "--max-new-tokens", "8", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "linear-spec" and len(doc["results"][0]["tokens"]) >= 8


def test_generate_corrupt_checkpoint_is_one_line(tmp_path, ckpt, capsys):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(ckpt, d)
    (d / "model.safetensors").write_bytes(b"\xff" * 32)
    rc, out, err = _run(capsys, "generate", "--model", str(d), "--prompt-ids", "1,2", "--mode", "ar")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "model.safetensors" in err and "not a readable safetensors file" in err



def _help(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv,env,needle", [
    pytest.param(["--backend", "cuda"], {}, "backend 'cuda'", id="backend-cuda"),
    pytest.param([], {"TRIDIFF_BACKEND": "cuda"}, "TRIDIFF_BACKEND=cuda", id="env-cuda"),
    pytest.param([], {"TRIDIFF_BACKEND": "gpu"}, "TRIDIFF_BACKEND: expected one of", id="env-unknown"),
])
def test_a_backend_that_cannot_serve_is_one_line(ckpt, capsys, monkeypatch, argv, env, needle):
    """A backend that cannot take a CPU model (cuda: not built, or CPU tensors) is a bad
    argument like any other: one line on stderr, exit status 2, no traceback."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rc, out, err = _run(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,2,3", "--mode", "ar",
                        "--max-new-tokens", "2", "--device", "cpu", *argv)
    assert rc == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_every_backend_is_offered(ckpt, capsys):
    """--backend offers auto and every backend of the dispatcher (sdpa: what auto runs
    attention on, on CPU), and a named one runs."""
    from tridiff import _dispatch

    text = _help(capsys, "generate")
    offered = text.split("--backend {", 1)[1].split("}", 1)[0].split(",")
    assert offered == ["auto", *_dispatch.BACKENDS]
    rc, out, err = _run(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,2,3", "--mode", "linear-spec",
                        "--max-new-tokens", "4", "--block-length", "4", "--device", "cpu", "--backend", "sdpa",
                        "--json")
    assert rc == 0, err
    assert len(json.loads(out)["results"][0]["tokens"]) >= 4


def test_forced_sdpa_generates_with_the_bundled_model(capsys, monkeypatch):
    """The issue's reproduction: TRIDIFF_BACKEND=sdpa tridiff generate --prompt x."""
    monkeypatch.setenv("TRIDIFF_BACKEND", "sdpa")
    rc, out, err = _run(capsys, "generate", "--prompt", "x", "--max-new-tokens", "4", "--mode", "ar")
    assert rc == 0 and "Traceback" not in err, err
    assert "ids:" in out


def test_block_defaults_name_the_model_block_size(capsys):
    """The block defaults come from the model (the bundled one's is 16, the config
    class's 32): the help says so instead of printing a number."""
    from tridiff import models
    from tridiff.config import ModelConfig

    bundled = ModelConfig.from_json(os.path.join(models.path(), "config.json")).block_length
    for command, option in (("generate", "--block-length"), ("demo", "--max-new-tokens")):
        text = _help(capsys, command)
        entry = text.rsplit(option, 1)[1].split(" --", 1)[0]   # the options list, not the usage
        assert "block_size" in entry, (command, entry)
        assert not any(str(n) in entry.split() or f"({n})" in entry for n in {32, bundled}), (command, entry)


def test_demo_report_says_identical_only_when_it_is():
    """The demo's report from made-up results: the second prompt's quadratic completion
    differs from AR, so that prompt's AR heading names only linear as identical, the
    quadratic completion is printed on its own, its table row says != AR, the report is
    not ok; the rows-per-forward figures follow the block length (4 here, not 16)."""
    from types import SimpleNamespace

    from tridiff.demo import report

    def result(tokens, nfe, iterations=0, mean_accepted=None):
        return SimpleNamespace(tokens=tokens, nfe=nfe, iterations=iterations, mean_accepted=mean_accepted)

    ar = [list(range(10, 21)), list(range(30, 41))]   # max_new_tokens + L - 1 = 11 tokens
    results = {"ar": [result(t, 11) for t in ar],
               "diffusion": [result([7] * 8, 5), result([8] * 8, 6)],
               "linear-spec": [result(ar[0][:8], 4, 3, 2.5), result(ar[1][:9], 5, 3, 3.0)],
               "quadratic-spec": [result(ar[0][:8], 3, 2, 4.0), result(ar[1][:7] + [99], 3, 2, 4.0)]}
    prompts = [{"source": "a.py", "text": "def a():\n"}, {"source": "b.py", "text": "def b():\n"}]
    text, ok = report(prompts, results, dict.fromkeys(results, 1.0), block=4, max_new_tokens=8,
                      decode=lambda ids: " ".join(map(str, ids)))
    assert not ok
    first, second = text.split("=== prompt 2")
    assert "--- AR (and linear/quadratic self-speculation, identical):\n10 11 12 13 14 15 16 17\n" in first
    assert "differs" not in first
    assert "--- AR (and linear self-speculation, identical):\n30 31 32 33 34 35 36 37\n" in second
    assert "--- quadratic self-speculation (differs from AR):\n30 31 32 33 34 35 36 99\n" in second
    assert "linear/quadratic" not in second
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] and
            line.split()[0] in MODES and len(line.split()) >= 6}
    assert rows["linear-spec"][-2:] == ["==", "AR"] and rows["quadratic-spec"][-2:] == ["!=", "AR"]
    assert "L(L+1) = 20 at block 4" in text and "memory-bound 4-row forward" in text and "272" not in text
    same = dict(results, **{"quadratic-spec": [result(ar[0][:8], 3, 2, 4.0), result(ar[1][:8], 3, 2, 4.0)]})
    text, ok = report(prompts, same, dict.fromkeys(results, 1.0), block=4, max_new_tokens=8,
                      decode=lambda ids: " ".join(map(str, ids)))
    assert ok and text.count("--- AR (and linear/quadratic self-speculation, identical):") == 2
