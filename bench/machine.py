"""What ran where: the two measured ceilings of this device and the environment record."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bench.timing import time_fn

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Peaks:
    copy_gbps: float     # bytes read + written per second, large device-to-device copy
    matmul_tflops: float
    matmul_dtype: str
    copy_bytes: int
    matmul_n: int


def measure_peaks(device: torch.device, quick: bool = False) -> Peaks:
    """Measure the two ceilings in this process, on random data (never zeros)."""
    if device.type == "cuda":
        nbytes, n, dtype = (1 << 30), 8192, torch.bfloat16
    else:
        nbytes, n, dtype = ((16 << 20) if quick else (256 << 20)), (256 if quick else 1024), torch.float32
    src = torch.randint(-128, 127, (nbytes,), dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, rep_ms=50 if quick else 200, flush=False)
    copy_gbps = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
    del src, dst
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, rep_ms=50 if quick else 200, flush=False)
    tflops = 2 * n ** 3 / (t.median_ms * 1e-3) / 1e12
    return Peaks(copy_gbps, tflops, str(dtype).replace("torch.", ""), nbytes, n)


def _version(pkg: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:
        return None


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.multi_processor_count} SMs, L2 {getattr(props, 'L2_cache_size', 0) >> 20} MB)"
    else:
        name = f"{_cpu_name()} ({torch.get_num_threads()} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "git_rev": git_rev(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
