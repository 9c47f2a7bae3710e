"""`tridiff serve` from the command line: a real subprocess on the bundled model answers
/health, /v1/models and a completion, and shuts down without a traceback on SIGTERM; bad options exit 2 with
one line; without the serve stack tridiff still imports and `tridiff serve` says what
to install."""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.serve.support import wait_for
from tridiff.cli import main

httpx = pytest.importorskip("httpx", reason="raw HTTP checks use httpx")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB = ("starlette", "uvicorn", "jinja2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_subprocess_answers_and_shuts_down():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tridiff", "serve", "--port", str(port), "--max-rows", "2",
                             "--max-context", "256", "--device", "cpu", "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=120, what="tridiff serve to answer /health")
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "stdlib-7m"
        r = httpx.post(url + "/v1/completions", json={"prompt": "import os\n", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200
        doc = r.json()
        assert len(doc["choices"][0]["token_ids"]) == 4 and doc["usage"]["strategy"] == "auto"  # the default
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal it caught (killed by SIGTERM)
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in err, err


@pytest.mark.parametrize("argv,fragment", [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--max-rows", "0"], "--max-rows"),
    (["serve", "--max-queue", "-1"], "--max-queue"),
    (["serve", "--strategy", "beam"], "--strategy"),
    (["serve", "--model", "./no/such/dir"], "no such directory"),
])
def test_bad_options_exit_2_with_one_line(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_without_the_serve_stack():
    """With starlette, uvicorn and jinja2 unimportable, tridiff, its command line, the
    engine and tridiff.serve's framework-free modules still import (so none of them
    imports a web framework), and `tridiff serve` says what to install."""
    code = textwrap.dedent(f"""
        import sys
        for name in {WEB!r}:
            sys.modules[name] = None  # unimportable
        import tridiff, tridiff.cli, tridiff.generate, tridiff.engine
        import tridiff.serve, tridiff.serve.protocol, tridiff.serve.text, tridiff.serve.loop
        assert tridiff.cli._parser().parse_args(["serve", "--port", "1"]).port == 1
        print(tridiff.cli.main(["serve", "--port", "0"]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2" and "pip install tridiff[serve]" in res.stderr
