"""What a wheel of tridiff carries: the Triton kernels, and the CUDA headers the cupy
path compiles at run time (an installed tridiff has no csrc/ checkout beside it)."""
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, TRIDIFF_BUILD_CPP="0", TRIDIFF_BUILD_CUDA="0")  # the Python + data part only
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(ROOT),
                    "-w", str(out)], check=True, env=env, cwd=out)
    (whl,) = out.glob("tridiff-*.whl")
    return whl


def _include_closure(root: Path, start: str):
    """Every file reached from `start` through #include "..." (relative to the includer)."""
    seen, todo = set(), [Path(start)]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        text = (root / rel).read_text()
        for inc in re.findall(r'^\s*#include\s+"([^"]+)"', text, flags=re.M):
            todo.append(Path(os.path.normpath(rel.parent / inc)))
    return seen


def test_wheel_ships_kernels_and_cupy_headers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for py in (ROOT / "kernels").glob("*.py"):
        assert f"tridiff/kernels/{py.name}" in names
    needed = _include_closure(ROOT / "csrc", "cupy/cupy_kernels.cuh")
    assert len(needed) > 5
    missing = [str(p) for p in needed if f"tridiff/_csrc/{p.as_posix()}" not in names]
    assert not missing, f"headers the cupy path includes but the wheel lacks: {missing}"
    assert not [n for n in names if n.endswith((".so", ".pyd"))], "compiled with TRIDIFF_BUILD_*=0"


def test_installed_cupy_path_finds_its_headers(wheel, tmp_path):
    """Installed from the wheel (no source tree beside it), tridiff.cupy resolves its
    headers inside the package."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    env = {k: v for k, v in os.environ.items() if k != "TRIDIFF_CSRC"}
    env["PYTHONPATH"] = str(target)
    code = "import tridiff, tridiff.cupy as tc; print(tridiff.__file__); print(tc.csrc_dir())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path).stdout.split("\n")
    assert out[0].startswith(str(target)), out
    assert out[1] == str(target / "tridiff" / "_csrc"), out
