"""`tridiff export-gguf` (tridiff.quant.gguf): the file read back with the `gguf`
package's reader (tensor names in order, shapes, types, metadata), F16/BF16/F32 data
bit-exact against the source, Q4_0 blocks decoded here from the format (32 weights per
block, fp16 scale, 4-bit codes, low nibbles first) within their rounding bound, the q/k
row permutation checked against both rotary layouts, and the refusals."""
import math

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="needs the gguf package (requirements-cpu.txt / tridiff[bench])")

from tridiff import checkpoint as ckpt  # noqa: E402
from tridiff.cli import main  # noqa: E402
from tridiff.config import preset  # noqa: E402
from tridiff.quant import gguf as gx  # noqa: E402
from tridiff.rotary import cos_sin, yarn_inv_freq  # noqa: E402

CFG = preset("tiny")


@pytest.fixture(scope="module")
def source():
    return ckpt.random_tensors(CFG, seed=3, dtype=torch.float32)


def write(tmp_path, source, wtype, **kw):
    path = tmp_path / f"m-{wtype}.gguf"
    types = gx.write_gguf(path, CFG, source.__getitem__, wtype, **kw)
    return gguf.GGUFReader(path), types


def field(reader, key):
    return reader.fields[key].contents()


def as_source_layout(name, t):
    """The tridiff tensor as the file must hold it (q/k rows interleaved per head)."""
    if name.endswith("q_proj.weight"):
        return gx.interleave_rope_rows(t, CFG.num_attention_heads)
    if name.endswith("k_proj.weight"):
        return gx.interleave_rope_rows(t, CFG.num_key_value_heads)
    return t


def test_f16_file_names_shapes_types_and_data(tmp_path, source):
    reader, types = write(tmp_path, source, "f16")
    names = gx.tensor_names(CFG)
    assert [t.name for t in reader.tensors] == list(names.values())
    assert len(reader.tensors) == 9 * CFG.num_hidden_layers + 3
    assert names["diffusion_head.weight"] == "output.weight" and names["encoder.norm.weight"] == "output_norm.weight"
    for t in reader.tensors:
        ours = next(k for k, v in names.items() if v == t.name)
        src = source[ours]
        assert list(t.shape) == list(reversed(src.shape))   # GGUF lists ne0 (the row length) first
        if src.dim() == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and types[t.name] == "f32"
            np.testing.assert_array_equal(t.data, src.numpy())
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            want = as_source_layout(ours, src).numpy().astype(np.float16)
            np.testing.assert_array_equal(t.data.reshape(want.shape).view(np.uint16), want.view(np.uint16))


def test_metadata(tmp_path, source):
    reader, _ = write(tmp_path, source, "f16")
    assert field(reader, "general.architecture") == "llama"
    expect = {"llama.embedding_length": 64, "llama.block_count": 2, "llama.feed_forward_length": 128,
              "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
              "llama.attention.key_length": 32, "llama.attention.value_length": 32,
              "llama.rope.dimension_count": 32, "llama.vocab_size": 512,
              "llama.rope.scaling.original_context_length": 64, "tokenizer.ggml.model": "none",
              "llama.rope.scaling.type": "yarn", "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
              # the llama-4 query scale is 1 only below original_max_position_embeddings
              "llama.context_length": 64}
    for key, value in expect.items():
        assert field(reader, key) == value, key
    assert field(reader, "llama.rope.freq_base") == pytest.approx(1e4)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "llama.rope.scaling.factor") == 16.0
    # llama.cpp multiplies cos/sin by attn_factor * (1 + 0.1 ln 16); tridiff's factor is 1 here
    total = field(reader, "llama.rope.scaling.attn_factor") * (1 + 0.1 * math.log(16))
    assert CFG.attention_factor == 1.0 and total == pytest.approx(1.0, rel=1e-6)


def decode_q4_0(raw: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(values, per-element |scale|) from Q4_0 bytes: per block of 32 weights an fp16
    scale d then 16 bytes; byte i holds weight i (low nibble) and weight i + 16 (high);
    value = d * (code - 8)."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)          # [n, 1]
    qs = blocks[:, 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)   # [n, 32]
    values = d * (codes - 8)
    return values.reshape(shape), np.broadcast_to(np.abs(d), codes.shape).reshape(shape)


def test_q4_0_blocks_within_their_rounding_bound(tmp_path, source):
    reader, types = write(tmp_path, source, "q4_0")
    assert types["output.weight"] == "q4_0" and types["token_embd.weight"] == "q4_0"
    assert types["blk.0.attn_norm.weight"] == "f32"
    names = {v: k for k, v in gx.tensor_names(CFG).items()}
    checked = 0
    for t in reader.tensors:
        src = source[names[t.name]]
        if src.dim() == 1:
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
        assert t.data.dtype == np.uint8 and t.data.size == src.numel() // 32 * 18
        want = as_source_layout(names[t.name], src).numpy()
        got, d = decode_q4_0(t.data, want.shape)
        # codes round x/d to the nearest of -8..7 (d = the block's largest-magnitude weight / -8):
        # half a step off, a whole step at the clipped top (x/d in (7.5, 8]), plus the
        # scale's own fp16 rounding (relative 2^-11) on up to 8 steps
        step = np.where(np.abs(want) / np.maximum(d, 1e-30) > 7.5, 1.0, 0.5)
        bound = d * (step + 8 * 2.0 ** -10) + 1e-12
        assert np.all(np.abs(got - want) <= bound), t.name
        # and not trivially: the largest weight of every block is represented to fp16 precision
        blocks = want.reshape(-1, 32)
        top = np.abs(blocks).argmax(axis=1)
        np.testing.assert_allclose(got.reshape(-1, 32)[np.arange(len(top)), top],
                                   blocks[np.arange(len(top)), top], rtol=2e-3)
        checked += 1
    assert checked == 7 * CFG.num_hidden_layers + 2


def test_bf16_and_head_type(tmp_path, source):
    reader, types = write(tmp_path, source, "bf16", head_type="f16")
    assert types["output.weight"] == "f16" and types["blk.1.ffn_down.weight"] == "bf16"
    by_name = {t.name: t for t in reader.tensors}
    down = by_name["blk.1.ffn_down.weight"]
    assert down.tensor_type == gguf.GGMLQuantizationType.BF16
    want = source["encoder.layers.1.mlp.down_proj.weight"].to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(down.data.reshape(-1).view(np.int16), want.reshape(-1))
    assert by_name["output.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_BF16)


def rotate_half(x, cos, sin):   # tridiff's layout (transformers): pairs (j, j + D/2)
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


def rotate_adjacent(x, theta):   # llama.cpp's "llama" (NORM) rotary: pairs (2j, 2j + 1)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = theta.cos(), theta.sin()
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), -1).flatten(-2)


def test_interleaved_rows_give_the_same_attention_scores():
    """q.k after tridiff's rotary on the original rows == q.k after llama.cpp's adjacent
    pair rotary on the permuted rows, at several positions (and the unpermuted rows do not)."""
    g = torch.Generator().manual_seed(0)
    D, heads, K = CFG.head_dim, 2, 16
    wq, wk = torch.randn(heads * D, K, generator=g, dtype=torch.float64), torch.randn(heads * D, K, generator=g,
                                                                                      dtype=torch.float64)
    x = torch.randn(K, generator=g, dtype=torch.float64)
    inv = yarn_inv_freq(CFG, torch.float64)
    pq, pk = torch.tensor([[5]]), torch.tensor([[2]])
    cq, sq = cos_sin(pq, inv, 1.0, torch.float64)
    ck, sk = cos_sin(pk, inv, 1.0, torch.float64)
    q, k = (wq @ x).view(heads, D), (wk @ x).view(heads, D)
    ours = (rotate_half(q, cq[0], sq[0]) * rotate_half(k, ck[0], sk[0])).sum(-1)
    q2 = (gx.interleave_rope_rows(wq, heads) @ x).view(heads, D)
    k2 = (gx.interleave_rope_rows(wk, heads) @ x).view(heads, D)
    theirs = (rotate_adjacent(q2, 5 * inv) * rotate_adjacent(k2, 2 * inv)).sum(-1)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)
    plain = (rotate_adjacent(q, 5 * inv) * rotate_adjacent(k, 2 * inv)).sum(-1)
    assert not torch.allclose(plain, ours, atol=1e-3)


@pytest.mark.parametrize("change, message", [
    (dict(rope_truncate=False), "rope_parameters.truncate"),
    (dict(beta_fast=16.0), "rope_parameters.beta_fast"),
    (dict(hidden_size=48), "hidden_size: Q4_0 needs rows of a multiple of 32"),
])
def test_refuses_what_llama_cpp_cannot_express(tmp_path, change, message):
    cfg = preset("tiny", **change)
    path = tmp_path / "x.gguf"
    with pytest.raises(gx.GGUFExportError, match=message):
        gx.write_gguf(path, cfg, lambda name: pytest.fail("no tensor may be read"), "q4_0")
    assert not path.exists()


def test_refuses_bad_types_and_leaves_no_partial_file(tmp_path, source):
    with pytest.raises(gx.GGUFExportError, match="type: expected one of"):
        gx.write_gguf(tmp_path / "a.gguf", CFG, source.__getitem__, "q8_0")
    with pytest.raises(gx.GGUFExportError, match="head_type: expected one of"):
        gx.write_gguf(tmp_path / "a.gguf", CFG, source.__getitem__, "f16", head_type="int4")
    bad = dict(source, **{"encoder.layers.1.mlp.up_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(gx.GGUFExportError, match=r"encoder.layers.1.mlp.up_proj.weight: expected shape \[128, 64\]"):
        gx.write_gguf(tmp_path / "b.gguf", CFG, bad.__getitem__, "f16")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()


def test_cli_exports_a_checkpoint_and_refuses_a_gptq_one(tmp_path, capsys):
    src = tmp_path / "ck"
    ckpt.write_random_checkpoint(src, "tiny", seed=1, dtype=torch.bfloat16)
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", "--type", "q4_0", "--head-type", "f16", str(src), str(out)]) == 0
    assert f"wrote {out} (llama architecture, q4_0, head f16, 21 tensors)" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert emb.tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert main(["quantize", "--group", "64", str(src), str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["export-gguf", str(tmp_path / "q"), str(tmp_path / "q.gguf")]) == 2
    assert "is GPTQ-quantized (int4-g64); export-gguf reads full-precision" in capsys.readouterr().err
    assert main(["export-gguf", str(src), str(tmp_path)]) == 2
    assert f"OUT: expected a file path, got the directory {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "q.gguf").exists()


def test_3b_preset_rope_is_written_and_its_query_scale_is_one_below_the_context_length():
    """The 3B preset as released (YaRN factor 16 over 16384, attention factor 1): written as
    is, no plain-rope substitute; the llama-4 query scale the llama architecture lacks is
    exactly 1 at every position below the file's context_length and not at it."""
    from tridiff.rotary import llama4_query_scale

    cfg = preset("3b")
    rope = gx.rope_metadata(cfg)
    assert rope["factor"] == 16.0 and rope["original_context_length"] == 16384 == rope["context_length"]
    assert rope["attn_factor"] * gx.yarn_mscale(16.0) == pytest.approx(cfg.attention_factor) == 1.0
    pos = torch.arange(rope["context_length"] + 1)[None, :]
    scale = llama4_query_scale(pos, cfg.llama_4_scaling_beta, cfg.original_max_position_embeddings, torch.float32)
    assert torch.all(scale[0, :-1] == 1.0) and scale[0, -1].item() > 1.0
