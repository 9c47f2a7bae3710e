"""Models on packed and bf16 weights: greedy self-speculation (linear with the drafter
LoRA, quadratic) equals AR greedy on the same quantized model token for token, on the
tiny preset and on the bundled trained model quantized int4-g128; the bf16 format holds
no fp32 copy of any projection and computes the network of its bf16 values in fp32."""
import torch

from tests.quant.support import code_prompts
from tridiff.generate import generate
from tridiff.model import Model
from tridiff.quant.load import from_pretrained
from tridiff.quant.packed import PackedLinear
from tridiff.tokenizer import Tokenizer


def _spec_equals_ar(model, prompts, n, L, modes=("linear-spec", "quadratic-spec")):
    ar = generate(model, prompts, mode="ar", max_new_tokens=n + L - 1, eos_id=-1).results
    for mode in modes:
        spec = generate(model, prompts, mode=mode, max_new_tokens=n, block_length=L, eos_id=-1).results
        for a, s in zip(ar, spec):
            assert len(s.tokens) >= n and s.tokens == a.tokens[:len(s.tokens)], mode
    return ar


def test_self_speculation_equals_ar_on_the_quantized_tiny_preset(tiny_q4):
    _, q = tiny_q4
    model = Model.from_pretrained(q, dtype=torch.float64)
    assert model.has_adapter and isinstance(model.encoder.layers[0].self_attn.q_proj, PackedLinear)
    g = torch.Generator().manual_seed(5)
    prompts = [[1] + torch.randint(200, 500, (k,), generator=g).tolist() for k in (6, 11)]
    _spec_equals_ar(model, prompts, n=8, L=4)


def test_bf16_weights_are_held_once_in_bf16(tiny_q4):
    full, _ = tiny_q4
    model = from_pretrained(full, weights="bf16")
    assert model.weight_format == "bf16" and model.dtype == torch.float32
    layer = model.encoder.layers[0]
    qkv = layer.self_attn.fused_weight()
    assert qkv.dtype == torch.bfloat16 and qkv.data_ptr() == layer.self_attn.q_proj.weight.data_ptr()
    projections = [p for n, p in model.named_parameters() if "proj" in n or n == "diffusion_head.weight"]
    assert projections and all(p.dtype == torch.bfloat16 for p in projections)
    # the same network with fp32 weights holding the bf16 values: fp32 rounding apart
    ref = Model.from_pretrained(full, dtype=torch.float32)
    with torch.no_grad():
        for name, p in ref.named_parameters():   # projections and head; not the LoRA, embeddings, norms
            if name.endswith("proj.weight") or name == "diffusion_head.weight":
                p.copy_(p.to(torch.bfloat16))
        for layer_ref in ref.encoder.layers:
            layer_ref.self_attn._fused = layer_ref.mlp._fused = None
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    got = model(tokens, model.new_cache(2, 16), kv="commit", adapter=True)
    want = ref(tokens, ref.new_cache(2, 16), kv="commit", adapter=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.equal(want, Model.from_pretrained(full, dtype=torch.float32)(
        tokens, ref.new_cache(2, 16), kv="commit", adapter=True))   # the rounding to bf16 is visible


def test_self_speculation_equals_ar_on_the_quantized_bundled_model(bundled_q4):
    q = bundled_q4
    model = Model.from_pretrained(q, dtype=torch.float32)
    assert model.weight_format == "int4-g128"
    tok = Tokenizer.from_pretrained(q)
    prompts = code_prompts(tok)
    n, L = 32, 16
    ar = generate(model, prompts, mode="ar", max_new_tokens=n + L - 1).results
    for mode in ("linear-spec", "quadratic-spec"):
        spec = generate(model, prompts, mode=mode, max_new_tokens=n, block_length=L).results
        for a, s in zip(ar, spec):
            assert len(s.tokens) >= min(n, len(a.tokens)) and s.tokens == a.tokens[:len(s.tokens)], mode
        assert sum(len(s.tokens) for s in spec) > sum(s.nfe for s in spec), mode   # drafts are accepted
