"""Sync audit of the decoding loop: inside an iteration (the methods generate hands to
its graph stepper) nothing reads a tensor on the host and nothing copies host data to
the device; the only host reads while the loop runs are the spaced checks
(`running`, every eos_check_every iterations, and `masks_left` between threshold draft
passes).

On CPU this counts calls to every Tensor -> host conversion (item, tolist, numpy,
bool/int/float/index, cpu) and every host -> device constructor (torch.tensor,
as_tensor, from_numpy). tridiff skips device-side value checks inside generate on a
GPU but runs them on CPU tensors, where they are free; the audit makes
values_checkable answer as it would for a device tensor, so the CPU run follows the
GPU's code path. The audited runs use the torch reference backend, the one that also
serves CUDA tensors (the C++ backend is CPU-only; it rounds the draft threshold to the
logits dtype through a host scalar tensor, host arithmetic that never meets a device).
On CUDA a second test runs the steps under
torch.cuda.set_sync_debug_mode("error").
"""
import contextlib
from collections import Counter

import pytest
import torch

from tridiff import _checks as chk
from tridiff.decode import hooks
from tridiff.generate import generate

L, N = 4, 8
READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "cpu")
UPLOADS = ("tensor", "as_tensor", "from_numpy")

CASES = [
    pytest.param("ar", {}, id="ar"),
    pytest.param("ar", {"temperature": 1.0, "paged": True, "page_size": 3}, id="ar-T1-paged"),
    pytest.param("linear-spec", {}, id="linear"),
    pytest.param("linear-spec", {"temperature": 1.0, "rule": "lossless", "paged": True, "page_size": 3}, id="linear-lossless-paged"),
    pytest.param("linear-spec", {"temperature": 1.0, "rule": "reference"}, id="linear-reference"),
    pytest.param("linear-spec", {"threshold": 0.6}, id="linear-thr"),
    pytest.param("linear-spec", {"threshold": 0.6, "temperature": 1.0, "rule": "lossless"}, id="linear-thr-lossless"),
    pytest.param("quadratic-spec", {}, id="quadratic"),
    pytest.param("quadratic-spec", {"paged": True, "page_size": 3}, id="quadratic-paged"),
    pytest.param("quadratic-spec", {"anchors": 2}, id="anchored-k2"),
    pytest.param("quadratic-spec", {"anchors": (0, 2), "paged": True, "page_size": 3}, id="anchored-fixed-paged"),
]


class Audit:
    """Counts host reads / uploads by where they happen: None (not audited), "loop"
    (between iterations), "check" (inside a spaced host check) or "step"."""

    def __init__(self):
        self.where = None
        self.reads = Counter()
        self.what = []
        self.steps = 0
        self.checks = []   # (iteration or pass index, host reads it made)

    def hit(self, name):
        if self.where is not None:
            self.reads[self.where] += 1
            self.what.append((self.where, name))

    @contextlib.contextmanager
    def at(self, where):
        prev, self.where = self.where, where
        try:
            yield
        finally:
            self.where = prev


@contextlib.contextmanager
def counting(audit):
    """Route every host conversion of a tensor and every host->device constructor
    through audit.hit while the block runs."""
    saved = []

    def patch(owner, name):
        own = name in vars(owner)
        orig = getattr(owner, name)
        saved.append((owner, name, own, orig))

        def wrapper(*a, **k):
            audit.hit(name)
            return orig(*a, **k)
        setattr(owner, name, wrapper)

    for name in READS:
        patch(torch.Tensor, name)
    for name in UPLOADS:
        patch(torch, name)
    try:
        yield audit
    finally:
        for owner, name, own, orig in reversed(saved):
            if own:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)


@pytest.fixture
def audited(monkeypatch):
    """An Audit wired into the loop's hooks (tridiff.decode.hooks): steps, spaced
    checks, loop window."""
    audit = Audit()
    meta = torch.empty(0, device="meta")
    orig_checkable = chk.values_checkable
    # What values_checkable answers for a device tensor in the current scope.
    monkeypatch.setattr(chk, "values_checkable", lambda x: orig_checkable(meta))

    def step(run, fn):
        audit.where = "loop"   # the loop starts once its steps are set up

        def audited_step():
            audit.steps += 1
            with audit.at("step"):
                fn()
        return audited_step

    def host_check(run, i, check):
        before = audit.reads["check"]
        with audit.at("check"):
            out = check()
        audit.checks.append((i % run.check_every, audit.reads["check"] - before))
        return out

    def loop_done(run):
        audit.where = None

    monkeypatch.setattr(hooks, "step", step)
    monkeypatch.setattr(hooks, "host_check", host_check)
    monkeypatch.setattr(hooks, "loop_done", loop_done)
    with counting(audit):
        yield audit


def test_counter_sees_host_reads_and_uploads():
    audit = Audit()
    with counting(audit), audit.at("step"):
        x = torch.ones(3)
        bool(x[0] > 0)
        x.sum().item()
        int(x[1])
        x.tolist()
        torch.tensor([1, 2])
        x.cpu()
    assert audit.reads["step"] == 6
    assert [w for _, w in audit.what] == ["__bool__", "item", "__int__", "tolist", "tensor", "cpu"]
    with audit.at("step"):   # after the block nothing is routed through the audit any more
        bool(x[0] > 0)
        x.sum().item()
    assert audit.reads["step"] == 6


@pytest.mark.parametrize("backend", ["torch"], ids=["torch"])
@pytest.mark.parametrize("mode,extra", CASES)
def test_no_host_reads_inside_an_iteration(model, prompts, audited, mode, extra, backend):
    k = 3
    out = generate(model, prompts, mode=mode, max_new_tokens=N, block_length=L, eos_id=-1,
                   eos_check_every=k, backend=backend, **extra)
    assert audited.steps >= 2
    assert audited.reads["step"] == 0, audited.what
    assert audited.reads["loop"] == 0, audited.what   # between steps: only the checks read
    # Every check on a multiple of check_every reads exactly once, the others never.
    assert audited.checks and all(n == (i == 0) for i, n in audited.checks), audited.checks
    assert all(len(r.tokens) >= N for r in out.results)


def test_audit_catches_a_host_read_in_a_step(model, prompts, audited, monkeypatch):
    """The audit can fail: a step that reads a count on the host is reported."""
    audited_step = hooks.step

    def step(run, fn):
        def reading():
            int(run.active.sum())
            fn()
        return audited_step(run, reading)
    monkeypatch.setattr(hooks, "step", step)
    generate(model, prompts[:1], mode="ar", max_new_tokens=4, eos_id=-1, backend="torch")
    assert [w for w in audited.what if w[0] == "step"] == [("step", "__int__")] * 3


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("mode,extra", CASES)
def test_cuda_steps_never_synchronise(cuda_model, prompts, monkeypatch, mode, extra, graphs):
    kw = dict(mode=mode, max_new_tokens=N, block_length=L, eos_id=-1, cuda_graphs=graphs, **extra)
    generate(cuda_model, prompts, **kw)   # compiles kernels outside the audited run
    steps = []

    def step_hook(run, fn):
        def step():
            steps.append(1)
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return step
    monkeypatch.setattr(hooks, "step", step_hook)
    out = generate(cuda_model, prompts, **kw)
    assert steps and all(len(r.tokens) >= N for r in out.results)
