"""The C++ CPU build's floating-point code generation, read from the compiled objects:
  * with the extension's compile flags (csrc_build.CPP_COMPILE_ARGS) and an FMA target
    (-march=haswell, as -march=native would add on most x86 machines), the units other than
    the GEMM panels hold no fused multiply-add: nothing is contracted behind the source's
    back (the bit-exact paths round every product and sum like torch);
  * decoder_cpu.cpp holds AVX2 FMAs (the panels' FMA copy is really compiled for AVX2+FMA,
    so decoder_gemm_build() saying "avx2+fma" is true) with every compiler found (g++,
    clang++: Clang ignores `#pragma GCC target`, which the panels no longer use).
"""
import os
import platform
import re
import shutil
import subprocess

import pytest

import csrc_build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X86 = platform.machine() in ("x86_64", "AMD64", "i686")
FMA = re.compile(r"\bv?fn?m(add|sub)[0-9]{3}[ps][sd]\b")
pytestmark = [pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)"),
              pytest.mark.skipif(not X86, reason="the checks read x86 instructions")]


def compiler(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def disassemble(cxx, source, extra, tmp_path):
    obj = tmp_path / (os.path.basename(source) + ".o")
    flags = [f for f in csrc_build.CPP_COMPILE_ARGS if f != "-fvisibility=hidden"]
    subprocess.run([cxx, *flags, *extra, "-fPIC", "-Icsrc", "-c", source, "-o", str(obj)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("source", ["csrc/cpu/cpu_ops.cpp", "csrc/cpu/attention_cpu.cpp"])
def test_no_contraction_outside_the_panels(source, tmp_path):
    asm = disassemble(compiler("g++"), source, ["-march=haswell"], tmp_path)
    fused = sorted({m.group(0) for m in FMA.finditer(asm)})
    assert not fused, f"{source} has contracted multiply-adds under -march=haswell: {fused}"


@pytest.mark.parametrize("cxx", ["g++", "clang++"])
def test_fma_panels_are_avx2_fma_with_every_compiler(cxx, tmp_path):
    asm = disassemble(compiler(cxx), "csrc/cpu/decoder_cpu.cpp", [], tmp_path)
    ymm_fma = [line for line in asm.splitlines() if FMA.search(line) and "%ymm" in line]
    assert ymm_fma, f"{cxx}: no AVX2 FMA instruction in decoder_cpu.cpp's panels"
