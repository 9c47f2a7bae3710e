"""Batched decoding for tri-mode models: AR, block diffusion, linear and quadratic
self-speculation (docs/spec.md section 3, followed to the letter, parity quirks included).

    out = generate(model, prompts, mode="linear-spec", max_new_tokens=64)
    out.results[b].tokens      generated ids of row b (prompt excluded)

A row gives in a batch exactly what it gives alone. Randomness (temperature > 0) is
counter based (key `seed`, offset = the row's own forward count), so it is reproducible
per row. Quadratic self-speculation is greedy only. On a CUDA model the iterations of
AR and self-speculation replay as CUDA graphs, kept with the model for the next call
with the same arguments (prompts, seed and eos_check_every aside) until
release_graphs(model).

The implementation is the package tridiff.decode; this module keeps the import path.
"""
from tridiff.decode import GenerateOutput, MODES, RULES, RowResult, generate, release_graphs

__all__ = ["generate", "release_graphs", "GenerateOutput", "RowResult", "MODES", "RULES"]
