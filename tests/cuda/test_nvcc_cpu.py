"""CPU-only checks of the CUDA sources with nvcc (no GPU): what a launch failure reports,
and that the sampling/acceptance kernels fuse no multiply-add of their own.

Both build real csrc/ translation units with the flags of csrc_build.py for sm_90a.
Skipped without nvcc (and, for the disassembly, without cuobjdump: CUDA's or triton's).
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter

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


def _cuobjdump():
    found = shutil.which("cuobjdump") or (NVCC and shutil.which("cuobjdump", path=os.path.dirname(NVCC)))
    if found:
        return found
    try:
        from triton import knobs
        return knobs.nvidia.cuobjdump.path
    except Exception as exc:  # triton missing or built without its NVIDIA tools
        pytest.skip(f"needs cuobjdump (CUDA's or triton's): {exc}")


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


# ---- 5. no multiply-add contraction in the sampling / acceptance kernels -------------------------

# fp32/fp64 arithmetic; the half-precision HFMA2 is left out: ptxas also uses it to move
# constants into registers (HFMA2 R, -RZ, RZ, imm), and these kernels do no fp16 math.
FP_OPS = ("DFMA", "DMUL", "DADD", "FFMA", "FMUL", "FADD")


def _fp_ops_per_kernel(cuobjdump, cubin):
    out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    kernels, current = {}, None
    for line in out.splitlines():
        name = re.search(r"Function : (\S+)", line)
        if name:
            current = kernels.setdefault(name.group(1), Counter())
        elif current is not None:
            op = re.search(r"\b(" + "|".join(FP_OPS) + r")\b", line)
            if op:
                current[op.group(1)] += 1
    return kernels


@needs_nvcc
def test_accept_kernels_fuse_no_multiply_add(tmp_path):
    """csrc/accept/accept_launch.cu (every row-scan, acceptance and sampling kernel) built as
    usually (nvcc contracts a * b + c by default) and with -fmad=false gives the same
    floating-point instructions per kernel: the code rounds every product and sum itself
    (mul_rn / add_rn / sub_rn), as torch and the Triton kernels do. The CUDA math library is
    left outside (TD_OPAQUE_MATH): its own fused steps are the ones torch's kernels run."""
    cuobjdump = _cuobjdump()
    src = os.path.join(CSRC, "accept", "accept_launch.cu")
    for name, extra in (("default", []), ("nofma", ["-fmad=false"])):
        _nvcc("-cubin", "-rdc=true", "-DTD_OPAQUE_MATH", *extra, *FLAGS, src, "-o", f"{name}.cubin", cwd=tmp_path)
    fused = _fp_ops_per_kernel(cuobjdump, str(tmp_path / "default.cubin"))
    unfused = _fp_ops_per_kernel(cuobjdump, str(tmp_path / "nofma.cubin"))
    assert fused.keys() == unfused.keys()
    assert any("row_scan_kernel" in k for k in fused) and any("rejection_coins_kernel" in k for k in fused)
    differ = {k: (dict(fused[k]), dict(unfused[k])) for k in fused if fused[k] != unfused[k]}
    assert not differ, "\n".join(f"{k}: default {a} vs -fmad=false {b}" for k, (a, b) in differ.items())
