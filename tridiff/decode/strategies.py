"""The decoding strategies by name (the values of generate(mode=...)).

A strategy is one module with a RunState subclass (its algorithm in decode(), its
graph-capturable steps, its class attributes) and one entry in STRATEGIES.
"quadratic-spec" with a pruned anchor set (generate(anchors=...)) runs AnchoredSpec.
"""
from __future__ import annotations

from tridiff.decode.anchored import AnchoredSpec
from tridiff.decode.ar import AR
from tridiff.decode.diffusion import Diffusion
from tridiff.decode.linear import LinearSpec
from tridiff.decode.quadratic import QuadraticSpec

STRATEGIES = {s.name: s for s in (AR, Diffusion, LinearSpec, QuadraticSpec)}

MODES = tuple(STRATEGIES)
GRAPHED = tuple(name for name, s in STRATEGIES.items() if s.graphable)


def strategy_for(mode: str, anchors):
    """The RunState class for a validated mode and normalized anchors (None: not pruned)."""
    return AnchoredSpec if anchors is not None else STRATEGIES[mode]
