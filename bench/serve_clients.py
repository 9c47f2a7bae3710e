"""The HTTP clients of bench.bench_serve, kept apart (asyncio + httpx only, no torch) so
that they can run in a child process: the server's process then does server work only,
and the clients' Python does not compete with it for the GIL.

Each entry point is a plain function of picklable arguments returning picklable results:
    load(url, prompts, max_tokens, strategy, clients, seconds, stream_fraction)
        -> (results, wall_s); results: one dict per request (status, ids, latency, ttft,
           tokens, key = (prompt index, max_tokens))
    warm_up(url, prompts, max_tokens, strategy)
    closed_loop(url, bodies, concurrency) -> (completion tokens, seconds)
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx

TIMEOUT = httpx.Timeout(600.0)


def _body(prompt, max_tokens, strategy) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "strategy": strategy}


async def one(client, url, body, stream: bool) -> dict:
    t0 = time.perf_counter()
    if not stream:
        r = await client.post(url, json=body)
        t1 = time.perf_counter()
        if r.status_code != 200:
            return dict(status=r.status_code, error=r.text[:200], latency=t1 - t0)
        doc = r.json()
        return dict(status=200, ids=doc["choices"][0]["token_ids"], latency=t1 - t0, ttft=None,
                    tokens=doc["usage"]["completion_tokens"])
    ids, ttft = [], None
    async with client.stream("POST", url, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return dict(status=r.status_code, error=(await r.aread())[:200].decode(errors="replace"),
                        latency=time.perf_counter() - t0)
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if "error" in doc:
                return dict(status=500, error=str(doc["error"])[:200], latency=time.perf_counter() - t0)
            new = doc["choices"][0]["token_ids"]
            if new and ttft is None:
                ttft = time.perf_counter() - t0
            ids.extend(new)
    return dict(status=200, ids=ids, latency=time.perf_counter() - t0, ttft=ttft, tokens=len(ids))


async def _load(url, prompts, max_tokens, strategy, clients, seconds, stream_fraction):
    work = itertools.count()
    results: list[dict] = []
    n_stream = int(round(stream_fraction * 100))
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client_loop(client):
        while time.perf_counter() < deadline:
            i = next(work)
            key = (i % len(prompts), max_tokens[i % len(max_tokens)])
            res = await one(client, url + "/v1/completions", _body(prompts[key[0]], key[1], strategy),
                            stream=(i % 100) < n_stream)
            res["key"] = key
            results.append(res)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results, time.perf_counter() - t0


def load(url, prompts, max_tokens, strategy, clients, seconds, stream_fraction):
    """`clients` clients send requests back to back for `seconds` (one started before the
    deadline runs to its end); prompts and max_tokens taken in turn, a fraction streamed."""
    return asyncio.run(_load(url, prompts, max_tokens, strategy, clients, seconds, stream_fraction))


async def _warm_up(url, prompts, max_tokens, strategy):
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for i, n in enumerate(max_tokens):
            for stream in (False, True):
                res = await one(client, url + "/v1/completions", _body(prompts[i % len(prompts)], n, strategy),
                                stream)
                if res["status"] != 200:
                    raise RuntimeError(f"warm-up request failed: {res.get('error')}")


def warm_up(url, prompts, max_tokens, strategy) -> None:
    """One request per max_tokens, streamed and not (first-call costs stay out of the timing)."""
    asyncio.run(_warm_up(url, prompts, max_tokens, strategy))


async def _closed_loop(url, bodies, concurrency) -> tuple[int, float]:
    queue = list(reversed(bodies))
    tokens = 0

    async def worker(client):
        nonlocal tokens
        while queue:
            body = queue.pop()
            r = await client.post(url + "/v1/completions", json=body)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return tokens, time.perf_counter() - t0


def closed_loop(url, bodies, concurrency):
    """The requests `bodies` (non-streamed), `concurrency` at a time, each client sending
    its next as soon as its last is answered; returns (completion tokens, seconds)."""
    return asyncio.run(_closed_loop(url, bodies, concurrency))
