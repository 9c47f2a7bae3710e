"""Fused projections: q/k/v_proj and gate/up_proj are row blocks of one tensor per layer
(Model.fused), so one GEMM computes each group, while parameter names, shapes, loading
and state_dict stay the checkpoint's and every weight is in memory once."""
import pytest
import torch

from tridiff import Mode
from tridiff.checkpoint import expected_shapes, random_tensors
from tridiff.model import Model
from tests.model.support import tiny_config


def _model(dtype=torch.float64, seed=0):
    return Model(tiny_config(), dtype=dtype).init_random_(seed)


def _logits(model, seed=1):
    c = model.config
    toks = torch.randint(0, c.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))
    return model(toks, model.new_cache(2, 16), modes=Mode.CAUSAL)


def _unique_storage_bytes(model):
    seen = {}
    for p in model.parameters():
        s = p.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _check_views(model):
    c = model.config
    for i, layer in enumerate(model.encoder.layers):
        w_qkv, w_gu = model.fused(i)
        a, m = layer.self_attn, layer.mlp
        assert w_qkv.shape == (c.q_size + 2 * c.kv_size, c.hidden_size)
        assert w_gu.shape == (2 * c.intermediate_size, c.hidden_size)
        starts = (0, c.q_size, c.q_size + c.kv_size)
        for s, p in zip(starts, (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)):
            assert p.data_ptr() == w_qkv[s].data_ptr()   # the same memory, not a copy
        for s, p in zip((0, c.intermediate_size), (m.gate_proj.weight, m.up_proj.weight)):
            assert p.data_ptr() == w_gu[s].data_ptr()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert _unique_storage_bytes(model) == params, "a weight is held twice"


def test_names_and_shapes_are_the_checkpoints_and_weights_are_fused_views():
    model = _model()
    c = model.config
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(c)
    _check_views(model)
    want = random_tensors(c, seed=0, dtype=torch.float32)
    w_qkv, w_gu = model.fused(1)
    pre = "encoder.layers.1."
    assert torch.equal(w_qkv, torch.cat([want[pre + f"self_attn.{n}_proj.weight"] for n in "qkv"]).double())
    assert torch.equal(w_gu, torch.cat([want[pre + f"mlp.{n}_proj.weight"] for n in ("gate", "up")]).double())


def test_from_pretrained_fills_the_fused_weights(tmp_path):
    from tridiff.checkpoint import write_random_checkpoint

    write_random_checkpoint(tmp_path, tiny_config(), seed=4, dtype=torch.float32, with_tokenizer=False)
    loaded = Model.from_pretrained(tmp_path, dtype=torch.float64)
    _check_views(loaded)
    assert torch.equal(_logits(loaded), _logits(_model(seed=4)))


def test_in_place_edit_of_one_projection_reaches_the_fused_gemm():
    model, other = _model(), _model()
    before = _logits(model)
    model.encoder.layers[0].self_attn.k_proj.weight.mul_(2.0)
    model.encoder.layers[1].mlp.up_proj.weight.mul_(0.5)
    state = other.state_dict()
    state["encoder.layers.0.self_attn.k_proj.weight"] = state["encoder.layers.0.self_attn.k_proj.weight"] * 2.0
    state["encoder.layers.1.mlp.up_proj.weight"] = state["encoder.layers.1.mlp.up_proj.weight"] * 0.5
    other.load_state_dict(state)   # copies into the existing (fused) storage
    _check_views(other)
    after = _logits(model)
    assert not torch.equal(after, before)
    assert torch.equal(after, _logits(other))


def test_load_state_dict_assign_restacks_the_new_tensors():
    model, source = _model(seed=0), _model(seed=2)
    _logits(model)   # the fused views of the old storage are cached now
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert torch.equal(_logits(model), _logits(source))
    _check_views(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_conversion_keeps_one_copy_and_the_same_logits(dtype):
    model = _model(torch.float64).to(dtype)
    assert model.dtype == dtype
    _check_views(model)
    fresh = Model(tiny_config(), dtype=dtype)
    fresh.load_state_dict(_model(torch.float64).state_dict())
    assert torch.equal(_logits(model), _logits(fresh))


@pytest.mark.parametrize("path", ["bmm", "wxt", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,K", [(1536, 256), (512, 96), (100, 64)], ids=["blocks", "two-blocks", "fallback"])
@pytest.mark.parametrize("lead", [(1, 1), (2, 1), (1, 4), (5, 1), (2, 9), (1, 128), (3, 50)])
def test_projection_within_twice_f_linear_error(monkeypatch, path, dtype, N, K, lead):
    """tridiff.projection.linear on every CPU path (bmm: one batched GEMM over weight row
    blocks; wxt: (W @ x^T)^T; for up to BMM_ROWS rows; (3, 50) = 150 rows takes F.linear) against the fp64
    product, per element within the worst-case rounding bound of a K-term dot product in
    the dtype, gamma_K * sum |x_k w_k| (gamma_K = K u / (1 - K u), u the unit roundoff),
    which holds for every summation order; same shape, dtype and layout as F.linear."""
    import torch.nn.functional as F

    from tridiff import projection
    from tridiff.projection import linear

    monkeypatch.setenv(projection.PATH_ENV, path)

    g = torch.Generator().manual_seed(N + K + sum(lead))
    x64 = torch.randn(*lead, K, generator=g, dtype=torch.float64)
    w64 = torch.randn(N, K, generator=g, dtype=torch.float64)
    x, w = x64.to(dtype), w64.to(dtype)
    truth = x.double() @ w.double().T
    got, base = linear(x, w), F.linear(x, w)
    assert got.shape == base.shape and got.dtype == dtype and got.is_contiguous()
    u = torch.finfo(dtype).eps / 2
    bound = K * u / (1 - K * u) * (x.double().abs() @ w.double().abs().T)
    err = (got.double() - truth).abs()
    assert bool((err <= bound).all()), f"error {(err / bound).max().item():.2f} x the rounding bound"


@pytest.mark.parametrize("path", ["bmm", "wxt", "linear"])
def test_cpu_path_is_the_one_asked_for(monkeypatch, path):
    """TRIDIFF_CPU_PROJECTION forces the path: bmm runs torch.bmm, wxt torch.mm, linear
    neither (F.linear)."""
    from tridiff import projection

    calls = []
    for name in ("bmm", "mm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _n=name, _f=real: calls.append(_n) or _f(*a))
    monkeypatch.setenv(projection.PATH_ENV, path)
    w, x = torch.randn(512, 64), torch.randn(3, 64)
    assert torch.allclose(projection.linear(x, w), x @ w.T, atol=1e-5)
    assert calls == {"bmm": ["bmm"], "wxt": ["mm"], "linear": []}[path]


def test_cpu_path_auto_measures_once_per_bucket_and_bad_values_are_refused(monkeypatch):
    from tridiff import projection

    real_measure = projection._measure
    monkeypatch.setattr(projection, "_MEASURED", {})
    timed = []
    monkeypatch.setattr(projection, "_measure",
                        lambda rows, N, K: timed.append((rows, N, K)) or ("wxt" if rows > 4 else "bmm"))
    monkeypatch.delenv(projection.PATH_ENV, raising=False)
    got = [projection.cpu_path(r, 512, 64) for r in (1, 3, 16, 9, 128, 2, 4)]
    assert got == ["bmm"] * 2 + ["wxt"] * 3 + ["bmm"] * 2
    assert projection.cpu_path(16, 256, 64) == "wxt"
    # once per weight shape and bucket, at the bucket's largest row count
    assert timed == [(1, 512, 64), (4, 512, 64), (16, 512, 64), (128, 512, 64), (2, 512, 64), (16, 256, 64)]
    assert projection.measured_paths()["512x64, rows <= 16"] == "wxt"
    assert [projection.row_bucket(r) for r in (1, 2, 3, 5, 16, 17, 128)] == [1, 2, 4, 8, 16, 32, 128]
    assert real_measure(16, 512, 256, rounds=1) in ("bmm", "wxt", "linear")
    assert real_measure(4, 100, 64, rounds=1) in ("wxt", "linear")   # N=100 has no blocks to bmm
    monkeypatch.setenv(projection.PATH_ENV, "fast")
    with pytest.raises(ValueError, match="TRIDIFF_CPU_PROJECTION: expected one of auto, linear, wxt, bmm"):
        projection.cpu_path(1, 512, 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_per_layer_rotary_and_norm_are_the_plain_formulas_bit_for_bit(dtype):
    """The forward's rotary (roll with a signed sin table) and RMS norm (F.rms_norm for
    fp32/fp64) give exactly tridiff.rotary.apply_rotary and transformers' formula."""
    from tridiff.layer_math import rms_norm, rotary_tables, rotate
    from tridiff.rotary import apply_rotary

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 6, 32, generator=g).to(dtype)
    cos, sin = (torch.randn(2, 5, 32, generator=g).to(dtype) for _ in range(2))
    assert torch.equal(rotate(x, *rotary_tables(cos, sin)), apply_rotary(x, cos, sin))
    h = (torch.randn(3, 7, 96, generator=g) * 3).to(dtype)
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    xf = h.to(acc)
    want = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(rms_norm(h, w, 1e-5), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_position_tables_are_the_rotary_and_scale_formulas(dtype):
    """Forwards with default positions gather cos/sin/query-scale rows from per-position
    tables: each row must be exactly what the formulas give at that position (positions
    past the llama-4 threshold included), and the tables grow when a cache needs more."""
    from tridiff.layer_math import rotary_tables
    from tridiff.rotary import cos_sin, llama4_query_scale

    model = _model(dtype)
    c = model.config
    pos = torch.tensor([[0, 1, 63, 64, 65, 127, 128, 300], [7, 8, 9, 10, 11, 12, 13, 14]])
    size, cos_t, sin_t, scale_t = model._position_tables(301)
    assert size >= 301
    cos, sin = rotary_tables(*cos_sin(pos, model.inv_freq, c.attention_factor, dtype))
    scale = llama4_query_scale(pos, c.llama_4_scaling_beta, c.original_max_position_embeddings, dtype)
    assert torch.equal(cos_t[pos], cos) and torch.equal(sin_t[pos], sin) and torch.equal(scale_t[pos], scale)
    assert model._position_tables(5 * size)[0] >= 5 * size
    # a forward over positions 290.. (default positions) equals one given them explicitly
    cache_a, cache_b = model.new_cache(1, 300), model.new_cache(1, 300)
    cache_a.lens.fill_(290)
    cache_b.lens.fill_(290)
    toks = torch.tensor([[5, 6, 7]])
    got = model(toks, cache_a)
    want = model(toks, cache_b, positions=torch.tensor([[290, 291, 292]]))
    assert torch.equal(got, want)
