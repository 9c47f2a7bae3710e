"""Helpers for the server tests: skip reasons for a missing serve stack, servers on the
bundled model, an httpx client, a step gate, and a scripted stand-in engine for the
engine thread's failure paths (a real engine cannot be made to fail on demand)."""
from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest

from tridiff.errors import TridiffInputError

for _mod in ("starlette", "uvicorn", "httpx", "jinja2"):
    pytest.importorskip(_mod, reason=f"tridiff serve's tests need {_mod} (pip install tridiff[serve] httpx)")


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def engine_stats(state) -> dict:
    """Fresh counts from the engine thread (between two steps), pages included."""
    return state.loop.query_stats().result(timeout=30)


def pages_all_free(state) -> bool:
    s = engine_stats(state)
    return s["free_pages"] == s["total_pages"] and s["running"] == 0 and s["waiting"] == 0 and s["active"] == 0


@contextlib.contextmanager
def gated(engine):
    """engine.step waits for `gate.set()` (per step while it is cleared): requests stay
    in flight as long as a test needs. Yields the gate (an Event, initially clear)."""
    gate = threading.Event()
    step = engine.step

    def gated_step():
        gate.wait(30)
        return step()

    engine.step = gated_step
    try:
        yield gate
    finally:
        gate.set()
        del engine.step  # the class's method again


@contextlib.contextmanager
def slowed(engine, seconds: float):
    """Every engine.step takes at least `seconds` (a stream stays open for a while)."""
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    engine.step = slow_step
    try:
        yield
    finally:
        del engine.step


class ScriptedEngine:
    """The Engine contract with a fixed script: request r emits ids r.prompt[-1] + 1, + 2, ...
    (mod vocab) one per step until max_new_tokens; one page per request.
    fail_steps: the numbers of the steps (1-based) whose step() raises."""

    def __init__(self, vocab_size=64, eos_token_id=3, total_pages=8, fail_steps=()):
        self.model = SimpleNamespace(config=SimpleNamespace(vocab_size=vocab_size, eos_token_id=eos_token_id,
                                                            block_length=4))
        self.total_pages = total_pages
        self.fail_steps = set(fail_steps)
        self.steps = 0
        self._next = 0
        self._req = {}      # id -> dict(prompt, left, emitted, running, aborted)
        self.aborted = []

    def add_request(self, prompt_ids, *, strategy="auto", max_new_tokens=16, **_):
        if strategy not in ("auto", "ar", "diffusion", "linear-spec", "quadratic-spec"):
            raise TridiffInputError(f"strategy: expected a known strategy, got {strategy!r}")
        if max_new_tokens > 100:
            raise TridiffInputError(f"max_new_tokens: expected at most 100, got {max_new_tokens}")
        rid = self._next
        self._next += 1
        self._req[rid] = dict(prompt=list(prompt_ids), left=max_new_tokens, emitted=[], running=False,
                              abort=False)
        return rid

    @property
    def num_running(self):
        return sum(r["running"] for r in self._req.values())

    @property
    def num_waiting(self):
        return sum(not r["running"] for r in self._req.values())

    @property
    def free_pages(self):
        return self.total_pages - self.num_running

    def has_work(self):
        return bool(self._req)

    def abort(self, rid):
        if rid in self._req:
            self._req[rid]["abort"] = True
            self._req[rid]["running"] = False
            self.aborted.append(rid)

    def step(self):
        self.steps += 1
        if self.steps in self.fail_steps:
            raise RuntimeError(f"scripted failure at step {self.steps}")
        outs = []
        for rid, r in list(self._req.items()):
            if r["abort"]:
                del self._req[rid]
                outs.append(self._out(rid, r, [], True, "abort"))
                continue
            if not r["running"] and self.free_pages > 0:
                r["running"] = True
            if not r["running"]:
                continue
            tok = (r["prompt"][-1] + len(r["emitted"]) + 1) % self.model.config.vocab_size
            r["emitted"].append(tok)
            r["left"] -= 1
            done = r["left"] == 0
            if done:
                del self._req[rid]
            outs.append(self._out(rid, r, [tok], done, "length" if done else None))
        return outs

    @staticmethod
    def _out(rid, r, new, finished, reason):
        return SimpleNamespace(request_id=rid, new_tokens=new, finished=finished, finish_reason=reason,
                               tokens=list(r["emitted"]), nfe=len(r["emitted"]), tokens_per_forward=1.0,
                               mean_accepted=None, accepted_lengths=[], strategy="ar")
