"""Batched decoding for tri-mode models (docs/spec.md section 3): generate() and what it
returns. One module per strategy (ar, diffusion, linear, quadratic, listed in
strategies), the per-row state they share (state), CUDA-graph replay (graphs)."""
from tridiff.decode.api import RULES, generate
from tridiff.decode.graphs import release_graphs
from tridiff.decode.results import GenerateOutput, RowResult
from tridiff.decode.strategies import MODES

__all__ = ["generate", "release_graphs", "GenerateOutput", "RowResult", "MODES", "RULES"]
