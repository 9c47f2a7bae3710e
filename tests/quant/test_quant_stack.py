"""The C++ layer stack (ops.decoder_layers_ on the cpp backend) on bf16 and int4 (GPTQ)
projection weights with the fp32 drafter LoRA on top: against the plain-PyTorch reference
stack with the same weights (dequantize, then matmul) with dtype-aware bounds; bad packed
weights refused by name before anything is written; the quantized tiny preset and the
bundled model (written by tridiff.quant export, read back by its loader) through the stack
path: the same logits as the op-by-op reference forward, and self-speculation equal to AR
greedy token for token."""
import pytest
import torch

from tests.cpp.support import REASON
from tests.quant.support import assert_spec_equals_ar_through_the_stack
from tests.ops.test_decoder import make_case, run
from tridiff import _dispatch, layer_stack, ops
from tridiff.model import Model
from tridiff.quant import gptq
from tridiff.quant.load import from_pretrained
from tridiff.quant.packed import FusedPacked, PackedLinear
from tridiff.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
EPS = torch.finfo(torch.float32).eps
# H, Hq D, I multiples of 64 (the int4 panels' K block); LoRA rank 8 on every layer
SHAPE = dict(H=128, Hq=4, Hkv=2, D=32, I=128, L=2, Tmax=80, rank=8)


def packed_weight(w, group, sym):
    """A PackedLinear holding w [N, K] quantized (round to nearest), codes in the CPU layout."""
    N, K = w.shape
    q = gptq.quantize_rtn(w, 4, group, sym=sym)
    m = PackedLinear(K, N, 4, group)
    m.qweight.copy_(q.qweight)
    m.qzeros.copy_(q.qzeros)
    m.scales.copy_(q.scales)
    m.g_idx.copy_(q.g_idx)
    return m.cpu_layout_()


def narrow(case, fmt, group=128, sym=True):
    """The case with its projections in `fmt` (norms, LoRA, activations as they were)."""
    out = dict(case)
    weights = list(case["weights"])
    for i, w in enumerate(weights):
        if i % 8 in (1, 2, 4, 5):
            weights[i] = w.to(torch.bfloat16) if fmt == "bf16" else packed_weight(w.float(), group, sym)
    out["weights"] = weights
    return out


def cast(case, dtype):
    out = dict(case)
    for name in ("x", "k", "v", "cos", "sin", "q_scale", "final_norm"):
        out[name] = case[name].to(dtype).clone()
    out["weights"] = [w.to(dtype) if isinstance(w, torch.Tensor) and w.dtype in (torch.float32, torch.float64)
                      else w for w in case["weights"]]
    return out


@pytest.mark.parametrize("fmt,group,sym", [("bf16", 0, True), ("int4", 128, True), ("int4", 128, False),
                                           ("int4", 64, True), ("int4", 64, False)])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 17), (1, 33), (2, 3)])
def test_stack_matches_the_reference(fmt, group, sym, B, T):
    """cpp in fp32 vs the reference in fp64 on the same narrow weights: error <= 2x the fp32
    reference's own + one ulp of the largest value (tests/ops/test_decoder.py's bound)."""
    case = narrow(make_case(B=B, T=T, lens=(5, 17)[:B], **SHAPE), fmt, group, sym)
    want = run(cast(case, torch.float64), "torch", final_norm=True)
    own = run(cast(case, torch.float32), "torch", final_norm=True)
    got = run(cast(case, torch.float32), "cpp", final_norm=True)
    for name, w, o, g in zip(("x", "k_cache", "v_cache"), want, own, got):
        scale = w.abs().max().item()
        limit = 2 * (o.double() - w).abs().max().item() + EPS * scale
        err = (g.double() - w).abs().max().item()
        assert err <= limit, f"{name}: max abs error {err} > {limit}"


def test_bad_packed_weights_are_refused_by_name_before_any_write():
    case = cast(narrow(make_case(B=1, T=2, lens=(5,), **SHAPE), "int4", 64, False), torch.float32)
    x0, k0, v0 = case["x"].clone(), case["k"].clone(), case["v"].clone()

    def refused(i, w, match):
        bad = dict(case)
        bad["weights"] = list(case["weights"])
        bad["weights"][i] = w
        with pytest.raises(ops.TridiffInputError, match=match):
            run(bad, "cpp")
        assert torch.equal(case["x"], x0) and torch.equal(case["k"], k0) and torch.equal(case["v"], v0)

    qkv = case["weights"][1]
    wrong_scales = packed_weight(torch.randn(qkv.shape), 64, False)
    wrong_scales.scales = wrong_scales.scales[:1]          # [1, N] for G = 2
    refused(1, wrong_scales, r"^weights\[1\] \(qkv of layer 0\)\.scales: expected shape")
    bad_group = packed_weight(torch.randn(qkv.shape), 64, False)
    bad_group.group_size = 96                                # K = 128 is not a multiple of it
    refused(1, bad_group, r"^weights\[1\] \(qkv of layer 0\): expected a packed weight .* group size dividing K")
    n_mismatch = packed_weight(torch.randn(SHAPE["H"] + 8, SHAPE["Hq"] * SHAPE["D"]), 64, False)
    refused(2, n_mismatch, r"^weights\[2\] \(o_proj of layer 0\): expected shape \(128, 128\)")


def test_unsupported_packed_weights_run_the_reference_instead():
    """Where the panels do not apply (8-bit codes here), auto picks the reference stack and
    naming cpp says why."""
    case = cast(narrow(make_case(B=1, T=2, lens=(5,), **SHAPE), "int4", 64, True), torch.float32)
    w = case["weights"][4]
    q8 = gptq.quantize_rtn(torch.randn(w.shape), 8, 64)
    m = PackedLinear(w.shape[1], w.shape[0], 8, 64)
    m.qweight.copy_(q8.qweight)
    m.qzeros.copy_(q8.qzeros)
    m.scales.copy_(q8.scales)
    case["weights"][4] = m
    plan = ops.decoder_plan(case["x"], case["weights"], case["k"], case["v"], case["lens"], 0, cos=case["cos"],
                            sin=case["sin"], q_scale=case["q_scale"], eps=1e-5)
    assert plan.backend == "torch"
    with pytest.raises(ops.BackendUnavailable, match=r"weights\[4\]: the C\+\+ quantized panels take 4-bit codes"):
        run(case, "cpp")


# ---- whole models through the stack path ---------------------------------------------------------

# stack_rows: tests/quant/conftest.py


def _forward(model, tokens, backend):
    cache = model.new_cache(tokens.shape[0], 48)
    prefix = model(tokens[:, :5], cache, kv="commit", adapter=True, backend=backend)
    rest = model(tokens[:, 5:], cache, kv="commit", adapter=True, backend=backend)
    return torch.cat([prefix, rest], dim=1), cache.k.clone()


@pytest.mark.parametrize("name,fmt", [("tiny", "int4-g64"), ("tiny", "bf16"), ("bundled", "int4-g128")])
def test_quantized_model_stack_equals_the_op_by_op_reference(tiny_q4, bundled_q4, stack_rows, name, fmt,
                                                              monkeypatch):
    """The reference forwards run with TRIDIFF_BACKEND=torch: every op, the projections'
    quant_linear / mixed_linear included, is the torch reference (backend="torch" alone
    names the forward's attention and stack backend, not the projections')."""
    full, q = tiny_q4 if name == "tiny" else (None, bundled_q4)
    load = (lambda dtype: Model.from_pretrained(q, dtype=dtype)) if fmt != "bf16" else \
        (lambda dtype: from_pretrained(full, weights="bf16", dtype=dtype))
    model = load(torch.float32)
    assert model.weight_format == fmt
    tokens = torch.randint(0, model.config.vocab_size, (2, 22), generator=torch.Generator().manual_seed(0))
    got, got_k = _forward(model, tokens, "auto")
    assert stack_rows == [10, 34], stack_rows          # both forwards (5 and 17 rows per sequence) on the stack
    monkeypatch.setenv(_dispatch.ENV, "torch")
    own, own_k = _forward(model, tokens, "auto")       # op by op, the reference ops, fp32
    assert stack_rows == [10, 34, -10, -34]
    want, want_k = _forward(load(torch.float64), tokens, "auto")
    for name, w, o, g in (("logits", want, own, got), ("k_cache", want_k, own_k, got_k)):
        scale = w.abs().max().item()
        limit = 2 * (o.double() - w).abs().max().item() + EPS * scale
        err = (g.double() - w).abs().max().item()
        assert err <= limit, f"{name}: max abs error {err} > {limit}"


def test_packed_codes_are_held_once_in_the_cpu_layout(tiny_q4, stack_rows):
    """Loading lays the fused q/k/v and gate/up codes out transposed in memory (one tensor,
    the parts views of it) and the stack relayouts o/down in place: the state dict is still
    the GPTQ checkpoint, value for value."""
    _, q = tiny_q4
    model = Model.from_pretrained(q, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.tensor([[1, 2, 3]]), model.new_cache(1, 8))
    assert stack_rows == [3]
    layer = model.encoder.layers[0]
    fused = layer.self_attn.fused_weight()
    assert isinstance(fused, FusedPacked) and fused.qweight.t().is_contiguous()
    assert layer.self_attn.k_proj.qweight.untyped_storage().data_ptr() == fused.qweight.untyped_storage().data_ptr()
    assert layer.self_attn.o_proj.qweight.t().is_contiguous() and layer.mlp.down_proj.qweight.t().is_contiguous()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # moved off the CPU, the codes go back to the GPTQ layout the other devices' kernels read
    assert layer.self_attn.o_proj.to("meta").qweight.is_contiguous()


def test_self_speculation_equals_ar_on_the_quantized_bundled_model_through_the_stack(bundled_q4, stack_rows):
    model = Model.from_pretrained(bundled_q4, dtype=torch.float32)
    assert model.weight_format == "int4-g128"
    assert_spec_equals_ar_through_the_stack(model, Tokenizer.from_pretrained(bundled_q4), stack_rows)


def test_narrow_models_take_the_stack_beyond_the_full_precision_limit(tiny_q4, stack_rows, monkeypatch):
    """TRIDIFF_CPU_LAYER_STACK=auto: rows x weights per layer (MAX_ROW_WEIGHTS, here 1) limits
    full-precision models only; a packed model's forward of <= MAX_ROWS rows takes the stack
    (its op-by-op layers run the same panels), the full model's runs op by op."""
    full, q = tiny_q4
    monkeypatch.setenv(layer_stack.ENV, "auto")
    monkeypatch.setattr(layer_stack, "MAX_ROW_WEIGHTS", 1)
    tokens = torch.tensor([[1, 2, 3]])
    for path, want in ((q, [3]), (full, [3, -3])):
        model = Model.from_pretrained(path, dtype=torch.float32)
        model(tokens, model.new_cache(1, 8))
        assert stack_rows == want, (path, stack_rows)
    cpu = torch.device("cpu")
    assert not layer_stack.wanted(cpu, torch.float32, layer_stack.MAX_ROWS + 1, 1, narrow=True)


@pytest.mark.parametrize("forced", ["avx2", "base"])
def test_narrower_builds_stack_matches_the_reference(forced):
    """The stack tests above under TRIDIFF_CPU_GEMM=avx2 / base, in a fresh process (the
    build is chosen once per process; the default one here is AVX-512 where the CPU has it)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRIDIFF_CPU_GEMM=forced)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__,
                          "-k", "test_stack_matches_the_reference or tiny"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
