"""CPU-only checks of the CUDA sources with nvcc (no GPU): what a launch failure reports.

Builds real csrc/ translation units with the flags of csrc_build.py for sm_90a.
Skipped without nvcc.
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

pytestmark = pytest.mark.compile_check  # CPU-only: not part of the GPU suite's test stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
NVCC = os.environ.get("NVCC") or shutil.which("nvcc")
ARCH = ["-gencode", "arch=compute_90a,code=sm_90a"]
FLAGS = ["-O3", "-std=c++17", *ARCH, f"-I{CSRC}"]  # csrc_build.py's nvcc flags, for H100/H200
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (set NVCC or put it on PATH)")


def _nvcc(*args, cwd):
    r = subprocess.run([NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def _cudart():
    """libcudart's folder and file, from the CUDA root nvcc itself reports (it may be a wrapper)."""
    dry = subprocess.run([NVCC, "--dryrun", "-c", "x.cu"], capture_output=True, text=True).stderr
    top = re.search(r"^#\$ TOP=(.+)$", dry, re.M)
    for sub in ("lib64", "lib") if top else ():
        found = sorted(glob.glob(os.path.join(top.group(1).strip(), sub, "libcudart.so*")))
        if found:
            return os.path.dirname(found[0]), found[0]
    pytest.skip(f"libcudart not found next to nvcc ({NVCC})")


# ---- 4. a failed launch names the kernel and the CUDA error -----------------------------------

_PROBE = """
#include "bind.h"
// The binding path of tridiff._cuda for one real launcher (csrc/kv/kv_launch.cu).
PYBIND11_MODULE(td_launch_probe, m) {
  m.def("paged_reserve", [] {
    td::PagedArgs a{};
    td::check(td::CudaImpl::paged_reserve(a, nullptr), "paged");
  });
}
"""


@needs_nvcc
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the probe's launch would succeed")
def test_launch_failure_names_kernel_and_cuda_error(tmp_path):
    """Without a usable device every launch fails; the exception must say which kernel and
    carry the CUDA error's name and cudaGetErrorString text, not only 'kernel launch failed'."""
    pybind11 = pytest.importorskip("pybind11")
    lib, cudart = _cudart()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (tmp_path / "probe.cpp").write_text(_PROBE)
    _nvcc("-c", os.path.join(CSRC, "kv", "kv_launch.cu"), "-o", "kv.o", "-Xcompiler", "-fPIC", *FLAGS,
          cwd=tmp_path)
    _nvcc("-shared", "-Xcompiler", "-fPIC", "-std=c++17", f"-I{CSRC}", f"-I{pybind11.get_include()}",
          f"-I{sysconfig.get_paths()['include']}", "probe.cpp", "kv.o", f"-L{lib}", "-lcudart",
          f"-Xlinker=-rpath,{lib}", "-o", f"td_launch_probe{suffix}", cwd=tmp_path)
    code = "import td_launch_probe as p\ntry:\n    p.paged_reserve()\nexcept RuntimeError as e:\n    print(e)\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    msg = r.stdout.strip()
    m = re.fullmatch(r"tridiff paged: kernel launch failed: paged_reserve_kernel: (cudaError\w+) \((.+)\)", msg)
    assert m, msg
    rt = ctypes.CDLL(cudart)
    rt.cudaGetErrorName.restype = rt.cudaGetErrorString.restype = ctypes.c_char_p
    texts = {rt.cudaGetErrorName(c).decode(): rt.cudaGetErrorString(c).decode() for c in range(1024)}
    assert texts.get(m.group(1)) == m.group(2), msg
