"""The C++ bf16 and int4 panels (csrc/cpu/decoder_qgemm.inc) as the cpp backend's
quant_linear and mixed_linear: every format x symmetric/asymmetric x group 64/128 x rows
{1, 2, 5, 17, 20, 33} x N that no tile divides, against the plain-PyTorch reference
(dequantize, then one matmul in fp64) with a dtype-aware bound; a row's result does not
depend on the rows sharing its call; refused inputs leave the output untouched. Every
build of the panels runs them: the one this CPU picks (AVX-512 where it has avx512f and
avx512bw; its int4 panels take K % 128 == 0, K = 192 runs the AVX2 copy) in this process,
the AVX2 and baseline builds (TRIDIFF_CPU_GEMM=avx2 / base) in fresh processes.

The GPTQ fixtures are tridiff.quant.gptq's (GPTQModel's packing and zero-point words
as its source defines them; the package itself is not installed here)."""
import os
import platform
import subprocess
import sys

import pytest
import torch

from tests.cpp.support import REASON
from tests.quant.support import zero_point_case
from tridiff import _ext, ops
from tridiff.quant import gptq
from tridiff.quant.packed import transposed_codes
from tridiff.reference.quant import quant_linear as reference

pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

ROWS = [1, 2, 5, 17, 20, 33]   # AVX-512 int4 row tiles 16 / 4 / 1: 17 = 16 + 1, 20 = 16 + 4
EPS = torch.finfo(torch.float32).eps


def packed(N, K, group, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = gptq.quantize_rtn(torch.randn(N, K, generator=g), 4, group, sym=sym)
    return q.qweight, q.scales, gptq.v2_words(q.qzeros, 4, "gptq")


def bound(x, w_t):
    """A dtype-aware bound per output: fp32 sums of K products, each |x_k w_k| rounded and
    accumulated: 2 sqrt(K) eps sum_k |x_k| |w_k| (fp64 computed), plus one ulp of the
    largest |y| for the final combination."""
    mag = x.double().abs() @ w_t.double().abs()
    K = x.shape[-1]
    return 2 * K ** 0.5 * EPS * mag + EPS * mag.max()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("N", [40, 8])          # 40: 2.5 chunks of 16 (the parallel split), 5 tiles of 8
@pytest.mark.parametrize("group,K", [(128, 256), (64, 192), (64, 256), (128, 384), (256, 512)])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("layout", ["cpu", "gptq"])
def test_int4_panels_match_the_reference(sym, group, K, N, rows, layout):
    qweight, scales, zeros = packed(N, K, group, sym, seed=rows)
    if layout == "cpu":   # the layout the packed modules hold on CPU (a transposed view, same values)
        qweight = transposed_codes(qweight)
        assert not qweight.is_contiguous() and qweight.t().is_contiguous()
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(7))
    got = ops.quant_linear(x, qweight, scales, zeros, bits=4, group_size=group, backend="cpp")
    want = reference(x.double(), qweight, scales, zeros, 4, group)
    w_t = gptq.dequantize(qweight, scales, zeros, 4, group, dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    err = (got.double() - want).abs()
    assert (err <= bound(x, w_t)).all(), f"max abs error {err.max().item()}"


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("N,K", [(37, 256), (5, 100), (19, 7), (8, 48)])   # K tails of 4, 7 (no 16-block), 0
def test_bf16_panels_match_the_reference(N, K, rows):
    g = torch.Generator().manual_seed(N * K + rows)
    w = torch.randn(N, K, generator=g).to(torch.bfloat16)
    x = torch.randn(rows, K, generator=g)
    got = ops.mixed_linear(x, w, backend="cpp")
    want = x.double() @ w.double().t()   # the reference's math in fp64 (bf16 -> wider is exact)
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    err = (got.double() - want).abs()
    assert (err <= bound(x, w.t())).all(), f"max abs error {err.max().item()}"
    ref32 = ops.mixed_linear(x, w, backend="torch")   # the reference itself, for its own bound
    assert ((ref32.double() - want).abs() <= bound(x, w.t())).all()


def test_int4_zero_points_and_scales_matter():
    """The panels read each group's own scale and zero point: a weight whose codes are all
    8 computes -s (z - 8) sum_g x per group, exactly what the reference computes."""
    qweight, zeros, s, z, x, group = zero_point_case()
    got = ops.quant_linear(x, qweight, s, zeros, bits=4, group_size=group, backend="cpp")
    xs = x.double().view(3, -1, group).sum(-1)                      # [3, G]
    want = xs @ (s.double() * (8 - z).double())                      # [3, N]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("fmt,group", [("int4", 64), ("int4", 128), ("bf16", 0)])
def test_a_row_does_not_depend_on_the_rows_sharing_its_call(fmt, group):
    """Every output is summed in one order whichever tile computes it: the 16-, 8- or 4-row
    tiles of a 17-row call and the 1-row tile of a solo call give the same bits."""
    K, N = 256, 48
    x = torch.randn(17, K, generator=torch.Generator().manual_seed(11))
    if fmt == "int4":
        qweight, scales, zeros = packed(N, K, group, sym=False)
        f = lambda a: ops.quant_linear(a, qweight, scales, zeros, bits=4, group_size=group, backend="cpp")  # noqa: E731
    else:
        w = torch.randn(N, K, generator=torch.Generator().manual_seed(12)).to(torch.bfloat16)
        f = lambda a: ops.mixed_linear(a, w, backend="cpp")  # noqa: E731
    whole = f(x)
    for r in (0, 5, 16):
        assert torch.equal(whole[r], f(x[r:r + 1].clone())[0]), r


def test_refused_weights_leave_the_output_untouched():
    """The kernel's own rules (csrc/cpu/decoder.h proj_weight_ok), before its first write:
    a group size that is not a multiple of 64 or does not divide K, N not a multiple of 8,
    a missing scale pointer, an unknown format."""
    lib = _ext.load("cpp")
    K, N = 256, 16
    qweight, scales, zeros = packed(N, K, 64, sym=True)
    codes = qweight.t().contiguous()
    x = torch.randn(2, K)
    good = [2, scales.data_ptr(), zeros.data_ptr(), 64]
    bad = [([2, scales.data_ptr(), zeros.data_ptr(), 96], N), ([2, scales.data_ptr(), zeros.data_ptr(), 512], N),
           (good, 12), ([2, 0, zeros.data_ptr(), 64], N), ([7, 0, 0, 0], N)]
    for meta, n in bad:
        out = torch.full((2, N), float("nan"))
        with pytest.raises(RuntimeError, match="proj_linear"):
            lib.proj_linear(codes.data_ptr(), meta, x.data_ptr(), 2, K, n, out.data_ptr(), 1)
        assert torch.isnan(out).all()
    out = torch.full((2, N), float("nan"))
    lib.proj_linear(codes.data_ptr(), good, x.data_ptr(), 2, K, N, out.data_ptr(), 1)   # the same call, valid
    assert not torch.isnan(out).any()


BAD = [
    (dict(scales=torch.zeros(3, 16, dtype=torch.float16)), "scales"),   # wrong scale shape
    (dict(x=torch.zeros(2, 200)), "group_size"),                        # K not a multiple of the group
    (dict(qzeros=torch.zeros(4, 3, dtype=torch.int32)), "qzeros"),      # N mismatch
    (dict(weight=torch.zeros(16, 200, dtype=torch.bfloat16)), "weight"),
]


@pytest.mark.parametrize("change,arg", BAD, ids=[a for _, a in BAD])
def test_bad_inputs_name_the_argument(change, arg):
    qweight, scales, zeros = packed(16, 256, 64, sym=True)
    a = dict(x=torch.zeros(2, 256), qweight=qweight, scales=scales, qzeros=zeros,
             weight=torch.zeros(16, 256, dtype=torch.bfloat16))
    a.update(change)
    with pytest.raises(ops.TridiffInputError, match=rf"^{arg}: expected"):
        if arg == "weight":
            ops.mixed_linear(a["x"], a["weight"], backend="cpp")
        else:
            ops.quant_linear(a["x"], a["qweight"], a["scales"], a["qzeros"], bits=4, group_size=64, backend="cpp")


def test_unsupported_formats_fall_back_with_a_reason():
    """auto picks the reference where the panels do not apply (8-bit codes, fp16 weights,
    fp64 activations), and naming cpp says why."""
    from tridiff import _dispatch
    q = gptq.quantize_rtn(torch.randn(16, 256), 8, 64)
    z = gptq.v2_words(q.qzeros, 8, "gptq")
    x = torch.randn(2, 256)
    assert "4-bit" in _dispatch.why_not("cpp", "quant_linear", (x, q.qweight, q.scales, z, 8, 64), {})
    assert _dispatch.resolve("quant_linear", "auto", x.device, (x, q.qweight, q.scales, z, 8, 64), {}) == "torch"
    w16 = torch.randn(16, 256).half()
    assert "bfloat16" in _dispatch.why_not("cpp", "mixed_linear", (x, w16), {})
    assert "float32" in _dispatch.why_not("cpp", "mixed_linear", (x.double(), w16.bfloat16()), {})


def cpu_flags():
    """This CPU's flags (/proc/cpuinfo), or None where they cannot be read (not x86 Linux)."""
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as fh:
        return set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())


def expected_build(forced):
    """The bf16/int4 panels' build decoder_qgemm_build() must name under TRIDIFF_CPU_GEMM=forced."""
    flags = cpu_flags()
    if forced == "base" or not {"avx2", "fma"} <= flags:
        return "baseline"
    if forced == "avx2" or not {"avx512f", "avx512bw"} <= flags:
        return "avx2+fma"
    return "avx512"


def test_reports_the_quantized_panels_build():
    """decoder_qgemm_build() names the build this process runs (the tests above ran it)."""
    if cpu_flags() is None:
        pytest.skip("reads the CPU's flags from /proc/cpuinfo on x86-64")
    assert _ext.load("cpp").decoder_qgemm_build() == expected_build(os.environ.get("TRIDIFF_CPU_GEMM"))


@pytest.mark.parametrize("forced", ["avx2", "base"])
def test_narrower_builds_match_the_reference(forced):
    """TRIDIFF_CPU_GEMM=avx2 / base in a fresh process (the build is chosen once per
    process): the tests above again, on that build."""
    flags = cpu_flags()
    if flags is None:
        pytest.skip("reads the CPU's flags from /proc/cpuinfo on x86-64")
    if forced == "avx2" and not {"avx2", "fma"} <= flags:
        pytest.skip("this CPU has no AVX2+FMA build to force")
    env = dict(os.environ, TRIDIFF_CPU_GEMM=forced)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "not narrower_builds", "-x"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
    probe = "from tridiff import _ext; print(_ext.load('cpp').decoder_qgemm_build())"
    check = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                           cwd=root)
    assert check.stdout.strip() == expected_build(forced)
