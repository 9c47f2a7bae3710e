"""CUDA-graph decoding (generate(cuda_graphs=...)).

On CUDA: replaying the captured iteration gives exactly the eager tokens and counters
for AR, linear and quadratic self-speculation, on a batch of three prompts of
different lengths, greedy and sampled (same seed -> same tokens), with a row that
stops early on eos, on contiguous and paged caches.

On CPU: the argument rules, and the warm-up / capture / replay bookkeeping driven
through a stand-in capture that records nothing (like a real capture) and replays the
step eagerly, checking at every replay that the state buffers are the very tensors
that existed at capture time (the property a real graph relies on), also when the
next generate call reuses the kept run and its graphs.
"""
import pytest
import torch

from tridiff._checks import TridiffInputError
from tridiff.decode import graphs
from tridiff.decode.strategies import GRAPHED
from tridiff.generate import generate

L, N = 4, 8
CASES = [
    pytest.param("ar", {}, id="ar"),
    pytest.param("ar", {"temperature": 1.0}, id="ar-T1"),
    pytest.param("ar", {"paged": True, "page_size": 3}, id="ar-paged"),
    pytest.param("linear-spec", {}, id="linear"),
    pytest.param("linear-spec", {"temperature": 1.0, "rule": "lossless"}, id="linear-T1-lossless"),
    pytest.param("linear-spec", {"temperature": 1.0, "rule": "reference"}, id="linear-T1-reference"),
    pytest.param("linear-spec", {"threshold": 0.6}, id="linear-thr"),
    pytest.param("linear-spec", {"threshold": 0.6, "temperature": 1.0, "rule": "lossless"}, id="linear-thr-T1-lossless"),
    pytest.param("linear-spec", {"temperature": 1.0, "paged": True, "page_size": 3}, id="linear-T1-paged"),
    pytest.param("quadratic-spec", {}, id="quadratic"),
    pytest.param("quadratic-spec", {"paged": True, "page_size": 3}, id="quadratic-paged"),
    pytest.param("quadratic-spec", {"anchors": 2}, id="anchored-k2"),
    pytest.param("quadratic-spec", {"anchors": (0, 2), "paged": True, "page_size": 3}, id="anchored-fixed-paged"),
]


def _fields(out):
    return [(r.tokens, r.nfe, r.mean_accepted, r.iterations, r.forced_fills) for r in out.results]


def _state(run):
    """Identity, storage and layout of every tensor the step may touch between calls."""
    owners = {"run": vars(run), "cache": vars(run.cache)}
    return {(o, k): (id(v), v.data_ptr(), tuple(v.shape), v.dtype)
            for o, d in owners.items() for k, v in d.items() if isinstance(v, torch.Tensor)}


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Force the graphed path on CPU with a stand-in for warm-up and capture (no run is
    kept from another test, none is left behind)."""
    log = {"warm": 0, "capture": 0, "replay": 0, "pools": []}   # pools: (run, step name, pool) per capture
    graphs.KEPT.clear()

    def warm_up(fn):
        log["warm"] += 1
        fn()

    def capture(fn, pool=None):
        log["capture"] += 1   # a real capture only records: nothing runs here
        run = fn.__self__
        log["pools"].append((run, fn.__name__, pool))
        captured = _state(run)   # what a real graph would keep pointing at

        def replay():
            assert _state(run) == captured, f"state tensors of {fn.__name__} changed since its capture"
            fn()
            log["replay"] += 1
            assert _state(run) == captured, f"{fn.__name__} rebound or reallocated a state tensor"
        return replay

    monkeypatch.setattr(graphs, "use_graphs",
                        lambda flag, mode, device, graphed: "strict" if mode in GRAPHED else False)
    monkeypatch.setattr(graphs, "warm_up", warm_up)
    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(graphs, "new_pool", object, raising=False)   # a distinct token per pool
    yield log
    graphs.KEPT.clear()


@pytest.mark.parametrize("mode,extra", CASES)
def test_stand_in_graphs_equal_eager(model, prompts, stand_in_graphs, mode, extra):
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=-1, eos_check_every=2, seed=5, **extra)
    graphed = generate(model, prompts, **kw)
    log = dict(stand_in_graphs)
    assert log["warm"] >= 1 and log["capture"] >= 1 and log["replay"] >= 1
    # one stepper per mode; a threshold draft has three (begin + pass, extra pass, verify)
    assert log["capture"] <= log["warm"] <= (3 if "threshold" in extra else 1)
    with pytest.MonkeyPatch.context() as mp:   # the graph switch really off
        mp.setattr(graphs, "use_graphs", lambda flag, mode, device, graphed: False)
        eager = generate(model, prompts, **kw)
    assert stand_in_graphs == log   # the eager run went through no stand-in
    assert _fields(graphed) == _fields(eager)


@pytest.mark.parametrize("mode,extra", CASES)
def test_next_call_replays_the_kept_graphs(model, prompts, stand_in_graphs, mode, extra):
    """A second call with the same shape-fixing arguments but other prompts (other
    lengths) and another seed refills the kept buffers and replays the first call's
    graphs from its first iteration: no warm-up, no capture, and the tokens and counters
    of an eager run of the second call (nothing left over from the first)."""
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=-1, eos_check_every=2, **extra)
    other = [list(reversed(p)) + [3, 4][: b % 3] for b, p in enumerate(prompts)]
    assert [len(p) for p in other] != [len(p) for p in prompts]
    generate(model, prompts, seed=5, **kw)
    kept = graphs.KEPT[model][1]
    after_first = dict(stand_in_graphs)
    second = generate(model, other, seed=9, **kw)
    assert graphs.KEPT[model][1] is kept
    assert stand_in_graphs["warm"] == after_first["warm"] and stand_in_graphs["capture"] == after_first["capture"]
    assert stand_in_graphs["replay"] > after_first["replay"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graphs, "use_graphs", lambda flag, mode, device, graphed: False)
        eager = generate(model, other, seed=9, **kw)
    assert _fields(second) == _fields(eager)


def test_kept_run_changes_with_the_arguments(model, prompts, stand_in_graphs):
    kw = dict(mode="ar", block_length=L, eos_id=-1)
    generate(model, prompts, max_new_tokens=N, **kw)
    first = graphs.KEPT[model][1]
    generate(model, prompts[:2], max_new_tokens=N, **kw)        # another batch size: a new run
    assert graphs.KEPT[model][1] is not first and stand_in_graphs["capture"] == 2
    second = graphs.KEPT[model][1]
    generate(model, prompts[:2], max_new_tokens=N + 1, **kw)    # another max_new_tokens: new again
    assert graphs.KEPT[model][1] is not second and stand_in_graphs["capture"] == 3
    graphs.release_graphs(model)
    assert model not in graphs.KEPT


@pytest.mark.parametrize("extra", [{"threshold": 0.6}, {"threshold": 0.6, "temperature": 1.0, "rule": "lossless"}],
                         ids=["thr", "thr-T1-lossless"])
def test_the_graphs_of_one_run_share_one_pool(model, prompts, stand_in_graphs, extra):
    """Every step captured for one run gets the same memory pool (one
    torch.cuda.graph_pool_handle() per run, not a private pool per graph); another run
    gets its own, and a kept run replays without asking for one."""
    pools = stand_in_graphs["pools"]
    kw = dict(mode="linear-spec", max_new_tokens=2 * N, block_length=L, eos_id=-1, seed=5, **extra)
    generate(model, prompts, **kw)
    run = graphs.KEPT[model][1]
    assert len({name for _, name, _ in pools}) >= 2, pools   # a threshold draft captures several steps
    assert all(r is run for r, _, _ in pools)
    first = pools[0][2]
    assert first is not None and all(pool is first for _, _, pool in pools)
    generate(model, prompts, **dict(kw, seed=6))              # the kept run: replays, no capture
    assert all(r is run for r, _, _ in pools)
    generate(model, prompts[:2], **kw)                         # another batch: a new run, a new pool
    later = [pool for r, _, pool in pools if r is not run]
    assert later and all(pool is later[0] for pool in later) and later[0] is not first


def test_cuda_graphs_argument(model, prompts, monkeypatch):
    kw = dict(max_new_tokens=N, block_length=L, eos_id=-1)
    with pytest.raises(TridiffInputError, match="cuda_graphs"):
        generate(model, prompts[:1], mode="ar", cuda_graphs=True, **kw)   # a CPU model
    with pytest.raises(TridiffInputError, match="cuda_graphs"):
        generate(model, prompts[:1], mode="ar", cuda_graphs="yes", **kw)
    assert graphs.use_graphs(None, "ar", torch.device("cpu"), GRAPHED) is False
    assert graphs.use_graphs(None, "ar", torch.device("cuda"), GRAPHED) is True
    assert graphs.use_graphs(None, "diffusion", torch.device("cuda"), GRAPHED) is False
    assert graphs.use_graphs(False, "linear-spec", torch.device("cuda"), GRAPHED) is False
    assert graphs.use_graphs(True, "quadratic-spec", torch.device("cuda"), GRAPHED) == "strict"
    with pytest.raises(TridiffInputError, match="diffusion"):
        graphs.use_graphs(True, "diffusion", torch.device("cuda"), GRAPHED)

    def no_capture(fn):
        raise AssertionError("captured on CPU")
    monkeypatch.setattr(graphs, "warm_up", no_capture)
    monkeypatch.setattr(graphs, "capture", no_capture)
    out = generate(model, prompts[:1], mode="ar", **kw)   # None on CPU = eager
    assert len(out.results[0].tokens) == N


@pytest.mark.parametrize("strict", [False, True], ids=["auto", "asked"])
def test_failed_capture(model, prompts, monkeypatch, strict):
    """cuda_graphs=None: a step whose capture fails warns and runs eagerly, with the
    eager result; cuda_graphs=True: the failure is raised."""
    kw = dict(mode="linear-spec", max_new_tokens=N, block_length=L, eos_id=-1, temperature=1.0, seed=3)
    eager = generate(model, prompts, **kw)

    def capture(fn, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "use_graphs", lambda flag, mode, device, graphed: "strict" if strict else True)
    monkeypatch.setattr(graphs, "warm_up", lambda fn: fn())
    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(graphs, "new_pool", object)
    if strict:
        with pytest.raises(RuntimeError, match="capturing"):
            generate(model, prompts, **kw)
    else:
        with pytest.warns(RuntimeWarning, match="capture of linear_step failed"):
            out = generate(model, prompts, **kw)
        assert _fields(out) == _fields(eager)


# ---- on the GPU ---------------------------------------------------------------------------

@pytest.fixture
def graph_log(monkeypatch):
    """Counts real captures and replays (no run kept from another test, none left)."""
    log = {"capture": 0, "replay": 0}
    real = graphs.capture
    graphs.KEPT.clear()

    def capture(fn, pool=None):
        log["capture"] += 1
        replay = real(fn, pool)

        def counted():
            log["replay"] += 1
            replay()
        return counted
    monkeypatch.setattr(graphs, "capture", capture)
    yield log
    graphs.KEPT.clear()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("mode,extra", CASES)
def test_graph_replay_equals_eager(cuda_model, prompts, graph_log, mode, extra):
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_check_every=2, seed=5, **extra)
    eager = generate(cuda_model, prompts, cuda_graphs=False, eos_id=-1, **kw)
    assert graph_log["capture"] == 0
    graphed = generate(cuda_model, prompts, cuda_graphs=True, eos_id=-1, **kw)
    assert graph_log["capture"] >= 1 and graph_log["replay"] >= 1
    assert _fields(graphed) == _fields(eager)
    # Row 0 stops early on its own eos while the others keep running (idle rows replay).
    eos = eager.results[0].tokens[1]
    eager_eos = generate(cuda_model, prompts, cuda_graphs=False, eos_id=eos, **kw)
    graphed_eos = generate(cuda_model, prompts, cuda_graphs=True, eos_id=eos, **kw)
    assert eager_eos.results[0].tokens[-1] == eos
    assert _fields(graphed_eos) == _fields(eager_eos)


@needs_cuda
@pytest.mark.filterwarnings("error::RuntimeWarning")   # no silent fall-back to eager
def test_graphs_on_by_default_on_cuda(cuda_model, prompts, graph_log):
    kw = dict(max_new_tokens=N, block_length=L, eos_id=-1)
    a = generate(cuda_model, prompts, mode="linear-spec", **kw)
    assert graph_log["capture"] == 1 and graph_log["replay"] >= 1
    generate(cuda_model, prompts, mode="diffusion", **kw)   # diffusion stays eager
    assert graph_log["capture"] == 1
    b = generate(cuda_model, prompts, mode="linear-spec", cuda_graphs=False, **kw)
    assert _fields(a) == _fields(b)


@needs_cuda
@pytest.mark.parametrize("mode", ["ar", "linear-spec", "quadratic-spec"])
def test_real_graphs_are_reused_by_the_next_call(cuda_model, prompts, graph_log, mode):
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=-1, cuda_graphs=True)
    other = [list(reversed(p)) for p in prompts]
    generate(cuda_model, prompts, seed=1, **kw)
    captured = graph_log["capture"]
    second = generate(cuda_model, other, seed=2, **kw)
    assert graph_log["capture"] == captured >= 1
    eager = generate(cuda_model, other, seed=2, **dict(kw, cuda_graphs=False))
    assert _fields(second) == _fields(eager)
