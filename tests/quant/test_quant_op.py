"""ops.quant_linear: the reference against a direct dequantize-then-matmul on known
values, argument checks (named, before anything runs), the fake kernel, and every
backend that serves it against the reference."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.conftest import backends_serving, require_backend
from tridiff import ops
from tridiff.quant import gptq
from tridiff.reference.quant import quant_linear as reference


def _packed(N, K, bits, group, sym, seed=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    q = gptq.quantize_rtn(torch.randn(N, K, generator=g), bits, group, sym=sym)
    return q.qweight, q.scales.to(dtype), gptq.v2_words(q.qzeros, bits, "gptq")


def test_reference_on_known_values():
    # K = 8 (one group), N = 8: codes q[k, n] = (k + n) % 16, zero 3 for every column,
    # scale 0.5 * (n + 1): W^T[k, n] = 0.5 (n + 1) ((k + n) % 16 - 3)
    K = N = 8
    codes = torch.tensor([[(k + n) % 16 for n in range(N)] for k in range(K)], dtype=torch.int32)
    qweight = gptq.pack_rows(codes, 4)
    scales = torch.tensor([[0.5 * (n + 1) for n in range(N)]], dtype=torch.float16)
    zeros = gptq.pack_cols(torch.full((1, N), 3, dtype=torch.int32), 4)
    x = torch.arange(K, dtype=torch.float32)[None, :] - 2.0
    want = [sum(float(x[0, k]) * 0.5 * (n + 1) * ((k + n) % 16 - 3) for k in range(K)) for n in range(N)]
    got = ops.quant_linear(x, qweight, scales, zeros, bits=4, group_size=8, backend="torch")
    assert got.shape == (1, N) and got.dtype == torch.float32
    assert got[0].tolist() == want   # small integers and halves: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_reference_is_dequantize_then_matmul(dtype):
    qweight, scales, zeros = _packed(64, 256, 4, 128, sym=False)
    x = torch.randn(3, 5, 256, dtype=torch.float64).to(dtype)
    y = ops.quant_linear(x, qweight, scales, zeros, bits=4, group_size=128, backend="torch")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = gptq.dequantize(qweight, scales, zeros, 4, 128, dtype=acc)
    assert y.shape == (3, 5, 64) and y.dtype == dtype
    assert torch.equal(y, (x.to(acc).reshape(15, 256) @ w).to(dtype).view(3, 5, 64))


BAD = [
    (dict(bits=3), "bits"),
    (dict(group_size=100), "group_size"),
    (dict(group_size=True), "group_size"),
    (dict(qweight=torch.zeros(32, 64, dtype=torch.int64)), "qweight"),
    (dict(qweight=torch.zeros(16, 64, dtype=torch.int32)), "qweight"),
    (dict(scales=torch.zeros(1, 64, dtype=torch.float16)), "scales"),
    (dict(scales=torch.zeros(2, 64, dtype=torch.int32)), "scales"),
    (dict(qzeros=torch.zeros(2, 16, dtype=torch.int32)), "qzeros"),
    (dict(x=torch.zeros(2, 255)), "group_size"),
    (dict(x=torch.zeros(2, 256, dtype=torch.int32)), "x"),
]


@pytest.mark.parametrize("change,arg", BAD, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(change, arg):
    qweight, scales, zeros = _packed(64, 256, 4, 128, sym=True)
    args = dict(x=torch.zeros(2, 256), qweight=qweight, scales=scales, qzeros=zeros, bits=4, group_size=128)
    args.update(change)
    with pytest.raises(ops.TridiffInputError, match=rf"^{arg}: expected"):
        ops.quant_linear(args["x"], args["qweight"], args["scales"], args["qzeros"], bits=args["bits"],
                         group_size=args["group_size"])


def test_fake_kernel_gives_the_output_shape():
    qweight, scales, zeros = _packed(64, 256, 4, 64, sym=True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.zeros(2, 3, 256, dtype=torch.bfloat16))
        y = ops.quant_linear(x, mode.from_tensor(qweight), mode.from_tensor(scales), mode.from_tensor(zeros),
                             bits=4, group_size=64)
        assert y.shape == (2, 3, 64) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", backends_serving("quant_linear"))
@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 64, False), (8, -1, True)])
@pytest.mark.parametrize("rows", [1, 17])
def test_backends_match_the_reference(backend, bits, group, sym, rows):
    K = 256
    gs = K if group == -1 else group
    qweight, scales, zeros = _packed(96, K, bits, group, sym)
    x = torch.randn(rows, K)
    require_backend(backend, "quant_linear", (x, qweight, scales, zeros, bits, gs))   # cpp: 4-bit codes only
    want = reference(x, qweight, scales, zeros, bits, gs)
    got = ops.quant_linear(x, qweight, scales, zeros, bits=bits, group_size=gs, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
