"""Shared benchmark machinery, one import for the bench modules.

  timing   bench.timing  : time_fn (CUDA events + L2 flush / perf_counter), time_graph
                           (CUDA-graph replays), Rotator (input rotation), SyncCounter
  ceilings bench.machine : measure_peaks (copy GB/s, matmul TFLOP/s, same process),
                           environment (device, versions, git revision, timestamp)
  rows     bench.record  : Recorder -> <out>/<name>.jsonl, baselines compared, table
and here what every bench module's run()/main() repeats: the shared CLI flags and the
`main` that hands them to run() (bench_main), the device + plan + Recorder a run starts
with (start_run), the tridiff backends available for an op (backends_per_op records why
the others are skipped), tridiff's host-side value checks switched off while timing, and
a per-forward timer for end-to-end runs (ForwardLog).
"""
from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch

from bench.machine import REPO_ROOT, Peaks, environment, git_rev, measure_peaks  # noqa: F401
from bench.record import DEFAULT_OUT, REQUIRED_KEYS, Recorder, Row, fmt_ms, shape_str  # noqa: F401
from bench.timing import (L2_FLUSH_BYTES, Rotator, SyncCounter, Timing, flush_l2, pick_device,  # noqa: F401
                          sync, time_fn, time_graph)


@contextmanager
def no_value_checks():
    """tridiff's public ops copy a few integers to the host to validate values; a
    benchmark of a CUDA op must not time that host sync (validated once beforehand)."""
    old = os.environ.get("TRIDIFF_CHECK_VALUES")
    os.environ["TRIDIFF_CHECK_VALUES"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRIDIFF_CHECK_VALUES", None)
        else:
            os.environ["TRIDIFF_CHECK_VALUES"] = old


def checks_off_on_cuda(device: torch.device):
    """no_value_checks() on CUDA; on CPU the checks stay on (they cost no device sync there)."""
    return no_value_checks() if device.type == "cuda" else nullcontext()


def arg_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="few small shapes (CPU: tiny)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new shapes after this")
    p.add_argument("--backends", default=None, help="comma list of tridiff backends (default: all available)")
    return p


def bench_main(run, doc: str, argv=None, **extra_flags: str) -> int:
    """A bench module's whole `main`: the shared flags, plus `--NAME` (default None, the
    value as its help) for each extra flag, parsed and handed to run(); exit status 0."""
    ap = arg_parser(doc.splitlines()[0])
    for flag, help_text in extra_flags.items():
        ap.add_argument(f"--{flag}", default=None, help=help_text)
    args = ap.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, device=args.device, backends=args.backends, budget_s=args.budget_s,
        **{flag: getattr(args, flag) for flag in extra_flags})
    return 0


def start_run(name: str, plan, quick: bool, device, out_dir, budget_s, overrides, **plan_kw):
    """How every run() begins: the device, the shape plan for it (test overrides applied)
    and the Recorder writing <out_dir>/<name>.jsonl. Returns (device, plan, recorder)."""
    device = pick_device(device)
    p = plan(device, quick, **plan_kw)
    p.update(overrides or {})
    return device, p, Recorder(name, device, out_dir, quick=quick, budget_s=budget_s)


def backends_per_op(rec: Recorder, ops, device: torch.device, requested: Optional[str] = None) -> dict:
    """{op: tridiff backends that can serve it here}; each one left out is recorded as a
    shape-less skip with its reason."""
    ok = {}
    for op in ops:
        ok[op], why = tridiff_backends(op, device, requested)
        for name, reason in why.items():
            rec.skip(op, name, {}, reason)
    return ok


def tridiff_backends(op: str, device: torch.device, requested: Optional[str] = None) -> tuple[list, dict]:
    """Backends that can be imported and are available here for `op`, and why the others are not."""
    from tridiff import _dispatch

    names = requested.split(",") if requested else list(_dispatch.BACKENDS)
    ok, why = [], {}
    for name in names:
        mod = _dispatch.backend_module(name)
        if mod is None:
            why[name] = _dispatch._import_errors.get(name, "cannot be imported")
            continue
        un = getattr(mod, "unavailable", None)
        reason = un() if un is not None else None
        if reason is None and not hasattr(mod, op):
            reason = f"does not implement {op}"
        if reason is None and name == "triton" and device.type == "cpu" and not (
                requested and os.environ.get("TRITON_INTERPRET") == "1"):
            reason = ("Triton on CPU runs only interpreted (~500x slower, not a speed number); "
                      "ask with --backends triton and TRITON_INTERPRET=1")
        if reason is None and name == "cpp" and device.type == "cuda":
            reason = "cpp is the CPU backend"
        if reason is None and name == "cuda" and device.type == "cpu":
            reason = "cuda backend needs a CUDA device"
        if reason:
            why[name] = reason
        else:
            ok.append(name)
    return ok, why


class ForwardLog:
    """Counts and times every forward of a tridiff model by its number of token rows
    (installed as an instance attribute, so generate's calls go through it). With
    first_apart, the first forward of the call (prefill, or prompt + first draft) goes to
    .first = (rows, seconds) instead of .by_rows."""

    def __init__(self, model, first_apart: bool = False):
        self.model, self.by_rows, self.adapter_forwards = model, {}, 0
        self.first_apart, self.first = first_apart, None

    @contextmanager
    def installed(self):
        inner = type(self.model).forward.__get__(self.model)

        def forward(tokens, *args, **kwargs):
            t0 = time.perf_counter()
            out = inner(tokens, *args, **kwargs)
            dt, rows = time.perf_counter() - t0, tokens.shape[1]
            self.adapter_forwards += bool(kwargs.get("adapter")) and self.model.has_adapter
            if self.first_apart and self.first is None:
                self.first = (rows, dt)
            else:
                n, s = self.by_rows.get(rows, (0, 0.0))
                self.by_rows[rows] = (n + 1, s + dt)
            return out

        self.model.forward = forward
        try:
            yield self
        finally:
            del self.model.forward
