"""Batched decoding for tri-mode models (docs/spec.md section 3): generate() and what it
returns. One module per strategy (ar, diffusion, linear, quadratic, anchored), the per-row
state they share (state), CUDA-graph replay (graphs).

Layering, imports pointing down only (tests/test_layering.py checks it):
    api          generate(): argument checks, the run, the results
    strategies   the table of strategies by name
    ar, diffusion, linear, quadratic, anchored    one strategy each
    state        RunState: buffers and the operations the strategies are written with
    graphs, hooks, anchors, results               know no strategy
"""
from tridiff.decode.api import RULES, generate
from tridiff.decode.graphs import release_graphs
from tridiff.decode.results import GenerateOutput, RowResult
from tridiff.decode.strategies import MODES

__all__ = ["generate", "release_graphs", "GenerateOutput", "RowResult", "MODES", "RULES"]
