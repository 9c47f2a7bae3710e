"""Result rows: one JSON line per (op, backend, shape), compared with the best baseline of
the same run, plus the printed table."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from bench.machine import Peaks, environment, measure_peaks
from bench.timing import Timing

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
REQUIRED_KEYS = (
    "op", "backend", "shape", "dtype", "median_ms", "gbps", "tflops", "peak_fraction",
    "baseline", "baseline_ms", "ratio", "device", "torch", "triton", "cuda", "git_rev", "timestamp",
)


@dataclass
class Row:
    op: str
    backend: str
    shape: dict
    dtype: str
    median_ms: float
    role: str = "tridiff"         # "tridiff" or "baseline"
    bytes: Optional[float] = None  # minimum bytes through device memory (formula in the bench)
    flops: Optional[float] = None
    method: str = ""
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    gbps: Optional[float] = None
    tflops: Optional[float] = None
    peak_fraction: Optional[float] = None
    floor_ms: Optional[float] = None
    baseline: Optional[str] = None
    baseline_ms: Optional[float] = None
    ratio: Optional[float] = None  # baseline_ms / median_ms (> 1: faster than the baseline)
    group: str = ""
    extra: dict = field(default_factory=dict)


def shape_str(shape: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())


class Recorder:
    """Collects rows for one benchmark, compares each with the best baseline of its group
    (same op and shape unless a group is given), writes JSON lines and prints a table."""

    def __init__(self, name: str, device: torch.device, out_dir=None, quick: bool = False,
                 peaks: Optional[Peaks] = None, budget_s: Optional[float] = None):
        self.name, self.device, self.quick = name, device, quick
        self.out_dir = Path(out_dir) if out_dir else DEFAULT_OUT
        self.env = environment(device)
        self.peaks = peaks or measure_peaks(device, quick=quick)
        self.rows: list[Row] = []
        self.skipped: list[dict] = []
        self.deadline = time.monotonic() + budget_s if budget_s else None
        self._finished = False
        self._install_sigterm()

    def _install_sigterm(self) -> None:
        """gpu_suite.sh guards each stage with `timeout`: on SIGTERM write the rows
        measured so far instead of losing them, then exit 124."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum, frame):
            if not self._finished:
                self.skip("*", "*", {}, "stopped by SIGTERM (stage timeout): later shapes not measured")
                self.finish()
            os._exit(124)

        self._old_term = signal.signal(signal.SIGTERM, on_term)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def add(self, op: str, backend: str, shape: dict, dtype, timing: Timing, *, role: str = "tridiff",
            bytes: Optional[float] = None, flops: Optional[float] = None, group: str = "", **extra) -> Row:
        s = timing.median_ms * 1e-3
        row = Row(op=op, backend=backend, shape=dict(shape), dtype=str(dtype).replace("torch.", ""),
                  median_ms=timing.median_ms, role=role, bytes=bytes, flops=flops, method=timing.method,
                  p20_ms=timing.p20_ms, p80_ms=timing.p80_ms, group=group, extra=extra)
        fractions = []
        if bytes:
            row.gbps = bytes / s / 1e9
            fractions.append(row.gbps / self.peaks.copy_gbps)
        if flops:
            row.tflops = flops / s / 1e12
            fractions.append(row.tflops / self.peaks.matmul_tflops)
        if fractions:
            row.peak_fraction = max(fractions)
            row.floor_ms = 1e3 * max((bytes or 0) / (self.peaks.copy_gbps * 1e9),
                                     (flops or 0) / (self.peaks.matmul_tflops * 1e12))
        self.rows.append(row)
        return row

    def skip(self, op: str, backend: str, shape: dict, reason: str) -> None:
        self.skipped.append({"op": op, "backend": backend, "shape": dict(shape), "reason": reason})

    def _key(self, r: Row):
        return r.group or (r.op, shape_str(r.shape))

    def compare(self) -> None:
        best: dict = {}
        for r in self.rows:
            if r.role == "baseline":
                k = self._key(r)
                if k not in best or r.median_ms < best[k].median_ms:
                    best[k] = r
        for r in self.rows:
            b = best.get(self._key(r))
            if b is not None:
                r.baseline, r.baseline_ms = b.backend, b.median_ms
                r.ratio = b.median_ms / r.median_ms

    def records(self) -> list[dict]:
        out = []
        for r in self.rows:
            d = dict(r.__dict__)
            d.update({k: self.env[k] for k in ("device", "torch", "triton", "cuda", "git_rev", "timestamp")})
            d["peak_copy_gbps"] = self.peaks.copy_gbps
            d["peak_matmul_tflops"] = self.peaks.matmul_tflops
            d["quick"] = self.quick
            out.append(d)
        return out

    def finish(self, print_table: bool = True) -> list[dict]:
        self._finished = True
        if getattr(self, "_old_term", None) is not None:
            import signal

            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None
        self.compare()
        recs = self.records()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"{self.name}.jsonl", "a") as f:
            for d in recs:
                f.write(json.dumps(d, default=str) + "\n")
        if self.skipped:  # one file for every benchmark (the GPU lease returns at most 8 files)
            with open(self.out_dir / "skipped.jsonl", "a") as f:
                for d in self.skipped:
                    f.write(json.dumps(dict(d, bench=self.name, timestamp=self.env["timestamp"]), default=str) + "\n")
        if print_table:
            print(self.table())
        return recs

    def table(self) -> str:
        p = self.peaks
        lines = [f"== {self.name} on {self.env['device']} | torch {self.env['torch']} triton "
                 f"{self.env['triton']} cuda {self.env['cuda']} | git {self.env['git_rev'][:12]}",
                 f"   measured peaks: copy {p.copy_gbps:.0f} GB/s, {p.matmul_dtype} matmul "
                 f"{p.matmul_tflops:.2f} TFLOP/s"
                 + ("  (CPU: tiny inputs sit in cache, so %peak vs a DRAM copy can pass 100; plumbing only)"
                    if self.device.type == "cpu" else ""),
                 f"{'op':<22} {'backend':<18} {'shape':<44} {'median':>10} {'GB/s':>8} {'TF/s':>8} "
                 f"{'%peak':>6} {'vs best baseline':>22}"]
        for r in self.rows:
            vs = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else "-"
            lines.append(
                f"{r.op[:22]:<22} {r.backend[:18]:<18} {shape_str(r.shape)[:44]:<44} {fmt_ms(r.median_ms):>10} "
                f"{_f(r.gbps, 0):>8} {_f(r.tflops, 2):>8} {_f(r.peak_fraction and 100 * r.peak_fraction, 1):>6} "
                f"{vs[:22]:>22}")
        seen: dict = {}  # one line per (op, backend, reason): the reasons repeat across shapes
        for s in self.skipped:
            key = (s["op"], s["backend"], s["reason"][:100])
            seen[key] = seen.get(key, 0) + 1
        for (op, backend, reason), n in seen.items():
            lines.append(f"   skipped {op} {backend} ({n} shape{'s' if n > 1 else ''}): {reason}")
        return "\n".join(lines)


def _f(x, nd):
    return "-" if x is None else f"{x:.{nd}f}"


def fmt_ms(ms: float) -> str:
    return f"{ms * 1e3:.1f}us" if ms < 1 else f"{ms:.3f}ms"
