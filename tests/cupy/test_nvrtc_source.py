"""The cupy path on a machine without a GPU: what can be proved before any launch.

1. The CUDA source cupy.RawModule compiles (csrc/cupy/cupy_kernels.cuh + the csrc/
   kernel bodies) compiles with NVRTC, through cupy's own compiler entry point, to a
   cubin for each architecture we ship for, and every template instance the launchers
   ask for is lowered.
2. Every launcher passes arguments the kernel's parameter list can read: cupy hands a
   kernel one pointer per argument and the kernel reads sizeof(param) bytes from it, so
   an int64 scalar where the kernel wants `double`, a float32 array where it wants
   `long long*`, or a missing argument corrupts silently on a GPU. The launchers run
   against a stand-in cupy (numpy-backed arrays) and a recorder for the kernels; the
   recorded arguments are checked against the demangled kernel signature.
On a GPU, tests/cuda/test_cupy_cuda.py compares results with the torch path.
"""
import functools
import re
import shutil
import subprocess

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="cupy not installed (pip install tridiff[cupy])")

import tridiff.cupy as tc  # noqa: E402
from tests.cupy.support import FakeArray  # noqa: E402
from tridiff.cupy._source import SOURCE, name_expressions  # noqa: E402


def _nvrtc_reason():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - any failure means: no NVRTC to test with
        return f"NVRTC not loadable (pip install nvidia-cuda-nvrtc): {exc}"
    if tc.csrc_dir() is None:
        return "kernel sources (csrc/) not found"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_reason() is not None, reason=str(_nvrtc_reason()))


@functools.lru_cache(maxsize=None)
def _compile(arch: str):
    """(cubin bytes, {name expression: lowered name}) via cupy's NVRTC path. cupy asks
    the device for the architecture; with no device we name it."""
    from cupy.cuda import compiler

    saved = compiler._get_arch_for_options_for_nvrtc
    compiler._get_arch_for_options_for_nvrtc = lambda arch=None, _a=arch: (f"-arch=sm_{_a}", "cubin")
    try:
        return compiler.compile_using_nvrtc(SOURCE, options=tc.nvrtc_options(), arch=arch,
                                            name_expressions=name_expressions(), cache_in_memory=True)
    finally:
        compiler._get_arch_for_options_for_nvrtc = saved


@needs_nvrtc
@pytest.mark.parametrize("arch", ["80", "90a"])
def test_source_compiles_with_nvrtc(arch):
    cubin, mapping = _compile(arch)
    assert cubin[:4] == b"\x7fELF", "NVRTC did not produce a cubin"
    names = name_expressions()
    assert sorted(mapping) == sorted(names)
    for name in names:
        assert mapping[name].startswith("_Z"), (name, mapping[name])


# --- launcher ABI -------------------------------------------------------------------------------

def _params(lowered: str):
    """Parameter types of a mangled kernel name, via c++filt."""
    text = subprocess.run(["c++filt", lowered], capture_output=True, text=True, check=True).stdout.strip()
    params, depth, cur, start = [], 0, "", None
    for i, ch in enumerate(text):  # the parameter list opens at the first "(" outside template brackets
        if start is None:
            depth += (ch == "<") - (ch == ">")
            if ch == "(" and depth == 0:
                start, depth = i, 0
            continue
        if ch in ",)" and depth == 0:
            if cur.strip():
                params.append(cur.strip())
            cur = ""
            if ch == ")":
                break
            continue
        depth += (ch in "<(") - (ch in ">)")
        cur += ch
    assert start is not None, text
    return params


# pointee C type -> numpy dtypes an array may have; char/void take any bytes
_POINTEE = {"int": {np.int32}, "long long": {np.int64}, "double": {np.float64}, "bool": {np.bool_},
            "unsigned char": {np.bool_, np.uint8},
            "float": {np.float32}}
_SCALAR = {"long long": np.int64, "double": np.float64, "int": np.int32, "float": np.float32}


def _check_call(name, grid, block, args, shared_mem, mapping):
    assert name in mapping, f"launcher asks for {name!r}, which _source.name_expressions() does not instantiate"
    params = _params(mapping[name])
    assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters {params}"
    for i, (arg, param) in enumerate(zip(args, params)):
        where = f"{name} argument {i} (parameter {param!r})"
        if param.endswith("*"):
            base = re.sub(r"\bconst\b", "", param[:-1]).strip()
            if isinstance(arg, np.uint64):  # a null pointer: 8 bytes of zero
                assert int(arg) == 0, where
                continue
            assert isinstance(arg, FakeArray), f"{where}: expected an array, got {type(arg).__name__}"
            if base in _POINTEE:
                assert arg.dtype.type in _POINTEE[base], f"{where}: array of {arg.dtype}"
            else:
                assert base in ("char", "void"), f"{where}: unknown pointee"
        else:
            want = _SCALAR.get(param)
            assert want is not None, f"{where}: unexpected parameter type"
            assert type(arg) is want, f"{where}: passed {type(arg).__name__}, the kernel reads {param}"
    assert len(grid) <= 3 and all(0 < int(g) < 2**31 for g in grid), (name, grid)
    assert grid[1:] == () or all(int(g) < 65536 for g in grid[1:]), (name, grid)
    assert len(block) <= 3 and 0 < int(np.prod(block)) <= 1024, (name, block)
    assert 0 <= shared_mem <= 48 * 1024, (name, shared_mem)  # above 48 KB needs an opt-in cupy does not make


def _kv(paged, dtype=np.float16, B=3, T=4, H=2, D=64, Tmax=32, page=8, layers=None):
    rng = np.random.default_rng(0)
    lead = (layers,) if layers else ()
    if paged:
        max_pages = Tmax // page
        shape, table = (B * max_pages, page, H, D), FakeArray(rng.permutation(B * max_pages).astype(np.int32)
                                                               .reshape(B, max_pages))
    else:
        shape, table = lead + (B, Tmax, H, D), None
    kc, vc = FakeArray(np.zeros(shape, dtype)), FakeArray(np.zeros(shape, dtype))
    k, v = FakeArray(np.zeros((B, T, H, D), dtype)), FakeArray(np.zeros((B, T, H, D), dtype))
    lens = FakeArray(np.array([0, 3, 9][:B], np.int32))
    return kc, vc, k, v, lens, table


@needs_nvrtc
@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils) to read kernel signatures")
@pytest.mark.parametrize("dtype", [pytest.param(np.float16, id="f16"),
                                   pytest.param(np.float32, id="f32"),
                                   pytest.param(np.int8, id="i8")])
@pytest.mark.parametrize("paged", [pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
def test_kv_launchers_match_kernel_signatures(launched, paged, dtype):
    _, mapping = _compile("90a")
    kc, vc, k, v, lens, table = _kv(paged, dtype)
    q_lens = FakeArray(np.array([4, 1, 0], np.int32))
    tc.kv_append_(kc, vc, k, v, lens, q_lens, table)
    src = FakeArray(np.array([[0, 2, -1], [1, -1, -1], [2, 1, 0]], np.int32))
    tc.kv_compact_(kc, vc, lens, src, table)
    if not paged:
        kc5, vc5, *_ = _kv(False, dtype, layers=2)
        tc.kv_compact_(kc5, vc5, lens, src, None)
    names = [c[0] for c in launched]
    assert any(n.startswith("cupy_kv_write<") for n in names) and "cupy_kv_commit" in names
    assert sum(n.startswith("cupy_kv_compact<") for n in names) == (1 if paged else 2)
    for call in launched:
        _check_call(*call, mapping)


@needs_nvrtc
@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils) to read kernel signatures")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("temperature", [pytest.param(0.0, id="greedy"), pytest.param(0.7, id="sampled")])
def test_sampling_launchers_match_kernel_signatures(launched, dtype, temperature):
    _, mapping = _compile("90a")
    B, n, V = 2, 3, 5000
    np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    bf16 = dtype == "bfloat16"
    seed = FakeArray(np.array([1, 2], np.int64)) if temperature else None
    offset = FakeArray(np.array([0, 7], np.int64)) if temperature else None
    tc.sample(FakeArray(np.zeros((B, 1, V), np_dtype)), temperature, seed, offset, bf16=bf16)
    draft = FakeArray(np.zeros((B, n), np.int64))
    lens = FakeArray(np.array([5, 9], np.int32))
    tc.accept_linear(FakeArray(np.zeros((B, n + 1, V), np_dtype)), draft, lens, 2, temperature, seed, offset, bf16=bf16)
    if not temperature:
        tc.accept_quadratic(FakeArray(np.zeros((B, n * (n + 1), V), np_dtype)), draft, lens, 2, bf16=bf16)
    names = [c[0] for c in launched]
    kind = 1 if temperature else 0
    assert any(n.startswith(f"cupy_row_scan<{kind},") for n in names)
    assert "cupy_sample_finish" in names and "cupy_accept_finish<false>" in names
    for call in launched:
        _check_call(*call, mapping)


def test_import_and_status_without_a_gpu():
    """With cupy installed but no usable device, tridiff.cupy imports and says why it
    cannot run, and a launcher raises that reason instead of crashing."""
    st = tc.status()
    assert set(st) == {"version", "available", "error"}
    if st["available"]:
        pytest.skip("a GPU is usable here; tests/cuda/test_cupy_cuda.py covers this machine")
    assert st["error"] and tc.unavailable() == st["error"]
    with pytest.raises(RuntimeError, match="tridiff.cupy is unavailable"):
        tc.sample(None)
