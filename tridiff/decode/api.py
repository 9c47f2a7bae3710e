"""generate(): argument checks, the run (new or kept), the loop, the results."""
from __future__ import annotations

import operator
import time
from typing import Optional, Sequence

from tridiff import _checks as chk
from tridiff._checks import TridiffInputError
from tridiff.decode import graphs, hooks, results
from tridiff.decode.results import GenerateOutput
from tridiff.decode.state import RunShape, device_of
from tridiff.decode.strategies import GRAPHED, MODES, strategy_for

RULES = ("lossless", "reference")


def generate(model, prompts: Sequence[Sequence[int]], *, mode: str = "ar", max_new_tokens: int,
             block_length: Optional[int] = None, threshold: Optional[float] = None,
             temperature: float = 0.0, rule: str = "lossless", seed: int = 0, backend: str = "auto",
             eos_check_every: int = 1, eos_id: Optional[int] = None, adapter: bool = True,
             paged: bool = False, page_size: int = 16,
             cuda_graphs: Optional[bool] = None, anchors=None) -> GenerateOutput:
    """Decode every prompt with one of the four decoding strategies.

    mode            "ar" | "diffusion" | "linear-spec" | "quadratic-spec"
    max_new_tokens  diffusion / quadratic: a multiple of the block; linear may overshoot
                    it by up to block-1 tokens (as the reference does)
    block_length    default model.config.block_length
    threshold       diffusion: confidence threshold (None = top-k schedule over L steps);
                    linear: draft threshold (None or 0 = one draft forward, fill all masks)
    temperature     0 = greedy. > 0: sampling; linear-spec uses `rule` ("lossless":
                    rejection sampling, distribution preserving; "reference": the
                    reference's independent-sample compare)
    seed            key of the counter-based noise, the same for every row (a row's
                    noise does not depend on its batch); the offset is the row's forwards
    eos_check_every host checks of "any row still running" happen once per this many
                    iterations; the rows that finished earlier idle meanwhile
    eos_id          override config.eos_token_id (-1 disables eos)
    adapter         use the drafter LoRA where the spec turns it on (diffusion denoise and
                    linear draft forwards; never prefill, commit, verify or the
                    quadratic forward, whose verify rows must be the base model).
                    Ignored by a model without adapter.
    paged           decode on a paged KV cache (page_size tokens per page)
    cuda_graphs     replay each decoding iteration as a CUDA graph (AR, linear and
                    quadratic self-speculation). None: on for a CUDA model in those
                    modes, and a step whose capture fails runs eagerly with a warning;
                    True: a failed capture raises; True on a CPU model or for diffusion
                    is refused. The graphs and their buffers stay with the model for
                    the next call with the same arguments except prompts (same count),
                    seed and eos_check_every; release_graphs(model) frees them.
    anchors         quadratic-spec only: None or block_length = every acceptance length
                    (L(L+1) rows per forward); an int k in [1, L) = pruned, the k most
                    likely acceptance lengths per row and iteration (L(k+1) rows); a
                    tuple of anchors in [0, L) that includes 0 = that fixed set. Pruned
                    needs block_length <= 32. The output is AR greedy's either way.
    """
    cfg = model.config
    L = int(block_length if block_length is not None else getattr(cfg, "block_length", 32))
    anchors = _validate(cfg, prompts, mode, max_new_tokens, L, threshold, temperature, rule, eos_check_every,
                        anchors)
    strategy = strategy_for(mode, anchors)
    use = graphs.use_graphs(cuda_graphs, mode, device_of(model), GRAPHED)
    capacity = max(len(p) for p in prompts) + strategy.extra_len(int(max_new_tokens), L, anchors)
    if use:
        capacity = -(-capacity // graphs.GRAPH_CAPACITY_STEP) * graphs.GRAPH_CAPACITY_STEP
    shape = RunShape(strategy=mode, batch=len(prompts), capacity=capacity, max_new_tokens=int(max_new_tokens),
                     block_length=L, threshold=threshold, temperature=float(temperature), rule=rule,
                     backend=backend, eos_id=int(cfg.eos_token_id if eos_id is None else eos_id),
                     adapter=bool(adapter), page_size=page_size if paged else None, graphs=use,
                     anchors=anchors)
    run = graphs.kept_run(model, shape) if use else None
    if run is None:
        run = strategy(model, prompts, shape, int(seed), int(eos_check_every))
        if use:
            graphs.keep_run(model, shape, run)
    else:
        run.restart(prompts, int(seed), int(eos_check_every))
    start = time.perf_counter()
    # Arguments were validated above; inside, every op input is made by the loop itself,
    # so value checks (host round trips on a device, Python time per op call on CPU) are
    # skipped; shapes and dtypes are still checked.
    with chk.trusted(cpu=True):
        run.decode()
    hooks.loop_done(run)
    rows = results.collect(run)
    return GenerateOutput(mode=mode, results=rows, seconds=time.perf_counter() - start)


def _validate(cfg, prompts, mode, max_new_tokens, L, threshold, temperature, rule, check_every, anchors):
    """Check generate's arguments; returns the normalized anchors (see check_anchors)."""
    def bad(arg, expected, got):
        raise TridiffInputError(f"{arg}: expected {expected}, got {got}")

    if mode not in MODES:
        bad("mode", "one of " + ", ".join(MODES), repr(mode))
    anchors = check_anchors(anchors, mode, L)
    strategy = strategy_for(mode, anchors)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        bad("max_new_tokens", "a positive int", repr(max_new_tokens))
    if L < 1:
        bad("block_length", "a positive int", L)
    if strategy.block_multiple and max_new_tokens % L:
        bad("max_new_tokens", f"a multiple of the block length {L} for {mode}", max_new_tokens)
    if threshold is not None:
        low = 0.0 if strategy.zero_threshold else 1e-300   # diffusion needs > 0 (0 = no threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not low <= float(threshold) <= 1.0:
            interval = "[0, 1]" if strategy.zero_threshold else "(0, 1]"
            bad("threshold", f"a number in {interval} for {mode}", threshold)
    if not float(temperature) >= 0.0:
        bad("temperature", "a number >= 0", temperature)
    if strategy.greedy_only and temperature > 0:
        bad("temperature", f"0 for {mode} (its acceptance rule is greedy only)", temperature)
    if rule not in RULES:
        bad("rule", "one of " + ", ".join(RULES), repr(rule))
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        bad("eos_check_every", "a positive int", check_every)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        bad("prompts", "a non-empty list of token-id lists", type(prompts).__name__)
    for b, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) == 0:
            bad(f"prompts[{b}]", "a non-empty list of token ids", repr(p)[:40])
        if any(not is_token_id(t, cfg.vocab_size) for t in p):
            bad(f"prompts[{b}]", f"token ids in [0, {cfg.vocab_size})", list(p)[:8])
    need = max(len(p) for p in prompts) + strategy.extra_len(max_new_tokens, L, anchors)
    limit = int(getattr(cfg, "max_position_embeddings", need))
    if need > limit:
        bad("prompts", f"prompt + generation within the context of {limit} positions",
            f"{need} positions (longest prompt {max(len(p) for p in prompts)}, {mode}, "
            f"max_new_tokens {max_new_tokens})")
    return anchors


def check_anchors(anchors, mode, L):
    """Checked generate(anchors=...) (and the engine's): None (every acceptance length), an int k < L, or a
    sorted tuple of distinct anchors in [0, L) that includes 0."""
    def bad(expected, got=anchors):
        raise TridiffInputError(f"anchors: expected {expected}, got {got!r}")

    if anchors is None:
        return None
    if mode != "quadratic-spec":
        bad(f"None for {mode} (anchors prune quadratic-spec's forward)")
    if isinstance(anchors, (list, tuple)):
        if not anchors or any(isinstance(a, bool) or not isinstance(a, int) for a in anchors):
            bad("a non-empty tuple of int anchors")
        S = tuple(sorted(set(anchors)))
        if len(S) != len(anchors) or S[0] != 0 or S[-1] >= L:
            bad(f"distinct anchors in [0, {L}) that include 0")
    elif isinstance(anchors, bool) or not isinstance(anchors, int) or not 1 <= anchors <= L:
        bad(f"an int k in [1, {L}] (the block length) or a tuple of anchors")
    elif anchors == L:
        return None
    else:
        S = int(anchors)
    if L > 32:
        bad(f"None with block_length {L} (a pruned anchor set is a 32-bit mask: block_length <= 32)")
    return S


def is_token_id(t, V) -> bool:
    """t is an int (not a bool; numpy and 0-d torch integers count) in [0, V)."""
    if isinstance(t, bool):
        return False
    try:
        t = operator.index(t)  # ints, numpy / 0-d torch integers
    except TypeError:
        return False
    return 0 <= t < V
