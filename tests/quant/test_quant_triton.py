"""The Triton int4 dequant-GEMM (kernels/quant_gemm.py) against the reference, in the
interpreter at tiny shapes (or on a GPU): row counts across the BLOCK_M tiles, one and
several K splits, groups of 64 and 128 and per channel, symmetric and asymmetric zero
points, every output element written (the output is NaN-prefilled)."""
from tests.triton.support import DEV, TRITON  # noqa: I001  (skips without triton / interpreter)

import pytest
import torch

from tridiff import ops
from tridiff.quant import gptq
from tridiff.reference.quant import quant_linear as reference
from tridiff.triton import _common
from tridiff.triton import quant as tq


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch):
    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(tq, "new_output", nan_filled)


def _case(N, K, group, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = gptq.quantize_rtn(torch.randn(N, K, generator=g), 4, group, sym=sym)
    return q.qweight.to(DEV), q.scales.to(DEV), gptq.v2_words(q.qzeros, 4, "gptq").to(DEV)


def _tolerance(want, dtype):
    # fp32: the same products summed in another order; half: the dequantized tile is
    # rounded to x's dtype before the tensor-core product (GPU only: the interpreter
    # multiplies in fp32)
    rel = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    return dict(rtol=rel, atol=rel * float(want.abs().max()))


@TRITON
@pytest.mark.parametrize("rows", [1, 17, 40])
@pytest.mark.parametrize("group,sym", [(128, True), (64, False), (-1, True)], ids=["g128-sym", "g64-asym", "channel"])
@pytest.mark.parametrize("splits", [1, 4], ids=["S1", "Smany"])
def test_triton_matches_reference(backend, rows, group, sym, splits, monkeypatch):
    monkeypatch.setattr(_common, "TARGET_PROGRAMS_INTERPRET", splits)
    N, K = 96, 256
    gs = K if group == -1 else group
    qweight, scales, zeros = _case(N, K, group, sym)
    x = torch.randn(rows, K).to(DEV)
    block_m, split, k_split = tq.launch_shape(rows, N, K, x.device)
    assert (split > 1) == (splits > 1)   # at most 2 output tiles here: a target of 4 programs splits K
    want = reference(x, qweight, scales, zeros, 4, gs)
    got = ops.quant_linear(x, qweight, scales, zeros, bits=4, group_size=gs, backend=backend)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, want, **_tolerance(want, torch.float32))


@TRITON
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_inputs(backend, dtype):
    qweight, scales, zeros = _case(64, 128, 64, False, seed=3)
    x = torch.randn(5, 128).to(dtype).to(DEV)
    want = reference(x, qweight, scales.to(dtype), zeros, 4, 64)
    got = ops.quant_linear(x, qweight, scales.to(dtype), zeros, bits=4, group_size=64, backend=backend)
    assert got.dtype == dtype and not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), want.float(), **_tolerance(want.float(), dtype))


def test_triton_refuses_what_it_cannot_take():
    qweight, scales, zeros = _case(64, 128, 64, True)
    x = torch.randn(2, 128, dtype=torch.float64).to(DEV)
    with pytest.raises(ops.BackendUnavailable, match="fp64"):
        ops.quant_linear(x, qweight, scales, zeros, bits=4, group_size=64, backend="triton")
    q8 = gptq.quantize_rtn(torch.randn(64, 128), 8, 64)
    with pytest.raises(ops.BackendUnavailable, match="bits=8"):
        ops.quant_linear(torch.randn(2, 128).to(DEV), q8.qweight.to(DEV), q8.scales.to(DEV), q8.qzeros.to(DEV),
                         bits=8, group_size=64, backend="triton")
    q32 = gptq.quantize_rtn(torch.randn(64, 128), 4, 32)
    with pytest.raises(ops.BackendUnavailable, match="multiples of 64"):
        ops.quant_linear(torch.randn(2, 128).to(DEV), q32.qweight.to(DEV), q32.scales.to(DEV), q32.qzeros.to(DEV),
                         bits=4, group_size=32, backend="triton")
