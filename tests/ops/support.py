"""What the op test files share: the backends they run on, the device, the skip helper,
and the bodies of the two table-driven checks (bad input names its argument; each op
passes torch.library.opcheck on each backend)."""
import pytest
import torch

from tests.conftest import require_backend
from tridiff._checks import TridiffInputError

# Every backend that can run on this machine's device, listed even where it cannot serve
# (not built, triton missing): such a test then skips with the dispatcher's reason rather
# than vanishing from the run, which backends_serving(op) would do for a failed import.
BACKENDS = ["torch", "cpp"] + (["triton", "cuda"] if torch.cuda.is_available() else [])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
I32 = dict(dtype=torch.int32, device=DEVICE)
I64 = dict(dtype=torch.int64, device=DEVICE)


def need(backend, op, *args):
    """Skip with the dispatcher's own reason when `backend` cannot serve op(*args)."""
    require_backend(backend, op, args)


def assert_names_argument(arg, call):
    """call() must raise TridiffInputError whose message starts with '<arg>: expected'."""
    with pytest.raises(TridiffInputError, match=rf"^{arg}: expected"):
        call()


def opcheck(backend, op, args):
    """torch.library.opcheck of torch.ops.tridiff.<op> with `args` on `backend`."""
    need(backend, op, *args)
    torch.library.opcheck(getattr(torch.ops.tridiff, op).default, args + (backend,))
