"""CPU backends: the C++ build ("cpp", OpenMP over the batch) against the torch reference,
same inputs, same process, for every op both serve except attention (bench_attention has
it), at the shapes a CPU user of the 3B model meets: vocabulary 131072, 32-token blocks,
Hkv 8, D 128, 26 layers, pages of 16. These rows decide the "cpu" entries of
tridiff._dispatch.AUTO_ORDER_PER_OP.

    python -m bench.bench_cpu_backends [--quick] [--out DIR] [--budget-s S] [--backends torch,cpp]

What is timed: each backend's function itself, called with the positional arguments the
public op hands it (tridiff._dispatch.implementation(op, name)). The public op adds the
same validation and dispatch (tens of microseconds) whichever backend serves, so leaving
it out keeps the ratio the backends' own. Before timing, every case runs once through
tridiff.ops with the value checks on, once per backend, and the two results must agree
(bit-exact for data movement and integers; confidence within twice torch's own
error against float64) or the run stops.

Rows: torch is the baseline (role "baseline"), cpp the contender: ratio = torch_ms / cpp_ms
(> 1: cpp faster). Cores shared with other processes make CPU timing noisy, so the two
backends run in interleaved rounds (the first to go alternates) and each keeps its lowest
round median: a burst of outside load spoils a round, not the comparison. Rows carry the
1-minute load average. Calls slower than `slow_ms` get one round (the torch Philox
sampling paths take seconds). Ops that move their own state forward (kv_append_,
paged_reserve_/paged_release_) restore it inside the timed call with copy_ (a few
microseconds, the same for both backends).
"""
from __future__ import annotations

import os
import sys
import time

import torch

from bench.common import backends_per_op, bench_main, start_run, time_fn

OPS = ("kv_write_", "kv_append_", "kv_compact_", "kv_commit_", "kv_rollback_", "paged_reserve_",
       "paged_release_", "accept_linear", "accept_quadratic", "accept_rejection", "sample",
       "diffusion_confidence", "diffusion_unmask")
PAIR = ("torch", "cpp")
ACCEPT_AT = 6                 # linear drafts agree with the target argmax up to here
EOS_ID, MASK_ID = 2, 100


def plan(device: torch.device, quick: bool) -> dict:
    p = dict(V=131072, n=32, quad_L=4, Bs=[1, 4], logit_dtypes=[torch.float32, torch.bfloat16],
             sample_T1_block_Bs=[1],  # torch's Philox over [4, 32, V] takes ~5.5 s a call here
             kv_dtypes=[torch.float32, torch.bfloat16], Hkv=8, D=128, P=4096, compact_P=1024, layers=26,
             page=16, rounds=3, rep_ms=40, warmup_ms=10, slow_ms=150)
    if quick:
        p.update(Bs=[1], logit_dtypes=[torch.bfloat16], kv_dtypes=[torch.bfloat16], sample_T1_block_Bs=[],
                 rounds=2, rep_ms=20)
    return p


# ------------------------------------------------------------------ comparing the two backends

def _equal(op, what, a, b):
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
        raise AssertionError(f"{op}: cpp and torch disagree on {what} (dtype {a.dtype}/{b.dtype}, "
                             f"shape {tuple(a.shape)}/{tuple(b.shape)})")


def _outputs_agree(op, names, call):
    """Run call(name) -> tuple of tensors for each backend through tridiff.ops (value checks
    on) and compare them exactly; returns the outputs per backend."""
    outs = {name: tuple(call(name)) for name in names}
    if len(outs) == 2:
        for i, (a, b) in enumerate(zip(*outs.values())):
            _equal(op, f"output {i}", a, b)
    return outs


def _confidence_agrees(logits, outs):
    """x0 exactly; conf as close to float64 softmax as twice torch's own error plus half an
    ulp of the result dtype (the bound of tests/cpp: the C++ sums in double, torch in fp32)."""
    (x0_t, conf_t), (x0_c, conf_c) = outs["torch"], outs["cpp"]
    _equal("diffusion_confidence", "x0", x0_t, x0_c)
    exact = torch.softmax(logits.double(), -1).gather(-1, x0_t[..., None])[..., 0]
    torch_err = float((conf_t.double() - exact).abs().max())
    err = float((conf_c.double() - exact).abs().max())
    ulp = torch.finfo(logits.dtype).eps * float(exact.max())
    if conf_c.dtype != conf_t.dtype or not err <= 2 * torch_err + 0.5 * ulp:
        raise AssertionError(f"diffusion_confidence: cpp conf error {err:.3g} vs float64 exceeds twice torch's "
                             f"({torch_err:.3g}) plus half an ulp ({0.5 * ulp:.3g})")


def _inplace_agree(op, names, state, call):
    """In-place op: run call(name, *clones of state) per backend, compare the mutated state."""
    outs = []
    for name in names:
        clones = [t.clone() for t in state]
        call(name, *clones)
        outs.append(clones)
    if len(outs) == 2:
        for i, (a, b) in enumerate(zip(*outs)):
            _equal(op, f"mutated argument {i}", a, b)


# ------------------------------------------------------------------ cases
# A case: (op, shape, dtype, build). build(names) checks the op through tridiff.ops for each
# backend in `names` and returns (bytes read or moved or None, the positional arguments of
# the backend function, a restore() call to run after each timed call or None).

def kv_cases(p, device):
    import tridiff.ops as ops

    H, D, n, P = p["Hkv"], p["D"], p["n"], p["P"]
    gen = torch.Generator().manual_seed(1)
    for dtype in p["kv_dtypes"]:
        for B in p["Bs"]:
            for op in ("kv_write_", "kv_append_"):
                def build_write(names, B=B, dtype=dtype, op=op):
                    kc = torch.zeros(B, P + n, H, D, dtype=dtype, device=device)
                    vc = torch.zeros_like(kc)
                    k = torch.randn(B, n, H, D, generator=gen).to(dtype)
                    v = torch.randn(B, n, H, D, generator=gen).to(dtype)
                    lens0 = torch.full((B,), P, dtype=torch.int32)
                    lens, q_lens = lens0.clone(), torch.full((B,), n, dtype=torch.int32)
                    pub = getattr(ops, op)
                    _inplace_agree(op, names, (kc, vc, lens), lambda name, a, b, c: pub(a, b, k, v, c, backend=name))
                    # kv_append_ also commits: put the length back so every call writes the same slots
                    restore = (lambda: lens.copy_(lens0)) if op == "kv_append_" else None
                    return 2 * 2 * B * n * H * D * kc.element_size(), (kc, vc, k, v, lens, q_lens, None), restore

                yield op, dict(B=B, n=n, P=P, Hkv=H, D=D), dtype, build_write

            L, Pc = p["quad_L"], p["compact_P"]
            for layers in (None, p["layers"]):
                def build_compact(names, B=B, dtype=dtype, layers=layers):
                    lead = (layers,) if layers else ()
                    kc = torch.zeros(*lead, B, Pc + L * (L + 1), H, D, dtype=dtype, device=device)
                    vc = torch.zeros_like(kc)
                    for c in (kc, vc):  # only the verify slots need content
                        c[..., Pc:, :, :] = torch.randn(c[..., Pc:, :, :].shape, generator=gen).to(dtype)
                    lens = torch.full((B,), Pc, dtype=torch.int32)
                    src = ops.quadratic_verify_slots(L, B)
                    _inplace_agree("kv_compact_", names, (kc, vc),
                                   lambda name, a, b: ops.kv_compact_(a, b, lens, src, backend=name))
                    # repeated calls move the same bytes: slots P+i <- P+i*(L+1), whose sources are never rewritten
                    return 2 * 2 * (layers or 1) * B * L * H * D * kc.element_size(), (kc, vc, lens, src, None), None

                yield "kv_compact_", dict(layers=layers or 1, B=B, n=L, P=Pc, Hkv=H, D=D), dtype, build_compact

    for B in p["Bs"]:
        def build_commit(names, B=B):
            lens = torch.full((B,), P, dtype=torch.int32)
            step = torch.full((B,), n, dtype=torch.int32)
            _inplace_agree("kv_commit_", names, (lens,),
                           lambda name, c: ops.kv_commit_(c, step, capacity=P + n, backend=name))
            return None, (lens, step), None  # lengths only: the growing length harms no one

        def build_rollback(names, B=B):
            lens = torch.full((B,), P + n, dtype=torch.int32)
            back = torch.full((B,), P + n // 4, dtype=torch.int32)  # a quarter of the block accepted
            _inplace_agree("kv_rollback_", names, (lens,), lambda name, c: ops.kv_rollback_(c, back, backend=name))
            return None, (lens, back), None

        yield "kv_commit_", dict(B=B, n=n), torch.int32, build_commit
        yield "kv_rollback_", dict(B=B, rejected=n - n // 4), torch.int32, build_rollback
        yield from _paged_cases(p, B)


def _paged_cases(p, B):
    """A pool where each row holds P tokens' pages; reserve grows every row to P + n,
    release trims it back to P. The timed call restores the pool afterwards."""
    import tridiff.ops as ops

    page, P, n = p["page"], p["P"], p["n"]
    held = -(-P // page)
    max_pages = -(-(P + n) // page) + 1
    num_pages = B * max_pages + 8
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(2)).to(torch.int32)
    table = torch.full((B, max_pages), -1, dtype=torch.int32)
    table[:, :held] = perm[:B * held].view(B, held)
    pool0 = (table, torch.cat([perm[B * held:], perm[:B * held]]),  # free ids on top of the stack
             torch.tensor([num_pages - B * held], dtype=torch.int32))
    grow = torch.full((B,), P + n, dtype=torch.int32)
    keep = torch.full((B,), P, dtype=torch.int32)
    shape = dict(B=B, P=P, n=n, page=page, max_pages=max_pages)

    def build(op, lens, before):
        def b(names):
            pool = tuple(t.clone() for t in before)
            pub = getattr(ops, op)
            _inplace_agree(op, names, pool, lambda name, t, f, c: pub(t, f, c, lens, page_size=page, backend=name))

            def restore():
                for dst, src in zip(pool, before):
                    dst.copy_(src)
            return None, (*pool, lens, page), restore
        return b

    yield "paged_reserve_", shape, torch.int32, build("paged_reserve_", grow, pool0)
    grown = tuple(t.clone() for t in pool0)
    ops.paged_reserve_(*grown, grow, page_size=page, backend="torch")
    yield "paged_release_", shape, torch.int32, build("paged_release_", keep, grown)


def logits_cases(p, device):
    import tridiff.ops as ops

    V, n, L = p["V"], p["n"], p["quad_L"]
    gen = torch.Generator().manual_seed(3)

    def randn(*shape, dtype):
        return (torch.randn(*shape, generator=gen) * 4).to(dtype)  # spread like real logits

    for dtype in p["logit_dtypes"]:
        elt = torch.tensor([], dtype=dtype).element_size()
        for B in p["Bs"]:
            lens = torch.full((B,), 1024, dtype=torch.int32)
            seed = torch.arange(B, dtype=torch.int64) + 7
            offset = torch.full((B,), 5, dtype=torch.int64)
            # Temperature 0 reduces with an argmax; > 0 draws a Philox number per logit (costly in
            # torch), so sampled block-sized calls are timed only for the batches in sample_T1_block_Bs.
            sampled_block = B in p["sample_T1_block_Bs"]

            for temp in (0.0, 1.0) if sampled_block else (0.0,):
                def build_linear(names, B=B, dtype=dtype, lens=lens, temp=temp):
                    target = randn(B, n + 1, V, dtype=dtype)
                    s, o = (seed, offset) if temp else (None, None)
                    ar = ops.sample(target[:, :n], temperature=temp, seed=s, offset=o, backend="torch")
                    drafts = torch.where(torch.arange(n)[None, :] < ACCEPT_AT, ar, (ar + 1) % V)
                    _outputs_agree("accept_linear", names,
                                   lambda name: ops.accept_linear(target, drafts, lens, eos_id=EOS_ID, temperature=temp,
                                                                  seed=s, offset=o, backend=name))
                    return target.numel() * elt, (target, drafts, lens, EOS_ID, temp, s, o), None

                yield "accept_linear", dict(B=B, rows=n + 1, V=V, temperature=temp), dtype, build_linear

            def build_quadratic(names, B=B, dtype=dtype, lens=lens):
                logits = randn(B, L * (L + 1), V, dtype=dtype)
                pred0 = logits.view(B, L, L + 1, V)[:, :, 0].float().argmax(-1)
                draft = torch.cat([pred0[:, :1], pred0[:, :-1]], 1)  # draft[a+1] == pred[a, 0]: all accepted
                _outputs_agree("accept_quadratic", names,
                               lambda name: ops.accept_quadratic(logits, draft, lens, eos_id=EOS_ID, backend=name))
                return logits.numel() * elt, (logits, draft, lens, EOS_ID), None

            yield "accept_quadratic", dict(B=B, rows=L * (L + 1), V=V, L=L), dtype, build_quadratic

            for temp in (0.0, 1.0):
                def build_rejection(names, B=B, dtype=dtype, lens=lens, temp=temp):
                    target = randn(B, n + 1, V, dtype=dtype)
                    draft_logits = (target[:, :n].float() + torch.randn(B, n, V, generator=gen)).to(dtype)
                    drafts = draft_logits.float().argmax(-1)
                    s, o = (seed, offset) if temp else (None, None)
                    _outputs_agree("accept_rejection", names,
                                   lambda name: ops.accept_rejection(target, draft_logits, drafts, lens, eos_id=EOS_ID,
                                                                     temperature=temp, seed=s, offset=o, backend=name))
                    return ((target.numel() + draft_logits.numel()) * elt,
                            (target, draft_logits, drafts, lens, EOS_ID, temp, s, o), None)

                yield "accept_rejection", dict(B=B, rows=n + 1, V=V, temperature=temp), dtype, build_rejection

            for temp in (0.0, 1.0):
                for rows in (None, n):
                    if temp and rows and not sampled_block:
                        continue

                    def build_sample(names, B=B, dtype=dtype, temp=temp, rows=rows):
                        x = randn(B, rows, V, dtype=dtype) if rows else randn(B, V, dtype=dtype)
                        s, o = (seed, offset) if temp else (None, None)
                        _outputs_agree("sample", names,
                                       lambda name: (ops.sample(x, temperature=temp, seed=s, offset=o, backend=name),))
                        x3 = x if rows else x[:, None, :]  # what the public op hands a backend for [B, V]
                        return x.numel() * elt, (x3, temp, s, o), None

                    shape = dict(B=B, rows=rows, V=V, temperature=temp) if rows else dict(B=B, V=V, temperature=temp)
                    yield "sample", shape, dtype, build_sample

            def build_confidence(names, B=B, dtype=dtype):
                x = randn(B, n, V, dtype=dtype)
                outs = {name: tuple(ops.diffusion_confidence(x, backend=name)) for name in names}
                if len(outs) == 2:
                    _confidence_agrees(x, outs)
                return x.numel() * elt, (x, 0.0, None, None), None

            yield "diffusion_confidence", dict(B=B, rows=n, V=V, temperature=0.0), dtype, build_confidence

            for mode in ("threshold", "top-k"):
                def build_unmask(names, B=B, dtype=dtype, mode=mode):
                    block = torch.full((B, n), MASK_ID, dtype=torch.int64)
                    block[:, : n // 4] = 7  # a quarter already decoded
                    x0 = torch.randint(0, V, (B, n), generator=gen)
                    conf = torch.rand(B, n, generator=gen).to(dtype)
                    thr, k = (0.9, None) if mode == "threshold" else (None, torch.full((B,), 2, dtype=torch.int32))
                    _outputs_agree("diffusion_unmask", names,
                                   lambda name: ops.diffusion_unmask(block, x0, conf, mask_id=MASK_ID, threshold=thr,
                                                                     num_transfer=k, backend=name))
                    return None, (block, x0, conf, MASK_ID, thr, k), None

                yield "diffusion_unmask", dict(B=B, L=n, mode=mode), dtype, build_unmask


# ------------------------------------------------------------------ timing

def race(rec, p, device, op, shape, dtype, nbytes, args, restore, names):
    """Time the backends in interleaved rounds; each keeps its lowest round median."""
    from tridiff import _dispatch

    def make(name):
        f = _dispatch.implementation(op, name)
        if restore is None:
            return lambda: f(*args)

        def call():
            f(*args)
            restore()
        return call

    fns = {name: make(name) for name in names}
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = (time.perf_counter() - t0) * 1e3
    rounds = 1 if max(first.values()) > p["slow_ms"] else p["rounds"]
    best, medians = {}, {name: [] for name in fns}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time_fn(fns[name], device, warmup_ms=p["warmup_ms"], rep_ms=p["rep_ms"], min_reps=3)
            medians[name].append(round(t.median_ms, 6))
            if name not in best or t.median_ms < best[name].median_ms:
                best[name] = t
    group = f"{op}|{','.join(f'{k}={v}' for k, v in shape.items())}|{dtype}"
    load = round(os.getloadavg()[0], 2)
    auto = _dispatch.resolve(op, "auto", device, args, {})  # what "auto" runs for these very arguments
    for name, t in best.items():
        rec.add(op, name, shape, dtype, t, role="baseline" if name == "torch" else "tridiff", bytes=nbytes,
                group=group, rounds=medians[name], loadavg_1min=load, auto=auto)


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True) -> list:
    device, p, rec = start_run("cpu_backends", plan, quick, device or "cpu", out_dir, budget_s, overrides)
    if device.type != "cpu":
        rec.skip("*", "*", {}, "cpp is the CPU backend: this benchmark runs with --device cpu")
        return rec.finish(print_table=print_table)
    avail = backends_per_op(rec, OPS, device, backends or ",".join(PAIR))
    for family in (kv_cases, logits_cases):
        for op, shape, dtype, build in family(p, device):
            names = [name for name in PAIR if name in avail[op]]
            if not names:
                continue
            if rec.out_of_time():
                rec.skip(op, "*", shape, "time budget spent")
                continue
            nbytes, args, restore = build(names)
            race(rec, p, device, op, shape, dtype, nbytes, args, restore, names)
    recs = rec.finish(print_table=print_table)
    if print_table:
        print(summary(recs))
    return recs


def summary(recs) -> str:
    """One line per case: op, shape, dtype, torch ms, cpp ms, torch/cpp, and the backend
    "auto" runs for those arguments under the current tridiff._dispatch order."""
    cpp = {r["group"]: r for r in recs if r["backend"] == "cpp"}
    lines = [f"{'op':<21} {'shape':<46} {'dtype':<9} {'torch ms':>9} {'cpp ms':>9} {'torch/cpp':>9}  auto"]
    for r in recs:
        if r["backend"] != "torch":
            continue
        c = cpp.get(r["group"])
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        versus = f"{c['median_ms']:>9.3f} {c['ratio']:>9.2f}" if c else f"{'-':>9} {'-':>9}"
        lines.append(f"{r['op']:<21} {shape[:46]:<46} {r['dtype']:<9} {r['median_ms']:>9.3f} {versus}  "
                     + r["extra"]["auto"])
    return "\n".join(lines)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
