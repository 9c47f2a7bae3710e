"""The training corpus: the `.py` sources of the Python standard library that runs
the training (PSF licence), test folders excluded, split by file.

A file is held out when a fixed hash of its path relative to the library root falls
in the held-out share, so the split does not depend on the order files are listed,
on the machine, or on which other files exist.
"""
from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass

HELDOUT_PERCENT = 7
# Test suites, plus two folders of generated data rather than code: the codec
# tables of encodings/ (near-identical 256-entry tables) and pydoc_data's one
# 700 KB string literal.
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__",
                           "encodings", "pydoc_data"})


@dataclass(frozen=True)
class SourceFile:
    relpath: str  # relative to the library root, '/'-separated
    path: str

    def read(self) -> str:
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def describe() -> str:
    """One line naming the corpus: source, Python version, licence."""
    v = sys.version_info
    return f"Python {v.major}.{v.minor}.{v.micro} standard library sources (.py, tests excluded), PSF licence"


def is_heldout(relpath: str) -> bool:
    digest = hashlib.sha256(relpath.encode()).digest()
    return int.from_bytes(digest[:8], "little") % 100 < HELDOUT_PERCENT


def list_files(root: str | None = None) -> list[SourceFile]:
    root = root or stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = os.path.join(dirpath, name)
            found.append(SourceFile(os.path.relpath(path, root).replace(os.sep, "/"), path))
    return found


def split(root: str | None = None) -> tuple[list[SourceFile], list[SourceFile]]:
    """(train, heldout) lists of files."""
    files = list_files(root)
    train = [f for f in files if not is_heldout(f.relpath)]
    held = [f for f in files if is_heldout(f.relpath)]
    return train, held
