"""tridiff: kernels and decoding for tri-mode language models.

Importing tridiff needs no GPU and no compiled extension; backends load lazily.
"""
from tridiff.modes import Mode

__version__ = "0.1.0"
__all__ = ["Mode", "ops", "reference", "__version__"]


def __getattr__(name):
    # Lazy submodules keep `import tridiff` cheap.
    import importlib

    if name in ("ops", "reference", "cache", "model", "generate", "checkpoint"):
        return importlib.import_module(f"tridiff.{name}")
    if name == "Model":
        return importlib.import_module("tridiff.model").Model
    raise AttributeError(f"module 'tridiff' has no attribute {name!r}")
