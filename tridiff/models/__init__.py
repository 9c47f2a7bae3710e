"""Checkpoints bundled with tridiff, found by name.

stdlib-7m: a 7.6 M-parameter tri-mode model of the released layout, trained by
`python -m tridiff.train` on the Python standard library's own sources (PSF
licence); block size 16. The default model of `tridiff generate` and `tridiff demo`.
"""
from __future__ import annotations

import os

from tridiff._checks import TridiffInputError

DEFAULT = "stdlib-7m"
_HERE = os.path.dirname(os.path.abspath(__file__))


def available() -> list[str]:
    return sorted(d for d in os.listdir(_HERE) if os.path.isfile(os.path.join(_HERE, d, "config.json")))


def path(name: str = DEFAULT) -> str:
    """The directory of the bundled checkpoint `name`."""
    directory = os.path.join(_HERE, name)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise TridiffInputError(f"name: expected a bundled model ({', '.join(available()) or 'none installed'}), "
                                f"got {name!r}")
    return directory
