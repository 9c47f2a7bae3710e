"""Timing (METHOD: warm up, many reps, median).

  * CUDA: one pair of CUDA events around each call, the L2 flushed before it by writing
    a 256 MB buffer (outside the events), median of the per-call times
    (triton.testing.do_bench's scheme, without needing triton).
  * CUDA graph (`time_graph`): for launch-bound shapes; many calls captured in one graph,
    time per call = replay time / calls. Inputs rotate (`Rotator`) to defeat L2.
  * CPU: time.perf_counter around each call, median.
`SyncCounter` counts the host synchronisations PyTorch sees.
"""
from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any Hopper L2 (50-60 MB)


def pick_device(requested: Optional[str] = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str  # "cuda_events+l2flush", "cuda_graph", "perf_counter"


def _summary(times_ms: list[float], method: str) -> Timing:
    s = sorted(times_ms)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731
    return Timing(statistics.median(s), q(0.2), q(0.8), len(s), method)


_flush_buf: dict[torch.device, torch.Tensor] = {}


def flush_l2(device: torch.device) -> None:
    """Overwrite 256 MB so the next call starts with a cold L2 (as do_bench does)."""
    if device.type != "cuda":
        return
    buf = _flush_buf.get(device)
    if buf is None:
        buf = _flush_buf[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    buf.zero_()


def _rep_count(est_ms: float, rep_ms: float, min_reps: int, max_reps: int) -> int:
    return int(max(min_reps, min(max_reps, rep_ms / max(est_ms, 1e-4))))


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25.0,
            rep_ms: float = 100.0, min_reps: int = 5, max_reps: int = 1000,
            flush: bool = True) -> Timing:
    """Median time of one fn() call, after warm-up (the first call compiles/autotunes)."""
    fn()
    sync(device)
    # A short estimate decides how many warm-up and timed reps fit the budgets.
    t0 = time.perf_counter()
    fn()
    sync(device)
    est_ms = (time.perf_counter() - t0) * 1e3
    if est_ms > 4 * rep_ms:  # a slow reference path: a few reps say enough, keep the budget
        min_reps = 3
    for _ in range(min(100, int(warmup_ms / max(est_ms, 1e-3)))):
        fn()
    reps = _rep_count(est_ms, rep_ms, min_reps, max_reps)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            if flush:
                flush_l2(device)
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return _summary(times, "cuda_events+l2flush" if flush else "cuda_events")
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return _summary(times, "perf_counter")


def time_graph(fn: Callable[[], object], device: torch.device, *, calls: int = 20,
               rep_ms: float = 100.0, min_reps: int = 5, max_reps: int = 200) -> Timing:
    """Per-call time from replaying a CUDA graph holding `calls` fn() calls.

    Removes launch gaps for launch-bound shapes. L2 is flushed before each replay only,
    so fn should rotate its inputs (see Rotator) when one call's bytes fit in L2.
    Falls back to time_fn on CPU.
    """
    if device.type != "cuda":
        return time_fn(fn, device, rep_ms=rep_ms, min_reps=min_reps, max_reps=max_reps)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture stream, as PyTorch requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize(device)
    est_ms = (time.perf_counter() - t0) * 1e3
    reps = _rep_count(est_ms, rep_ms, min_reps, max_reps)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush_l2(device)
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) / calls for s, e in zip(starts, ends)]
    del graph
    return _summary(times, "cuda_graph")


class Rotator:
    """Calls fn(*args) cycling over several argument sets so that repeated calls do not
    hit in L2. `sets_needed` says how many sets make the working set exceed 2x L2."""

    def __init__(self, fn: Callable, arg_sets: list):
        self.fn, self.arg_sets, self.i = fn, arg_sets, 0

    def __call__(self):
        args = self.arg_sets[self.i]
        self.i = (self.i + 1) % len(self.arg_sets)
        return self.fn(*args)

    @staticmethod
    def sets_needed(bytes_per_call: float, device: torch.device, cap: int = 8) -> int:
        if device.type != "cuda":
            return 1
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 60 << 20)
        return int(max(1, min(cap, -(-2 * l2 // max(int(bytes_per_call), 1)))))


class SyncCounter:
    """Counts host synchronisations on CUDA via torch's sync debug mode (each sync that
    PyTorch can see -- .item(), .cpu(), nonzero, ... -- raises a warning we count)."""

    def __init__(self, device: torch.device):
        self.device, self.count, self.supported = device, 0, device.type == "cuda"

    def __enter__(self):
        if self.supported:
            self._cm = warnings.catch_warnings(record=True)
            self._log = self._cm.__enter__()
            warnings.simplefilter("always")
            self._old = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(1)
        return self

    def __exit__(self, *exc):
        if self.supported:
            torch.cuda.set_sync_debug_mode(self._old)
            self.count = sum(1 for w in self._log if "synchroniz" in str(w.message).lower())
            self._cm.__exit__(*exc)
        return False
