"""Bad input to tridiff.cupy raises TridiffInputError naming the argument, before any
allocation or launch (the launches are recorded by the stand-in cupy: none may happen),
and the module works with torch absent."""
import subprocess
import sys

import numpy as np
import pytest

import tridiff.cupy as tc
from tests.cupy.support import FakeArray
from tridiff.errors import TridiffInputError

B, T, H, D, TMAX, PAGE = 2, 4, 2, 8, 16, 4


def kv(paged=False):
    """Valid kv_write_ arguments (a dict, so each case edits one)."""
    if paged:
        cache = (B * TMAX // PAGE, PAGE, H, D)
        table = np.arange(B * TMAX // PAGE, dtype=np.int32).reshape(B, TMAX // PAGE)
    else:
        cache, table = (B, TMAX, H, D), None
    return dict(k_cache=np.zeros(cache, np.float16), v_cache=np.zeros(cache, np.float16),
                k=np.ones((B, T, H, D), np.float16), v=np.ones((B, T, H, D), np.float16),
                cache_lens=np.array([0, 5], np.int32), q_lens=np.array([4, 2], np.int32), block_table=table)


def compact():
    return dict(k_cache=np.zeros((B, TMAX, H, D), np.float32), v_cache=np.zeros((B, TMAX, H, D), np.float32),
                cache_lens=np.array([3, 5], np.int32), src_index=np.array([[1, -1], [0, 1]], np.int32),
                block_table=None)


V, N = 50, 3


def linear():
    return dict(target_logits=np.zeros((B, N + 1, V), np.float32), draft_tokens=np.zeros((B, N), np.int64),
                cache_lens=np.array([7, 9], np.int32), eos_id=2)


def _fake(d):
    return {k: FakeArray(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


KV_CASES = {
    "k 3-D": (lambda d: d.update(k=d["k"][0]), "k"),
    "v shape": (lambda d: d.update(v=d["v"][:, :2]), "v"),
    "v dtype": (lambda d: d.update(v=d["v"].astype(np.float32)), "v"),
    "k not dense": (lambda d: d.update(k=np.swapaxes(np.ones((B, T, D, H), np.float16), 2, 3)), "k"),
    "cache head dim": (lambda d: d.update(k_cache=np.zeros((B, TMAX, H, D + 1), np.float16)), "k_cache"),
    "cache dtype": (lambda d: d.update(k_cache=d["k_cache"].astype(np.float32),
                                       v_cache=d["v_cache"].astype(np.float32)), "k_cache"),
    "v_cache dtype": (lambda d: d.update(v_cache=d["v_cache"].astype(np.float32)), "v_cache"),
    "lens int64": (lambda d: d.update(cache_lens=d["cache_lens"].astype(np.int64)), "cache_lens"),
    "q_lens shape": (lambda d: d.update(q_lens=np.array([1], np.int32)), "q_lens"),
    "q_lens > T": (lambda d: d.update(q_lens=np.array([T + 1, 0], np.int32)), "q_lens"),
    "past capacity": (lambda d: d.update(cache_lens=np.array([0, TMAX - 1], np.int32)), "cache_lens"),
    "negative length": (lambda d: d.update(cache_lens=np.array([-1, 0], np.int32)), "cache_lens"),
    "not an array": (lambda d: d.update(q_lens=[4, 2]), "q_lens"),
}
PAGED_CASES = {
    "table int64": (lambda d: d.update(block_table=d["block_table"].astype(np.int64)), "block_table"),
    "table rows": (lambda d: d.update(block_table=d["block_table"][:1]), "block_table"),
    "unmapped page": (lambda d: d["block_table"].__setitem__((1, 1), -1), "block_table"),
    "page out of range": (lambda d: d["block_table"].__setitem__((0, 0), 99), "block_table"),
}
COMPACT_CASES = {
    "src int64": (lambda d: d.update(src_index=d["src_index"].astype(np.int64)), "src_index"),
    "src past n": (lambda d: d["src_index"].__setitem__((0, 0), 2), "src_index"),
    "src below -1": (lambda d: d["src_index"].__setitem__((0, 0), -2), "src_index"),
    "src rows": (lambda d: d.update(src_index=d["src_index"][:1]), "k_cache"),
    "past capacity": (lambda d: d.update(cache_lens=np.array([TMAX - 1, 0], np.int32)), "cache_lens"),
    "cache 3-D": (lambda d: d.update(k_cache=d["k_cache"][0]), "k_cache"),
}
ACCEPT_CASES = {
    "rows != n+1": (lambda d: d.update(target_logits=d["target_logits"][:, :N]), "target_logits"),
    "logits int": (lambda d: d.update(target_logits=d["target_logits"].astype(np.int32)), "target_logits"),
    "bf16 storage without flag": (lambda d: d.update(target_logits=d["target_logits"].astype(np.uint16)),
                                  "target_logits"),
    "draft float": (lambda d: d.update(draft_tokens=d["draft_tokens"].astype(np.float32)), "draft_tokens"),
    "draft id >= V": (lambda d: d["draft_tokens"].__setitem__((1, 2), V), "draft_tokens"),
    "eos >= V": (lambda d: d.update(eos_id=V), "eos_id"),
    "eos not int": (lambda d: d.update(eos_id=2.0), "eos_id"),
    "lens int64": (lambda d: d.update(cache_lens=d["cache_lens"].astype(np.int64)), "cache_lens"),
    "negative temperature": (lambda d: d.update(temperature=-0.5), "temperature"),
    "sampled without seed": (lambda d: d.update(temperature=0.7), "seed"),
    "seed int32": (lambda d: d.update(temperature=0.7, seed=np.zeros(B, np.int32), offset=np.zeros(B, np.int64)),
                   "seed"),
}


def _expect(fn, kwargs, arg, launched):
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(TridiffInputError, match=rf"^{arg}: expected"):
        fn(**_fake(kwargs))
    assert launched == [], "a kernel was launched before the error"
    for k, v in before.items():
        assert np.array_equal(kwargs[k], v), f"{k} was written"


def test_valid_arguments_launch(launched):
    tc.kv_append_(**_fake(kv()))
    tc.kv_write_(**_fake(kv(paged=True)))
    tc.kv_compact_(**_fake(compact()))
    tc.accept_linear(**_fake(linear()))
    assert len(launched) >= 5


# (launcher name, valid arguments, {case: (edit, argument the error must name)})
REFUSALS = [("kv_append_", kv, KV_CASES), ("kv_write_", lambda: kv(paged=True), PAGED_CASES),
            ("kv_compact_", compact, COMPACT_CASES), ("accept_linear", linear, ACCEPT_CASES)]


@pytest.mark.parametrize("fn,good,edit,arg", [
    pytest.param(fn, good, edit, arg, id=f"{fn}-{case}")
    for fn, good, cases in REFUSALS for case, (edit, arg) in cases.items()])
def test_launcher_refuses(launched, fn, good, edit, arg):
    d = good()
    edit(d)
    _expect(getattr(tc, fn), d, arg, launched)


def test_accept_quadratic_and_sample_refuse(launched):
    L = 2
    good = dict(logits=np.zeros((B, L * (L + 1), V), np.float32), draft=np.zeros((B, L), np.int64),
                cache_lens=np.array([1, 2], np.int32), eos_id=-1)
    _expect(tc.accept_quadratic, dict(good, logits=good["logits"][:, :5]), "logits", launched)
    _expect(tc.accept_quadratic, dict(good, draft=np.zeros((B, 0), np.int64), logits=good["logits"][:, :0]),
            "logits", launched)
    _expect(tc.sample, dict(logits=np.zeros((B, V), np.float32)), "logits", launched)
    _expect(tc.sample, dict(logits=np.zeros((B, 1, V), np.float32), temperature=1.0), "seed", launched)
    _expect(tc.sample, dict(logits=np.zeros((B, 1, V), np.float32), temperature=1.0,
                            seed=np.zeros(B, np.int64), offset=np.zeros(B + 1, np.int64)), "offset", launched)
    tc.accept_quadratic(**_fake(good))
    assert launched


def test_value_checks_can_be_switched_off(launched, monkeypatch):
    """TRIDIFF_CHECK_VALUES=0 skips the host copies (layouts are still checked)."""
    monkeypatch.setenv("TRIDIFF_CHECK_VALUES", "0")
    d = kv()
    d["q_lens"] = np.array([T + 1, 0], np.int32)   # a value error: no longer looked at
    tc.kv_append_(**_fake(d))
    assert launched
    d = kv()
    d["cache_lens"] = d["cache_lens"].astype(np.int64)   # a layout error: still refused
    with pytest.raises(TridiffInputError, match="^cache_lens"):
        tc.kv_append_(**_fake(d))


def test_works_without_torch():
    """tridiff.cupy and its checks import and run with torch unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import tridiff.cupy as tc\n"
            "from tridiff.cupy import _validate\n"
            "from tridiff.errors import TridiffInputError\n"
            "st = tc.status()\n"
            "assert set(st) == {'version', 'available', 'error'}\n"
            "try:\n"
            "    _validate.sampling(-1.0, None, None, 1)\n"
            "except TridiffInputError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "refused: temperature: expected" in out.stdout
