"""The engine-facing layer: requests that join and leave at any step, each with its own
decoding strategy and settings, on one shared paged KV cache (continuous batching).

    engine.py    Engine: add_request / step / abort / stream; the step's plan and run
    request.py   a request's checked settings and host state
    programs.py  one step of each strategy for a cohort of requests (generators whose
                 forwards the engine merges into shared model calls)
    pool.py      the shared PagedKVCache and views of some of its rows
    cost.py      strategy "auto": a forward-cost table and the per-step choice

Uses tridiff.decode (anchor arithmetic, the diffusion settle rule), tridiff.model and
tridiff.ops; no HTTP here (tridiff.serve sits on top).
"""
from tridiff.engine.engine import Engine, RequestOutput
from tridiff.engine.request import STRATEGIES

__all__ = ["Engine", "RequestOutput", "STRATEGIES"]
