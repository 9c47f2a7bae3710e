"""CUDA-graph replay of decoding iterations, and the graphed run kept per model.

A strategy's iteration is a method that reads and writes only state buffers made
before the loop, in place, with shapes fixed by the RunShape: no host read, no
host-to-device copy, no branch on a tensor value. Graphed runs it once eagerly as
warm-up on a side stream, captures it into a torch.cuda.CUDAGraph on its second call
and replays that from then on. Random offsets live in device tensors, so a replay draws
fresh noise exactly as the eager step would.

The last graphed run of a model (its graphs and the buffers they point at) is kept in
KEPT under its RunShape; the next generate call with an equal shape refills the buffers
in place and replays from its first iteration, with no warm-up and no capture (which
synchronises the device). release_graphs(model) drops it.

The graphs of one run share one memory pool (new_pool, made at the run's first
capture): a step leaves nothing allocated behind (it writes the run's buffers in place;
the tests check it never rebinds or reallocates one), so one graph's temporaries are
dead whenever another graph of the run replays, in any order, and the run's graphs
never replay concurrently (one stream). One pool instead of a private pool per graph.

warm_up, capture, new_pool, use_graphs and KEPT are looked up at call time, so tests can
replace them (tests/generate/test_cuda_graphs.py drives the bookkeeping on CPU that way).
"""
from __future__ import annotations

import warnings
import weakref

import torch

from tridiff._checks import TridiffInputError

GRAPH_CAPACITY_STEP = 256   # graphed runs round the cache capacity up to this, for reuse

# model -> (RunShape, run): the last graphed run of each model, kept for the next call.
KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# run -> the memory pool its graphs share (for as long as the run lives).
POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def kept_run(model, shape):
    """The run kept for `model` if it was made for `shape`, else None."""
    kept = KEPT.get(model)
    return kept[1] if kept is not None and kept[0] == shape else None


def keep_run(model, shape, run) -> None:
    KEPT[model] = (shape, run)


def release_graphs(model) -> None:
    """Drop the CUDA graphs and decoding buffers (KV cache included) kept for `model`."""
    KEPT.pop(model, None)


def use_graphs(flag, strategy: str, device, graphed=()):
    """False (eager), True (graphs; a failed capture falls back to eager) or "strict"
    (asked for: a failed capture raises), for the strategy named `strategy`; `graphed`:
    the names of the strategies whose iterations can be graphed (the strategy table's
    GRAPHED, passed down by the caller, so this module knows no strategy)."""
    if flag is not None and not isinstance(flag, bool):
        raise TridiffInputError(f"cuda_graphs: expected None, True or False, got {flag!r}")
    if flag is None:   # automatic: a failed capture warns and the step runs eagerly
        return device.type == "cuda" and strategy in graphed
    if flag and device.type != "cuda":
        raise TridiffInputError(f"cuda_graphs: expected None or False for a model on {device} "
                                "(CUDA graphs need a CUDA model)")
    if flag and strategy not in graphed:
        raise TridiffInputError(f"cuda_graphs: expected None or False for {strategy} "
                                f"(graphed modes: {', '.join(graphed)})")
    return "strict" if flag else False


class Graphed:
    """Calls fn eagerly once as warm-up on a side stream (lazy init, allocator, kernel
    compilation and autotuning happen there; that call is a real iteration), captures
    fn into a CUDA graph on the second call and replays it from then on (capture only
    records, so the replay right after it is that call's iteration). fn must read and
    write only tensors that outlive it, in place (torch.cuda.graphs semantics)."""

    def __init__(self, fn, strict):
        self.fn, self.strict, self.replay, self.warm = fn, strict, None, False

    def __call__(self):
        if self.replay is None:
            if not self.warm:
                warm_up(self.fn)
                self.warm = True
                return
            try:
                self.replay = capture(self.fn, run_pool(getattr(self.fn, "__self__", self.fn)))
            except Exception as exc:   # a failed capture ran nothing: the state is intact
                if self.strict:
                    raise
                warnings.warn(f"CUDA graph capture of {getattr(self.fn, '__name__', 'a step')} failed "
                              f"({exc}); running it eagerly", RuntimeWarning, stacklevel=2)
                self.replay = self.fn
        self.replay()


def warm_up(fn) -> None:
    """Run fn once on a side stream (what torch.cuda.graphs asks before a capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


def run_pool(run):
    """The memory pool shared by the graphs of `run` (the run a step is a method of)."""
    pool = POOLS.get(run)
    if pool is None:
        pool = POOLS[run] = new_pool()
    return pool


def new_pool():
    return torch.cuda.graph_pool_handle()


def capture(fn, pool=None):
    """Record fn into a CUDA graph (nothing runs), its memory from `pool` (a private
    pool if None), and return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph.replay
