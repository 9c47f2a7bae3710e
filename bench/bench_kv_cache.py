"""KV-cache benchmark: append and compaction GB/s vs a torch index-copy baseline, and
rollback time vs cache size (the O(1) claim: rollback moves no KV bytes).

    python -m bench.bench_kv_cache [--quick] [--out DIR] [--device cuda|cpu]

Bytes (minimum through device memory):
  append   : new k, v read once and written once   = 2 * 2 * B * n * Hkv * D * elt
  compact  : n slots per row per layer, k and v, read + write
                                                  = 2 * 2 * layers * B * n * Hkv * D * elt
  rollback : lengths only (B * 4 bytes); the crop-copy baseline copies the kept KV.
"""
from __future__ import annotations

import sys

import torch

from bench.common import backends_per_op, bench_main, checks_off_on_cuda, start_run, time_fn, time_graph

GRAPH_BELOW_MS = 0.1


def plan(device: torch.device, quick: bool) -> dict:
    if device.type == "cpu":
        return dict(Hkv=2, D=64, dtype=torch.float32, append=[(1, 8, 64), (2, 8, 64), (1, 128, 256)],
                    compact=[(1, 2, 3), (2, 2, 4)], layers=2, rollback_P=[64, 1024, 8192], rollback_B=2, rep_ms=20)
    p = dict(Hkv=8, D=128, dtype=torch.bfloat16,
             append=[(1, 32, 4096), (8, 32, 4096), (64, 32, 4096), (1, 4096, 8192)],  # (B, n, P)
             compact=[(1, 16, 1024), (8, 16, 1024), (64, 16, 1024), (1, 32, 1024), (16, 32, 1024)],  # (B, L, P)
             layers=34, rollback_P=[1024, 4096, 16384, 65536], rollback_B=64, rep_ms=100)
    if quick:
        p.update(append=[(1, 32, 4096), (64, 32, 4096), (1, 4096, 8192)], compact=[(1, 16, 1024), (16, 32, 1024)],
                 rollback_P=[1024, 16384, 65536], rep_ms=30)
    return p


def _timed(rec, device, fn, rep_ms):
    t = time_fn(fn, device, rep_ms=rep_ms)
    tg = None
    if device.type == "cuda" and t.median_ms < GRAPH_BELOW_MS:
        try:
            tg = time_graph(fn, device, rep_ms=rep_ms)
        except Exception as exc:  # noqa: BLE001
            rec.skip("graph", "", {}, f"graph capture failed: {exc}"[:200])
    return t, tg


def _add(rec, op, name, shape, dtype, t, tg, role, nbytes, group=""):
    rec.add(op, name, shape, dtype, t, role=role, bytes=nbytes, group=group)
    if tg is not None:
        rec.add(op, name + "[graph]", shape, dtype, tg, role=role, bytes=nbytes, group=group)


def _each(rec, p, device, op, backends, shape, dtype, nbytes, make_fn, group=""):
    """Time make_fn(name)() for every tridiff backend; a failure becomes a skip with its reason."""
    for name in backends:
        try:
            t, tg = _timed(rec, device, make_fn(name), p["rep_ms"])
        except Exception as exc:  # noqa: BLE001
            rec.skip(op, name, shape, f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        _add(rec, op, name, shape, dtype, t, tg, "tridiff", nbytes, group)


def bench_append(rec, p, device, backends, B, n, P):
    import tridiff.ops as ops

    Hkv, D, dtype = p["Hkv"], p["D"], p["dtype"]
    Tmax = P + n
    kc = torch.randn(B, Tmax, Hkv, D, device=device).to(dtype)
    vc = torch.randn_like(kc)
    k = torch.randn(B, n, Hkv, D, device=device).to(dtype)
    v = torch.randn_like(k)
    P0 = torch.full((B,), P, dtype=torch.int32, device=device)
    lens = P0.clone()
    nbytes = 2 * 2 * B * n * Hkv * D * kc.element_size()
    shape = dict(B=B, n=n, P=P, Hkv=Hkv, D=D)

    def append(name):  # append, then reset the length so every rep writes the same slots
        def fn():
            ops.kv_append_(kc, vc, k, v, lens, backend=name)
            lens.copy_(P0)
        return fn

    _each(rec, p, device, "kv_append_", backends, shape, dtype, nbytes, append)

    kflat, vflat = kc.view(B * Tmax, Hkv, D), vc.view(B * Tmax, Hkv, D)
    ar = torch.arange(n, device=device)
    row0 = torch.arange(B, device=device)[:, None] * Tmax
    nt = torch.full((B,), n, dtype=torch.int32, device=device)

    def baseline():  # the usual engine write: flat slot index, index_copy_, bump lengths
        idx = (row0 + lens.long()[:, None] + ar[None, :]).reshape(-1)
        kflat.index_copy_(0, idx, k.reshape(-1, Hkv, D))
        vflat.index_copy_(0, idx, v.reshape(-1, Hkv, D))
        lens.add_(nt)
        lens.copy_(P0)

    t, tg = _timed(rec, device, baseline, p["rep_ms"])
    _add(rec, "kv_append_", "torch_index_copy", shape, dtype, t, tg, "baseline", nbytes)


def bench_compact(rec, p, device, backends, B, L, P):
    import tridiff.ops as ops

    Hkv, D, dtype, layers = p["Hkv"], p["D"], p["dtype"], p["layers"]
    Tmax = P + L * (L + 1)
    kc = torch.randn(layers, B, Tmax, Hkv, D, device=device).to(dtype)
    vc = torch.randn_like(kc)
    lens = torch.full((B,), P, dtype=torch.int32, device=device)
    src = ops.quadratic_verify_slots(L, B, device=device)
    nbytes = 2 * 2 * layers * B * L * Hkv * D * kc.element_size()
    shape = dict(layers=layers, B=B, L=L, n=L, P=P, Hkv=Hkv, D=D)
    _each(rec, p, device, "kv_compact_", backends, shape, dtype, nbytes,
          lambda name: lambda: ops.kv_compact_(kc, vc, lens, src, backend=name))

    rows = torch.arange(B, device=device)[:, None].expand(B, L)
    i = torch.arange(L, device=device)[None, :]

    def baseline():  # gather the kept slots of every layer, then scatter them contiguously
        P_ = lens.long()[:, None]
        s, d = P_ + src.long(), P_ + i
        for c in (kc, vc):
            c[:, rows, d] = c[:, rows, s].clone()

    t, tg = _timed(rec, device, baseline, p["rep_ms"])
    _add(rec, "kv_compact_", "torch_index_copy", shape, dtype, t, tg, "baseline", nbytes)


def bench_rollback(rec, p, device, backends, P):
    import tridiff.ops as ops

    B, Hkv, D, dtype = p["rollback_B"], p["Hkv"], p["D"], p["dtype"]
    kc = torch.randn(B, P + 32, Hkv, D, device=device).to(dtype)
    lens = torch.full((B,), P + 32, dtype=torch.int32, device=device)
    back = torch.full((B,), P + 7, dtype=torch.int32, device=device)
    full = lens.clone()
    shape = dict(B=B, P=P, rejected=25, Hkv=Hkv, D=D)
    group = f"rollback P={P}"

    def rollback(name):  # roll back 25 rejected drafts, then restore (both metadata only)
        def fn():
            ops.kv_rollback_(lens, back, backend=name)
            lens.copy_(full)
        return fn

    _each(rec, p, device, "kv_rollback_", backends, shape, dtype, 2 * B * 4, rollback, group=group)
    # DynamicCache.crop-style baseline: a cache that is a tensor of exactly the kept length
    # must copy what it keeps -- cost grows with P.
    keep = P + 7

    def crop():
        return kc[:, :keep].clone()

    t = time_fn(crop, device, rep_ms=p["rep_ms"])
    rec.add("kv_rollback_", "torch_crop_copy", shape, dtype, t, role="baseline",
            bytes=2 * B * keep * Hkv * D * kc.element_size(), group=group)


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True) -> list:
    device, p, rec = start_run("kv_cache", plan, quick, device, out_dir, budget_s, overrides)
    ok = backends_per_op(rec, ("kv_append_", "kv_compact_", "kv_rollback_"), device, backends)
    with checks_off_on_cuda(device):
        for B, n, P in p["append"]:
            if not rec.out_of_time():
                bench_append(rec, p, device, ok["kv_append_"], B, n, P)
        for B, L, P in p["compact"]:
            if not rec.out_of_time():
                bench_compact(rec, p, device, ok["kv_compact_"], B, L, P)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for P in p["rollback_P"]:
            if not rec.out_of_time():
                bench_rollback(rec, p, device, ok["kv_rollback_"], P)
    return rec.finish(print_table=print_table)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
