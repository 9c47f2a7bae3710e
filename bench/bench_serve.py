"""Load test of `tridiff serve` on the bundled model, and the server's overhead.

    python -m bench.bench_serve [--model DIR] [--seconds 60] [--clients 64] [--max-rows 32]
                                [--max-queue 64] [--max-tokens 32,64] [--strategy auto]
                                [--stream-fraction 0.5] [--prompts 32]
                                [--overhead-requests 96] [--overhead-clients 8] [--overhead-reps 2]
                                [--clients-in-process] [--out DIR]

The server runs in this process (tridiff.serve.BackgroundServer: uvicorn in a thread,
the engine in its own thread) on a free localhost port; the HTTP clients
(bench.serve_clients: asyncio tasks with one httpx connection each) run in one child
process, so that their Python does not take the server's GIL (--clients-in-process
puts them in this process). They still share the machine's cores with the server: say
so when quoting the numbers.

Load (after an untimed warm-up request per max_tokens, streamed and not): `--clients`
clients send requests back to back for `--seconds` (a request started before the
deadline runs to its end): held-out code prompts (tridiff.train.heldout) and max_tokens
taken in turn, greedy, a fraction of them streamed. Checked: every request is answered
200; every output equals what tridiff.generate gives that prompt alone with the same
settings (AR for strategy auto, whose greedy output is AR's), token for token; the
engine's pages are all free at the end. Reported: requests, p50/p99 latency (and time
to first token for the streamed ones), total completion tokens/s over the wall time.

Overhead: the same `--overhead-requests` requests at concurrency `--overhead-clients`
through HTTP (non-streamed) and into an Engine called directly (a new request added as
one finishes, same engine settings; a warm-up round first), alternated
`--overhead-reps` times; the best tokens/s of each and their ratio (HTTP / direct;
1.0 = no overhead).

One JSON row is appended to <out>/serve.jsonl. Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import serve_clients
from bench.machine import environment
from bench.record import DEFAULT_OUT
from tridiff import models
from tridiff.generate import generate


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the clients keep sending")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64, help="at least clients - max_rows: no 503 expected")
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--max-tokens", type=_ints, default=[32, 64], help="taken in turn, comma-separated")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--stream-fraction", type=float, default=0.5)
    p.add_argument("--prompts", type=int, default=32, help="distinct held-out prompts")
    p.add_argument("--overhead-requests", type=int, default=96, help="0: skip the overhead measurement")
    p.add_argument("--overhead-clients", type=int, default=8)
    p.add_argument("--overhead-reps", type=int, default=2)
    p.add_argument("--clients-in-process", action="store_true",
                   help="run the HTTP clients in this process (default: in one child process)")
    p.add_argument("--out", default=None, help=f"directory of serve.jsonl (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.clients > args.max_rows + args.max_queue:
        p.error(f"--clients {args.clients} > --max-rows + --max-queue: the server would answer 503")
    return args


def load_prompts(model_dir: str, count: int) -> list[list[int]]:
    from tridiff.tokenizer import Tokenizer
    from tridiff.train import heldout

    tok = Tokenizer(model_dir)
    return [p["ids"] for p in heldout.code_prompts(tok, count, seed=0, min_tokens=16, max_tokens=96)]


def percentile(xs, q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


# ------------------------------------------------------------------------------ clients

class Clients:
    """Runs a bench.serve_clients entry point in a spawned child process (default: the
    server's process does server work only) or in this process (--clients-in-process)."""

    def __init__(self, in_process: bool):
        self._pool = None
        if not in_process:
            import concurrent.futures
            import multiprocessing

            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, name: str, *args):
        fn = getattr(serve_clients, name)
        return fn(*args) if self._pool is None else self._pool.submit(fn, *args).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# ------------------------------------------------------------------------------ checks

def check_outputs(model, prompts, results, strategy: str) -> tuple[int, list]:
    """Each distinct (prompt, max_tokens) against its solo generate; returns (checked, mismatches)."""
    mode = "ar" if strategy == "auto" else strategy
    solo, bad = {}, []
    for res in results:
        if res["status"] != 200:
            continue
        key = res["key"]
        if key not in solo:
            solo[key] = generate(model, [prompts[key[0]]], mode=mode, max_new_tokens=key[1]).results[0].tokens
        if res["ids"] != solo[key]:
            bad.append(dict(key=key, got=res["ids"][:16], want=solo[key][:16]))
    return len(solo), bad


# ------------------------------------------------------------------------------ overhead

def _direct_closed_loop(engine, bodies, concurrency) -> tuple[int, float]:
    queue = list(reversed(bodies))
    tokens, inflight = 0, 0
    t0 = time.perf_counter()

    def add():
        b = queue.pop()
        engine.add_request(b["prompt"], strategy=b["strategy"], max_new_tokens=b["max_tokens"], temperature=0.0)

    while queue and inflight < concurrency:
        add()
        inflight += 1
    while engine.has_work():
        for out in engine.step():
            if out.finished:
                tokens += len(out.tokens)
                inflight -= 1
                if queue:
                    add()
                    inflight += 1
    return tokens, time.perf_counter() - t0


def overhead(srv, engine_kwargs, prompts, args, clients: Clients) -> dict:
    from tridiff.engine import Engine

    bodies = [{"prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens[i % len(args.max_tokens)],
               "temperature": 0, "strategy": args.strategy} for i in range(args.overhead_requests)]
    direct = Engine(srv.state.engine.model, **engine_kwargs)
    _direct_closed_loop(direct, bodies[:args.overhead_clients], args.overhead_clients)  # warm-up, untimed
    http_runs, direct_runs = [], []
    for _ in range(args.overhead_reps):  # alternated: a change of machine load falls on both
        n, s = _direct_closed_loop(direct, bodies, args.overhead_clients)
        direct_runs.append(n / s)
        n, s = clients("closed_loop", srv.url, bodies, args.overhead_clients)
        http_runs.append(n / s)
    best_http, best_direct = max(http_runs), max(direct_runs)
    return dict(concurrency=args.overhead_clients, requests=args.overhead_requests,
                http_tok_s=best_http, direct_tok_s=best_direct, ratio=best_http / best_direct,
                http_runs=http_runs, direct_runs=direct_runs)


# ------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    from tridiff.serve.server import BackgroundServer, load_model, make_state

    args = parse(argv)
    model_dir = args.model or models.path()
    model = load_model(model_dir, device="cpu" if not torch.cuda.is_available() else None)
    prompts = load_prompts(model_dir, args.prompts)
    engine_kwargs = dict(max_rows=args.max_rows, max_context=args.max_context)
    state = make_state(model_dir, model=model, max_queue=args.max_queue, strategy=args.strategy, **engine_kwargs)
    clients = Clients(args.clients_in_process)
    try:
        with BackgroundServer(state) as srv:
            clients("warm_up", srv.url, prompts, args.max_tokens, args.strategy)
            results, wall = clients("load", srv.url, prompts, args.max_tokens, args.strategy, args.clients,
                                    args.seconds, args.stream_fraction)
            stats = state.loop.query_stats().result(timeout=60)
            over = overhead(srv, engine_kwargs, prompts, args, clients) if args.overhead_requests > 0 else None
    finally:
        clients.close()
    ok = [r for r in results if r["status"] == 200]
    failed = [r for r in results if r["status"] != 200]
    checked, mismatches = check_outputs(model, prompts, results, args.strategy)
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    tokens = sum(r["tokens"] for r in ok)
    pages_free = stats["free_pages"] == stats["total_pages"] and stats["running"] == stats["waiting"] == 0
    row = dict(bench="serve", model=Path(model_dir).name, strategy=args.strategy, clients=args.clients,
               seconds=args.seconds, wall_s=wall, max_rows=args.max_rows, max_queue=args.max_queue,
               max_tokens=args.max_tokens, stream_fraction=args.stream_fraction,
               requests=len(results), answered=len(ok), failed=len(failed),
               failures=[r.get("error") for r in failed[:5]], distinct_checked=checked,
               mismatches=len(mismatches), all_equal_solo=not mismatches, pages_free=pages_free,
               free_pages=stats["free_pages"], total_pages=stats["total_pages"],
               p50_latency_s=percentile(lat, 50), p99_latency_s=percentile(lat, 99),
               p50_ttft_s=percentile(ttft, 50) if ttft else None, p99_ttft_s=percentile(ttft, 99) if ttft else None,
               mean_latency_s=statistics.fmean(lat) if lat else None,
               completion_tokens=tokens, tokens_per_s=tokens / wall if wall else None,
               clients_in_process=args.clients_in_process, overhead=over, **environment(next(model.parameters()).device))
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "serve.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")

    print(f"serve load: {args.clients} clients, {args.seconds:g} s, strategy {args.strategy}, "
          f"max_rows {args.max_rows}, on {row['device']}")
    print(f"  requests {len(results)}  answered {len(ok)}  failed {len(failed)}  "
          f"equal to solo generate: {checked - len({tuple(m['key']) for m in mismatches})}/{checked} distinct  "
          f"pages free at the end: {pages_free} ({stats['free_pages']}/{stats['total_pages']})")
    print(f"  latency p50 {row['p50_latency_s']:.3f} s  p99 {row['p99_latency_s']:.3f} s"
          + (f"  ttft p50 {row['p50_ttft_s']:.3f} s  p99 {row['p99_ttft_s']:.3f} s" if ttft else "")
          + f"  tokens/s {row['tokens_per_s']:.1f} ({tokens} tokens in {wall:.1f} s)")
    if over:
        print(f"  overhead at concurrency {over['concurrency']}: HTTP {over['http_tok_s']:.1f} tok/s, direct "
              f"{over['direct_tok_s']:.1f} tok/s, ratio {over['ratio']:.3f}")
    for m in mismatches[:5]:
        print(f"  MISMATCH prompt {m['key'][0]} max_tokens {m['key'][1]}: got {m['got']} want {m['want']}")
    for r in failed[:5]:
        print(f"  FAILED status {r['status']}: {r.get('error')}")
    return 0 if (not failed and not mismatches and pages_free and ok) else 1


if __name__ == "__main__":
    sys.exit(main())
