"""int4 weights x int8 activations ("w4a8", ops.quant_linear_a8; csrc/cpu/decoder_a8.inc):
the activations' rounding (tridiff.reference.quant.round_activations_int8, the definition);
the cpp panels against the reference (exact integer products, fp64) within the bound of
their fp32 group sums, which one activation rounded differently already breaks; the VNNI
and scalar builds give the same bits; a row's result does not depend on the rows sharing
its call; refusals before any write; a model switched to int8 activations
(tridiff.quant.load.set_activations): codes held once in the GPTQ layout, the C++ stack
against the reference stack, self-speculation equal to AR greedy on the quantized bundled
model through the stack. GPTQ fixtures as in test_quant_cpp (tridiff.quant.gptq)."""
import os
import subprocess
import sys

import pytest
import torch

from tests.cpp.support import REASON
from tests.ops.test_decoder import make_case, run
from tests.engine.support import assert_batch_equals_solo
from tests.quant.support import assert_spec_equals_ar_through_the_stack, zero_point_case
from tests.quant.test_quant_cpp import cpu_flags
from tridiff import _dispatch, _ext, ops
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.quant import gptq
from tridiff.quant.load import set_activations
from tridiff.quant.packed import FusedPacked, PackedLinear
from tridiff.reference.quant import round_activations_int8
from tridiff.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
EPS = torch.finfo(torch.float32).eps
ROWS = [1, 2, 3, 5, 8, 17, 33]   # row tiles 8 / 4 / 2 / 1
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def packed(N, K, group, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = gptq.quantize_rtn(torch.randn(N, K, generator=g), 4, group, sym=sym)
    return q.qweight, q.scales, gptq.v2_words(q.qzeros, 4, "gptq")


def group_terms(x, qweight, scales, zeros, group):
    """|s_g d_g t_g| per row, group and feature (fp64, exact): the terms the panels sum."""
    q, d = round_activations_int8(x, group)
    M, K = x.shape
    G = K // group
    codes = gptq.unpack_rows(qweight, 4).double()                        # [K, N]
    z = gptq.unpack_cols(zeros, 4).double()                              # [G, N]
    w = (codes.view(G, group, -1) - z[:, None, :])                       # [G, group, N]
    t = torch.einsum("mgk,gkn->mgn", q.double().view(M, G, group), w)   # exact integers
    return (scales.double()[None] * d.double()[:, :, None] * t).abs()


def bound(terms):
    """fp32 sum over G groups of fma(s d, t, y): (G + 1) roundings of at most the sum of
    the terms' magnitudes, twice over."""
    G = terms.shape[1]
    return 2 * (G + 1) * EPS * terms.sum(dim=1) + 1e-30


def test_activation_rounding_is_symmetric_per_row_and_group():
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1)) * torch.tensor([[1.0], [30.0], [1e-3]])
    x[1, 128:] = 0   # an all-zero group: d = 0, q = 0
    q, d = round_activations_int8(x, 128)
    assert q.dtype == torch.int8 and d.shape == (3, 2) and d[1, 1] == 0 and (q[1, 128:] == 0).all()
    xg, qg = x.view(3, 2, 128), q.view(3, 2, 128).float()
    assert (qg.abs().amax(-1)[d > 0] == 127).all()                       # each group's max reaches 127
    err = (qg * d[..., None] - xg).abs()
    assert (err <= d[..., None] * (0.5 + 1e-6)).all()                    # round to nearest


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("N", [136, 40, 8])   # 64-feature blocks + a 16 + an 8-lane tail; the split
@pytest.mark.parametrize("group,K", [(128, 256), (64, 192), (32, 96), (256, 512), (8, 64)])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_a8_panels_match_the_reference(sym, group, K, N, rows):
    qweight, scales, zeros = packed(N, K, group, sym, seed=rows + N)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(7)) * 3
    got = ops.quant_linear_a8(x, qweight, scales, zeros, bits=4, group_size=group, backend="cpp")
    want = ops.quant_linear_a8(x.double(), qweight, scales, zeros, bits=4, group_size=group, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    err = (got.double() - want).abs()
    assert (err <= bound(group_terms(x, qweight, scales, zeros, group))).all(), f"max abs error {err.max()}"


def test_the_panels_round_the_activations_as_the_reference():
    """Rounding one activation differently moves an output by d |s (q - z)|, far beyond the
    bound: inputs sitting near .5 steps would expose a different rounding (x / d for
    x * (1 / d), or half away from zero)."""
    K, N, group = 128, 16, 128
    qweight, scales, zeros = packed(N, K, group, sym=False)
    steps = torch.arange(K, dtype=torch.float32) % 31 - 15 + 0.5         # exact halves of the step
    x = (steps / 127 * 3).view(1, K)
    x[0, 0] = 3.0                                                         # the group max: d = 3 / 127
    got = ops.quant_linear_a8(x, qweight, scales, zeros, bits=4, group_size=group, backend="cpp")
    want = ops.quant_linear_a8(x.double(), qweight, scales, zeros, bits=4, group_size=group, backend="torch")
    assert ((got.double() - want).abs() <= bound(group_terms(x, qweight, scales, zeros, group))).all()


def test_zero_points_and_scales_matter():
    """Codes all 8 with per-group zero points and scales: y = sum_g s_g (8 - z_g) d_g sum(q_g)."""
    qweight, zeros, s, z, x, group = zero_point_case()
    got = ops.quant_linear_a8(x, qweight, s, zeros, bits=4, group_size=group, backend="cpp")
    q, d = round_activations_int8(x, group)
    qs = q.double().view(3, -1, group).sum(-1) * d.double()               # [3, G]
    want = qs @ (s.double() * (8 - z).double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_a_row_does_not_depend_on_the_rows_sharing_its_call():
    K, N, group = 256, 200, 64
    qweight, scales, zeros = packed(N, K, group, sym=False)
    x = torch.randn(17, K, generator=torch.Generator().manual_seed(11))
    f = lambda a: ops.quant_linear_a8(a, qweight, scales, zeros, bits=4, group_size=group, backend="cpp")  # noqa: E731
    whole = f(x)
    for r in (0, 7, 8, 16):
        assert torch.equal(whole[r], f(x[r:r + 1].clone())[0]), r
    torch.set_num_threads(1)
    try:
        assert torch.equal(whole, f(x))   # one thread: one span, the same bits
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


PROBE = """
import sys, torch
from tridiff import _ext, ops
from tests.quant.test_quant_a8 import packed
lib = _ext.load("cpp")
outs = []
for rows, N, group, K in ((1, 136, 128, 256), (17, 40, 64, 192), (33, 8, 8, 64)):
    qweight, scales, zeros = packed(N, K, group, sym=False, seed=rows)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)) * 3
    outs.append(ops.quant_linear_a8(x, qweight, scales, zeros, bits=4, group_size=group, backend="cpp"))
torch.save((lib.decoder_a8_build(), outs), sys.argv[1])
"""


def test_the_vnni_and_scalar_builds_give_the_same_bits(tmp_path):
    """TRIDIFF_CPU_GEMM=base forces the scalar panel (chosen once per process): fresh
    processes of both builds, outputs compared bit for bit."""
    flags = cpu_flags()
    if flags is None or not {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        pytest.skip("needs an x86-64 CPU with AVX-512 VNNI (avx512f/bw/vl, avx512_vnni) for the VNNI build")
    results = {}
    for forced in ("", "base"):
        env = dict(os.environ, TRIDIFF_CPU_GEMM=forced, PYTHONPATH=ROOT)
        path = tmp_path / f"out-{forced or 'auto'}.pt"
        done = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=env, capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        results[forced] = torch.load(path)
    assert results[""][0] == "avx512-vnni" and results["base"][0] == "scalar"
    for a, b in zip(results[""][1], results["base"][1]):
        assert torch.equal(a, b)


def test_reports_the_a8_build():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("reads the CPU's flags from /proc/cpuinfo on x86-64")
    vnni = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags
    forced = os.environ.get("TRIDIFF_CPU_GEMM") in ("avx2", "base")
    assert _ext.load("cpp").decoder_a8_build() == ("avx512-vnni" if vnni and not forced else "scalar")


def test_refused_weights_leave_the_output_untouched():
    """proj_weight_ok for int4a8: group a multiple of 8 and at most 1024, N % 8 == 0, scales given."""
    lib = _ext.load("cpp")
    K, N = 2048, 16
    qweight, scales, zeros = packed(N, K, 64, sym=True)
    x = torch.randn(2, K)
    good = [3, scales.data_ptr(), zeros.data_ptr(), 64]
    bad = [([3, scales.data_ptr(), zeros.data_ptr(), 12], N), ([3, scales.data_ptr(), zeros.data_ptr(), 2048], N),
           (good, 12), ([3, 0, zeros.data_ptr(), 64], N), ([3, scales.data_ptr(), zeros.data_ptr(), 96], N)]
    for meta, n in bad:
        out = torch.full((2, N), float("nan"))
        with pytest.raises(RuntimeError, match="proj_linear"):
            lib.proj_linear(qweight.data_ptr(), meta, x.data_ptr(), 2, K, n, out.data_ptr(), 1)
        assert torch.isnan(out).all()
    out = torch.full((2, N), float("nan"))
    lib.proj_linear(qweight.data_ptr(), good, x.data_ptr(), 2, K, N, out.data_ptr(), 1)
    assert not torch.isnan(out).any()


def test_bad_inputs_name_the_argument_and_other_formats_fall_back():
    qweight, scales, zeros = packed(16, 256, 64, sym=True)
    with pytest.raises(ops.TridiffInputError, match=r"^group_size: expected"):
        ops.quant_linear_a8(torch.zeros(2, 200), qweight, scales, zeros, bits=4, group_size=64)
    with pytest.raises(ops.TridiffInputError, match=r"^scales: expected"):
        ops.quant_linear_a8(torch.zeros(2, 256), qweight, scales[:2], zeros, bits=4, group_size=64)
    q8 = gptq.quantize_rtn(torch.randn(16, 256), 8, 64)
    z8 = gptq.v2_words(q8.qzeros, 8, "gptq")
    x = torch.randn(2, 256)
    assert "4-bit" in _dispatch.why_not("cpp", "quant_linear_a8", (x, q8.qweight, q8.scales, z8, 8, 64), {})
    assert "float32" in _dispatch.why_not("cpp", "quant_linear_a8", (x.double(), qweight, scales, zeros, 4, 64), {})
    assert "does not implement" in _dispatch.why_not("triton", "quant_linear_a8",
                                                     (x, qweight, scales, zeros, 4, 64), {}) or \
        _dispatch.backend_unavailable("triton")
    got = ops.quant_linear_a8(x, q8.qweight, q8.scales, z8, bits=8, group_size=64)   # auto: the reference
    torch.testing.assert_close(got, ops.quant_linear_a8(x, q8.qweight, q8.scales, z8, bits=8, group_size=64,
                                                        backend="torch"))


# ---- the layer stack and models ----------------------------------------------------------------

SHAPE = dict(H=128, Hq=4, Hkv=2, D=32, I=128, L=2, Tmax=80, rank=8)


def a8_case(case, group, sym):
    out = dict(case)
    weights = list(case["weights"])
    for i, w in enumerate(weights):
        if i % 8 in (1, 2, 4, 5):
            N, K = w.shape
            q = gptq.quantize_rtn(w.float(), 4, group, sym=sym)
            m = PackedLinear(K, N, 4, group)
            for name in ("qweight", "qzeros", "scales", "g_idx"):
                getattr(m, name).copy_(getattr(q, name))
            m.activations = "int8"
            weights[i] = m.cpu_layout_()
    out["weights"] = weights
    for name in ("x", "k", "v", "cos", "sin", "q_scale", "final_norm"):
        out[name] = case[name].float().clone()
    out["weights"] = [w.float() if isinstance(w, torch.Tensor) else w for w in weights]
    return out


def copy(case):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


@pytest.mark.parametrize("group,sym", [(128, True), (64, False)])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 17), (1, 33), (2, 3)])
def test_stack_matches_the_reference_stack(group, sym, B, T):
    """cpp vs the reference stack, both fp32 with int8 activations. They differ in their fp32
    roundings (norms, attention, sums), and where such a difference moves an activation
    across a rounding step, that row moves by about d |W| (seen: 1 row in 33). So: at least
    90% of the rows (tokens; cache slots) agree within 64 ulp of the largest value, and
    every row is nearer the reference than half its distance to the w4a16 stack."""
    case = a8_case(make_case(B=B, T=T, lens=(5, 17)[:B], **SHAPE), group, sym)
    want = run(copy(case), "torch", final_norm=True)
    got = run(copy(case), "cpp", final_norm=True)
    w4a16 = copy(case)
    for w in w4a16["weights"]:
        if isinstance(w, PackedLinear):
            w.activations = "float"
    w4a16["weights"] = [w.cpu_layout_() if isinstance(w, PackedLinear) else w for w in w4a16["weights"]]
    other = run(w4a16, "torch", final_norm=True)
    for name, w, g, o in zip(("x", "k_cache", "v_cache"), want, got, other):
        lead = w.shape[:-1] if name == "x" else w.shape[:-2]
        rows_err = (g - w).abs().reshape(*lead, -1).amax(-1).flatten()
        gap = (o - w).abs().max().item()
        close = rows_err <= 64 * EPS * w.abs().max().item()
        assert close.float().mean() >= 0.9, f"{name}: {int((~close).sum())} of {close.numel()} rows differ"
        assert gap > 0 and rows_err.max().item() <= 0.5 * gap, f"{name}: {rows_err.max().item()} vs gap {gap}"


def test_set_activations_holds_the_codes_once_in_the_gptq_layout(tiny_q4):
    _, q = tiny_q4
    model = Model.from_pretrained(q, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_activations(model, "int8") is model and model.activations == "int8"
    layer = model.encoder.layers[0]
    fused = layer.self_attn.fused_weight()
    assert isinstance(fused, FusedPacked) and fused.activations == "int8" and fused.qweight.is_contiguous()
    assert layer.self_attn.k_proj.qweight.untyped_storage().data_ptr() == fused.qweight.untyped_storage().data_ptr()
    assert layer.self_attn.o_proj.qweight.is_contiguous() and layer.mlp.down_proj.qweight.is_contiguous()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    set_activations(model, "float")   # and back: the w4a16 layout
    assert layer.self_attn.o_proj.qweight.t().is_contiguous() and layer.self_attn.o_proj.activations == "float"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_int8_activations_are_refused_where_they_do_not_apply(tiny_q4):
    full, q = tiny_q4
    with pytest.raises(ValueError, match="^activations: 'int8' applies to int4"):
        Model.from_pretrained(full, activations="int8")
    with pytest.raises(ValueError, match="^activations: expected"):
        Model.from_pretrained(q, activations="int4")
    with pytest.raises(ValueError, match="^activations: 'int8' is a CPU path"):   # before any weight is read
        Model.from_pretrained(q, device="cuda", activations="int8")
    model = Model.from_pretrained(full)
    with pytest.raises(ValueError, match="^activations: 'int8' rounds the input of int4"):
        set_activations(model, "int8")
    assert model.activations == "float"


def test_a_packed_head_loads_and_computes_the_reference_logits(bundled_q4_head, monkeypatch):
    """`tridiff quantize --lm-head`: the head is one more PackedLinear (GPTQModel's
    lm_head=true), read back bit for bit; its logits are the reference quant_linear of the
    final hidden state (quant_linear_a8's with int8 activations)."""
    import tridiff.model
    from safetensors.torch import load_file

    with open(os.path.join(bundled_q4_head, "quantize_config.json")) as fh:
        assert '"lm_head": true' in fh.read()
    stored = load_file(os.path.join(bundled_q4_head, "model.safetensors"))
    assert "diffusion_head.weight" not in stored
    seen = []
    real = tridiff.model.linear
    monkeypatch.setattr(tridiff.model, "linear", lambda x, w: seen.append((x, w)) or real(x, w))
    tokens = torch.tensor([[1, 5, 9, 13, 2]])
    for activations, ref in (("float", ops.quant_linear), ("int8", ops.quant_linear_a8)):
        model = Model.from_pretrained(bundled_q4_head, dtype=torch.float32, activations=activations)
        head = model.diffusion_head
        assert isinstance(head, PackedLinear) and head.activations == activations
        for suffix in ("qweight", "qzeros", "scales", "g_idx"):
            assert torch.equal(getattr(head, suffix), stored[f"diffusion_head.{suffix}"])
        seen.clear()
        logits = model(tokens, model.new_cache(1, 8), kv="none")
        x = [x for x, w in seen if w is head][-1]
        want = ref(x, head.qweight, head.scales, head.zeros, bits=4, group_size=128, backend="torch")
        assert logits.shape == (1, 5, model.config.vocab_size)
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_self_speculation_equals_ar_with_int8_activations_through_the_stack(bundled_q4_head, stack_rows):
    """int8 activations everywhere, the packed head included."""
    model = Model.from_pretrained(bundled_q4_head, dtype=torch.float32, activations="int8")
    assert model.activations == "int8" and isinstance(model.diffusion_head, PackedLinear)
    assert_spec_equals_ar_through_the_stack(model, Tokenizer.from_pretrained(bundled_q4_head), stack_rows)


def test_cli_generate_takes_int8_activations_and_refuses_them_for_full_weights(bundled_q4, capsys):
    """`tridiff generate --activations int8` equals the Python API's greedy tokens; on a
    full-precision checkpoint it exits 2 with one line naming the flag."""
    import json

    from tridiff import models
    from tridiff.cli import main

    argv = ["generate", "--model", str(bundled_q4), "--prompt", "def main():\n", "--mode", "ar",
            "--max-new-tokens", "8", "--device", "cpu", "--json"]
    assert main(argv + ["--activations", "int8"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    model = Model.from_pretrained(bundled_q4, dtype=torch.float32, activations="int8")
    want = generate(model, [row["prompt_ids"]], mode="ar", max_new_tokens=8).results[0].tokens
    assert row["tokens"] == list(want)
    assert main(argv[:2] + [models.path()] + argv[3:] + ["--activations", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tridiff: error: --activations int8: applies to int4")


def test_the_engine_serves_a_w4a8_model_each_request_as_generate_alone(bundled_q4_head):
    """The engine on the quantized bundled model with int8 activations (head packed too):
    strategies sharing steps, each request's tokens equal to its solo generate (the
    activations are rounded per row, so a row does not depend on its batch)."""
    assert_batch_equals_solo(Model.from_pretrained(bundled_q4_head, dtype=torch.float32, activations="int8"))


def test_serve_state_loads_with_int8_activations(bundled_q4):
    """`tridiff serve --activations int8` reaches the model through make_state; a
    full-precision checkpoint is refused naming the argument."""
    from tridiff import models
    from tridiff.serve.server import make_state

    state = make_state(str(bundled_q4), device="cpu", activations="int8", max_rows=2, max_context=128)
    assert state.engine.model.activations == "int8"
    with pytest.raises(ValueError, match="^activations: 'int8' applies to int4"):
        make_state(models.path(), device="cpu", activations="int8", max_rows=2, max_context=128)


def test_cli_quantize_packs_the_head_with_lm_head(tiny_q4, tmp_path, capsys):
    import json

    from tridiff.cli import main

    full, _ = tiny_q4
    out = tmp_path / "q"
    assert main(["quantize", "--bits", "4", "--group", "64", "--lm-head", str(full), str(out)]) == 0
    assert "head packed" in capsys.readouterr().out
    with open(out / "config.json") as fh:
        assert json.load(fh)["quantization_config"]["lm_head"] is True
    model = Model.from_pretrained(out)
    assert isinstance(model.diffusion_head, PackedLinear) and model.diffusion_head.group_size == 64
