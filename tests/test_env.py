"""`python -m tridiff.env`: the JSON report has every documented key with the right
types and agrees with tridiff._ext; the text report names both extensions."""
import json
import os
import subprocess
import sys

from tridiff import _ext

KEYS = ["torch", "cuda", "triton", "cupy", "cuda_extension_built", "cuda_extension_error",
        "cpu_extension_built", "cpu_extension_error", "gpu", "backend_forced", "backend_forced_error"]


def _run(*args, env=None):
    env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "tridiff.env", *args], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_env_json_keys():
    report = json.loads(_run("--json", env={"TRIDIFF_BACKEND": ""}))
    missing = [k for k in KEYS if k not in report]
    assert not missing, missing
    import torch

    assert report["torch"] == torch.__version__
    assert report["cuda"] == torch.version.cuda
    for name, key in (("cpp", "cpu_extension"), ("cuda", "cuda_extension")):
        assert isinstance(report[f"{key}_built"], bool)
        assert report[f"{key}_error"] == _ext.reason(name)
        if report[f"{key}_error"] is None:
            assert report[f"{key}_built"]
    assert (report["gpu"] is None) == (not torch.cuda.is_available())
    assert report["backend_forced"] is None and report["backend_forced_error"] is None


def test_env_reports_the_forced_backend():
    """TRIDIFF_BACKEND is reported, a value tridiff refuses with the reason (no traceback)."""
    report = json.loads(_run("--json", env={"TRIDIFF_BACKEND": "sdpa"}))
    assert report["backend_forced"] == "sdpa" and report["backend_forced_error"] is None
    assert "TRIDIFF_BACKEND=sdpa" in _run(env={"TRIDIFF_BACKEND": "sdpa"})
    report = json.loads(_run("--json", env={"TRIDIFF_BACKEND": "gpu"}))
    assert report["backend_forced"] is None
    error = report["backend_forced_error"]
    assert "TRIDIFF_BACKEND: expected one of" in error and "'gpu'" in error


def test_env_text():
    out = _run()
    assert "tridiff._cpp" in out and "tridiff._cuda" in out and "torch" in out
