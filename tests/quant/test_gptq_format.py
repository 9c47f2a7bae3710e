"""The GPTQ layout (tridiff.quant.gptq) on known values and random round trips.

Source followed: GPTQModel 7.7.0 (the PyPI sdist; it does not import on this CPU machine
without its dependency tree, and auto-gptq 0.7.1's sdist does not build here, so no
fixture is written by either package; the rules below are transcribed from their
source and checked on hand-computed words):
  * gptqmodel/nn_modules/qlinear/__init__.py, pack_block / _pack_rows_2_4_8: qweight row
    r holds input rows r*P .. r*P+P-1 (P = 32/bits), row r*P+j in bits [j*bits, ...);
    dequantize_weight: the same shifts for qzeros along the output dimension, and
    W = scales[g_idx] * (q - zeros[g_idx]) on the true zero points;
  * gptqmodel/utils/model.py, convert_gptq_v2_to_v1_format_module: the v1 ("gptq")
    checkpoint stores qzeros minus 0x11111111 (4 bits) / 0x01010101 (8 bits) per int32
    word, and convert_gptq_v1_to_v2_format_module adds it back;
  * gptqmodel/quantization/quantizer.py, find_params (mse off): the symmetric zero
    point is (maxq + 1) / 2, the asymmetric one round(-min(w, 0) / scale).
"""
import pytest
import torch

from tridiff.quant import gptq


def _i32(u):
    return u - 2**32 if u >= 2**31 else u


def test_pack_rows_known_words():
    # column 0: codes 0..7 -> 0x76543210; column 1: 15, 0, ..., 0, 9 -> 0x9000000F (negative as int32)
    q = torch.tensor([[j, 0] for j in range(8)], dtype=torch.int32)
    q[0, 1], q[7, 1] = 15, 9
    words = gptq.pack_rows(q, 4)
    assert words.dtype == torch.int32 and words.shape == (1, 2)
    assert words.tolist() == [[0x76543210, _i32(0x9000000F)]]
    assert torch.equal(gptq.unpack_rows(words, 4), q)
    q8 = torch.tensor([[1], [2], [3], [255]], dtype=torch.int32)
    assert gptq.pack_rows(q8, 8).tolist() == [[_i32(0xFF030201)]]


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip_is_bit_exact(bits):
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2**bits, (256, 48), generator=g, dtype=torch.int32)
    words = gptq.pack_rows(q, bits)
    assert words.shape == (256 * bits // 32, 48)
    assert torch.equal(gptq.unpack_rows(words, bits), q)
    assert torch.equal(gptq.pack_rows(gptq.unpack_rows(words, bits), bits), words)
    z = torch.randint(0, 2**bits, (4, 64), generator=g, dtype=torch.int32)
    zw = gptq.pack_cols(z, bits)
    assert zw.shape == (4, 64 * bits // 32) and torch.equal(gptq.unpack_cols(zw, bits), z)


def test_v1_zero_points_are_stored_minus_one_per_word():
    sym = torch.full((1, 8), 8, dtype=torch.int32)
    assert gptq.encode_zeros(sym, 4, "gptq").tolist() == [[0x77777777]]
    assert gptq.encode_zeros(sym, 4, "gptq_v2").tolist() == [[_i32(0x88888888)]]
    # a zero point of 0 borrows from its neighbour in the word and comes back exactly
    z = torch.tensor([[0, 3, 0, 0, 15, 1, 0, 2]], dtype=torch.int32)
    v2 = sum(int(z[0, j]) << (4 * j) for j in range(8))
    stored = gptq.encode_zeros(z, 4, "gptq")
    assert stored.tolist() == [[_i32((v2 - 0x11111111) % 2**32)]]
    assert torch.equal(gptq.decode_zeros(stored, 4, "gptq"), z)
    z8 = torch.tensor([[0, 128, 255, 1]], dtype=torch.int32)
    assert torch.equal(gptq.decode_zeros(gptq.encode_zeros(z8, 8, "gptq"), 8, "gptq"), z8)


def test_rtn_on_known_values():
    # one group of 8 (min -1.5, max 3.0), the same in all 8 output channels
    w = torch.tensor([[-1.5, -0.75, 0.0, 0.5, 1.0, 2.0, 2.9, 3.0]]).repeat(8, 1)
    sym = gptq.quantize_rtn(w, 4, 8, sym=True)
    s = 2 * 3.0 / 15   # xmax = max(|-1.5|, 3) = 3, range [-3, 3]
    assert sym.scales.dtype == torch.float16 and sym.scales.shape == (1, 8)
    assert float(sym.scales[0, 0]) == float(torch.tensor(s, dtype=torch.float16))
    sh = float(sym.scales[0, 0])
    want = [min(max(round(v / sh) + 8, 0), 15) for v in w[0].tolist()]
    assert gptq.unpack_rows(sym.qweight, 4)[:, 0].tolist() == want
    assert gptq.decode_zeros(sym.qzeros, 4, "gptq").tolist() == [[8] * 8]
    asym = gptq.quantize_rtn(w, 4, 8, sym=False)
    sa = float(asym.scales[0, 0])
    assert sa == float(torch.tensor(4.5 / 15, dtype=torch.float16))
    za = round(1.5 / sa)
    assert gptq.decode_zeros(asym.qzeros, 4, "gptq").tolist() == [[za] * 8]
    assert gptq.unpack_rows(asym.qweight, 4)[:, 0].tolist() == [min(max(round(v / sa) + za, 0), 15)
                                                              for v in w[0].tolist()]
    assert asym.g_idx.tolist() == [0] * 8


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 64, False), (4, -1, True), (8, -1, True),
                                            (8, 64, False)])
def test_dequantize_is_within_half_a_step(bits, group, sym):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 256, generator=g)
    w[3, :64] = 0.0   # an all-zero group
    q = gptq.quantize_rtn(w, bits, group, sym=sym)
    gs = 256 if group == -1 else group
    assert q.qweight.shape == (256 * bits // 32, 96) and q.scales.shape == (256 // gs, 96)
    assert q.g_idx.tolist() == [k // gs for k in range(256)]
    d = gptq.dequantize(q.qweight, q.scales, gptq.v2_words(q.qzeros, bits, "gptq"), bits, gs)
    assert d.shape == (256, 96) and d.dtype == torch.float32
    step = q.scales.float()[torch.arange(256) // gs].t()   # [96, 256]
    # half a step, plus the fp16 rounding of the scale (2**-11 relative) over at most
    # 2**bits steps from the zero point
    assert bool(((d.t() - w).abs() <= step / 2 * (1 + 2**bits * 2**-10)).all())
    # the direct formula, element by element
    codes = gptq.unpack_rows(q.qweight, bits)
    zeros = gptq.decode_zeros(q.qzeros, bits, "gptq")
    k, n = 200, 17
    assert float(d[k, n]) == float(q.scales[k // gs, n].float() * (codes[k, n] - zeros[k // gs, n]))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        gptq.quantize_rtn(torch.zeros(8, 100), 4, 64)
    with pytest.raises(ValueError, match="bits"):
        gptq.pack_rows(torch.zeros(8, 8, dtype=torch.int32), 3)
