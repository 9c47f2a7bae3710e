"""Input validation shared by every public op.

Shape/dtype/device checks never touch device memory. Value checks (lengths within
capacity, modes in range) need the values on the host: they always run for CPU
tensors; for CUDA tensors they copy a few integers to the host unless disabled with
TRIDIFF_CHECK_VALUES=0, and they are skipped automatically while a CUDA graph is
being captured or torch.compile is tracing (a host copy is impossible there).
Every check runs before an op writes anything, so a refused call leaves all
memory as it was. A loop that validated its own arguments once (tridiff.generate) runs
in trusted(cpu=True), which skips the value checks of CPU tensors too: its ops then do
shape/dtype checks only, and no Python-side value check runs per step or per layer.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from tridiff.errors import TridiffInputError  # noqa: F401  (re-exported: tridiff._checks.TridiffInputError)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


# False (check everything), "device" (skip device tensors) or "all" (skip CPU tensors too)
_trusted = contextvars.ContextVar("tridiff_trusted_inputs", default=False)


@contextlib.contextmanager
def trusted(cpu: bool = False):
    """Scope whose op inputs tridiff itself produced (the decoding loop): value checks
    on device tensors are skipped there, so an iteration makes no host round trip.
    CPU tensors are still checked (a host read is free there) unless cpu=True: then
    they are skipped as well, for a loop whose arguments were validated once up front
    (the checks would cost Python time on every op call of every step)."""
    token = _trusted.set("all" if cpu else "device")
    try:
        yield
    finally:
        _trusted.reset(token)



def fail(arg: str, expected: str, got) -> None:
    raise TridiffInputError(f"{arg}: expected {expected}, got {got}")


def tensor(arg: str, x, *, ndim=None, dtypes=None, device=None) -> None:
    if not isinstance(x, torch.Tensor):
        fail(arg, "a torch.Tensor", type(x).__name__)
    if ndim is not None and x.dim() != ndim:
        fail(arg, f"{ndim} dimensions", f"shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        fail(arg, f"dtype {names}", str(x.dtype).replace("torch.", ""))
    if device is not None and x.device != device:
        fail(arg, f"device {device}", x.device)


def shape(arg: str, x: torch.Tensor, expected: tuple) -> None:
    """`expected` may hold None for a free dimension."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        fail(arg, f"shape {want}", f"shape {tuple(x.shape)}")


def values_checkable(x: torch.Tensor) -> bool:
    """Whether value checks (which read tensor contents on the host) run for `x`."""
    if torch.compiler.is_compiling():   # first: Dynamo cannot trace ContextVar.get
        return False
    trust = _trusted.get()
    if trust == "all" or _tracing():
        return False
    if x.device.type == "cpu":
        return True
    if os.environ.get("TRIDIFF_CHECK_VALUES", "1") == "0" or trust:
        return False
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return True
    try:
        from torch._guards import TracingContext, detect_fake_mode

        # detect_fake_mode() (no inputs) finds a fake mode only in a TracingContext or on
        # the dispatch-mode stack: with neither, skip its ~3 us (it runs a few times per forward)
        if TracingContext.try_get() is None and torch._C._len_torch_dispatch_stack() == 0:
            return False
        return detect_fake_mode() is not None
    except Exception:  # pragma: no cover - private API moved
        return False


def is_fake(x: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor) or x.device.type == "meta"


def lengths_in_range(arg: str, lens: torch.Tensor, low: int, high, high_desc: str) -> None:
    """0 <= low <= lens[b] <= high[b] for every row (high: int or tensor)."""
    if not values_checkable(lens) or is_fake(lens):
        return
    vals = lens.detach().to("cpu", torch.int64)
    hi = high.detach().to("cpu", torch.int64) if isinstance(high, torch.Tensor) else torch.full_like(vals, int(high))
    bad = (vals < low) | (vals > hi)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        fail(arg, f"values in [{low}, {high_desc}] (row {b}: limit {int(hi[b])})", f"{int(vals[b])} at row {b}")
