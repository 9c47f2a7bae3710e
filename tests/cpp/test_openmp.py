"""One OpenMP runtime per process, and torch's thread count reaches the C++ layer stack.

The extension is built with OpenMP (csrc_build.py links it to the libgomp the torch wheel
ships, where it ships one). Each case runs in a fresh process, importing in one of the
supported orders, then runs ops.decoder_layers_ on the cpp backend and reports:
  * the distinct libgomp files mapped in /proc/self/maps (must be exactly one: two
    runtimes would each keep their own thread pool and thread count);
  * the OpenMP team size of the stack's parallel GEMMs (tridiff._cpp.decoder_last_team_size)
    after torch.set_num_threads(1) and (2), from the main thread and from a new thread.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.cpp.support import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# How the extension can come first or second into a process.
ORDERS = {
    "torch-then-tridiff": "import torch\nimport tridiff.ops\nfrom tridiff import _ext\n_ext.load('cpp')\n",
    "tridiff-ops-first": "import tridiff.ops\nfrom tridiff import _ext\n_ext.load('cpp')\n",
    "extension-before-torch": "import tridiff._cpp\nimport torch\n",
    "extension-loaded-lazily": "import tridiff\nimport torch\n",   # the first op call loads it
}

BODY = r"""
import threading
import torch
from tridiff import _ext, ops
from tests.ops.test_decoder import cast, make_case, run

def team(threads, in_new_thread=False):
    torch.set_num_threads(threads)
    case = cast(make_case(B=2, T=4), torch.float32)   # 8 rows x 256 x 72: over the parallel threshold
    if in_new_thread:
        t = threading.Thread(target=run, args=(case, "cpp"))
        t.start(); t.join()
    else:
        run(case, "cpp")
    return _ext.load("cpp").decoder_last_team_size()

out = {"teams": [team(2), team(1), team(1, True), team(2, True), team(1)]}
with open("/proc/self/maps") as fh:
    out["gomp"] = sorted({line.split()[-1] for line in fh if "libgomp" in line.rsplit("/", 1)[-1]})
print("RESULT " + json.dumps(out))
"""


def run_order(prelude: str) -> dict:
    code = prelude + "import json\n" + BODY
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("order", list(ORDERS))
def test_one_libgomp_and_torch_thread_count(order):
    got = run_order(ORDERS[order])
    assert len(got["gomp"]) == 1, f"libgomp files mapped: {got['gomp']}"
    # set_num_threads(2), (1), (1) then (2) from a new thread, (1): the stack's team follows
    assert got["teams"] == [2, 1, 1, 2, 1], got["teams"]


def test_extension_links_torchs_openmp_runtime():
    """Where the torch wheel ships a libgomp, the extension resolves to that file (not the
    system's), so the two can never be loaded side by side."""
    import torch

    import csrc_build
    found = csrc_build.torch_openmp_library(torch)
    if found is None:
        pytest.skip("this torch ships no libgomp of its own (it uses the system runtime)")
    import tridiff._cpp
    out = subprocess.run(["ldd", tridiff._cpp.__file__], capture_output=True, text=True, check=True).stdout
    resolved = [line.split("=>")[1].split("(")[0].strip() for line in out.splitlines()
                if "libgomp" in line and "=>" in line]
    want = os.path.realpath(os.path.join(*found))
    assert [os.path.realpath(p) for p in resolved] == [want], out
