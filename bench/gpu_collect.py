"""pytest plugin for a CPU dry run of bench/gpu_suite.sh's test stages
(`--collect-only -p bench.gpu_collect`): collect as a CUDA machine would, so the counts
include the [triton] / [cuda] parametrisations that tests add only when CUDA is available.

torch.cuda.is_available() answers True and tensors asked for on "cuda" (factories,
.to()) are made on the CPU, which is all that collection does with them. Collection only:
running a test under this plugin is refused."""
import torch
from torch.overrides import TorchFunctionMode


def _cpu(x):
    if isinstance(x, str) and x.startswith("cuda"):
        return "cpu"
    if isinstance(x, torch.device) and x.type == "cuda":
        return torch.device("cpu")
    return x


class _CudaOnCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        args = tuple(_cpu(a) for a in args)
        kwargs = {k: _cpu(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


# On import (-p loads this before the initial conftests, which may already ask for CUDA).
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
_CudaOnCpu().__enter__()  # for the rest of this process


def pytest_configure(config):
    if not config.option.collectonly:
        raise RuntimeError("bench.gpu_collect only simulates a GPU for --collect-only dry runs")
