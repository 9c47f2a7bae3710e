"""Instrumentation points of the decoding loop, for tests and profilers.

The loop looks each one up here at call time, so replacing a module attribute
(monkeypatch.setattr(hooks, "step", ...)) takes effect on the next generate call.
tests/generate/test_sync_audit.py uses them to tell where a host read happens.
The defaults do nothing.
"""
from __future__ import annotations


def step(run, fn):
    """Returns what the loop calls for each iteration of step `fn` of `run` (fn is the
    eager step or its graph replay). Called once per step kind, when the loop is set up,
    just before its first iteration."""
    return fn


def host_check(run, i, check):
    """Runs one spaced host check at iteration (or draft pass) i: check() -> whether any
    row still runs (drafts). Only every run.check_every-th one reads the device."""
    return check()


def loop_done(run) -> None:
    """Called when the loop is over, before the results are copied to the host."""
