"""Acceptance and diffusion-sampling benchmark over verify logits [B, 32, V] (V 131072,
bf16, B 1..64) for each tridiff backend vs the plain-torch formulations serving
engines use, and rejection sampling vs FlashInfer chain_speculative_sampling.

    python -m bench.bench_accept [--quick] [--out DIR] [--device cuda|cpu]

Bytes: every op here must read its logits once (numel * elt); outputs are a few KB.
The torch baselines read them several times (argmax, softmax, gather) and end with a
host round trip (`.tolist()`), as the engines' Python loops do.
"""
from __future__ import annotations

import sys

import torch

from bench.common import Recorder, backends_per_op, bench_main, checks_off_on_cuda, start_run, time_fn

N_DRAFT = 31          # block 32 = seed + 31 drafts
ACCEPT_AT = 6         # drafts agree with the target's argmax up to here (acceptance ~ 6.8)
MASK_ID, THRESHOLD = 100, 0.9


def plan(device: torch.device, quick: bool) -> dict:
    if device.type == "cpu":
        return dict(Bs=[1, 2], V=4096, dtype=torch.float32, quad_L=3, rep_ms=20)
    p = dict(Bs=[1, 2, 4, 8, 16, 32, 64], V=131072, dtype=torch.bfloat16, quad_L=16, rep_ms=100)
    if quick:
        p.update(Bs=[1, 8, 64], rep_ms=30)
    return p


def _logits(B, T, V, dtype, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(B, T, V, device=device, generator=g) * 4).to(dtype)  # spread like real logits


def _drafts_matching(logits, upto):
    """Drafts equal to the target argmax for the first `upto` positions, wrong after."""
    ar = logits[:, :-1].float().argmax(-1)
    V = logits.shape[-1]
    wrong = (ar + 1) % V
    i = torch.arange(ar.shape[1], device=ar.device)[None, :]
    return torch.where(i < upto, ar, wrong)


# ------------------------------------------------------------------ torch baselines

def torch_accept_linear(target, drafts):
    """argmax + elementwise compare + cumprod, then the host round trip engines do."""
    ar = target.argmax(-1)
    match = (ar[:, :-1] == drafts).int()
    n_acc = match.cumprod(1).sum(1) + 1
    return n_acc.tolist(), ar


def torch_rejection(target, draft_logits, drafts, T=1.0):
    """Lossless speculative sampling written the straightforward way (probabilities
    materialised in fp32, torch RNG, multinomial for residual and bonus)."""
    B, n = drafts.shape
    pt = torch.softmax(target.float() / T, -1)
    pd = torch.softmax(draft_logits.float() / T, -1)
    ptx = pt[:, :n].gather(-1, drafts[..., None])[..., 0]
    pdx = pd.gather(-1, drafts[..., None])[..., 0]
    u = torch.rand(B, n, device=target.device)
    c = (u * pdx < ptx).int().cumprod(1).sum(1)
    rows = torch.arange(B, device=target.device)
    at = c.clamp(max=n - 1)
    resid = (pt[rows, at] - pd[rows, at]).clamp(min=0)
    fix = torch.multinomial(resid + 1e-20, 1)[:, 0]
    bonus = torch.multinomial(pt[:, n], 1)[:, 0]
    nxt = torch.where(c == n, bonus, fix)
    return c.tolist(), nxt


def torch_diffusion_step(logits, block, mask_id=MASK_ID, threshold=THRESHOLD):
    """dLLM reference-style: softmax in fp32, gather the argmax prob, threshold, and the
    always-unmask-the-best rule, with the usual host check of remaining masks."""
    p = torch.softmax(logits.float(), -1)
    x0 = p.argmax(-1)
    conf = p.gather(-1, x0[..., None])[..., 0]
    masked = block == mask_id
    conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
    best = conf.argmax(-1, keepdim=True)
    transfer = (conf >= threshold) & masked
    transfer.scatter_(1, best, True)
    new_block = torch.where(transfer, x0, block)
    return bool((new_block == mask_id).any()), new_block


def torch_accept_quadratic(logits, draft, L):
    B = logits.shape[0]
    pred = logits.view(B, L, L + 1, -1).argmax(-1)
    pred[:, :, 1] = pred[:, :, 0]
    match = (pred[:, :-1, 0] == draft[:, 1:]).int()
    acc = match.cumprod(1).sum(1) + 1
    return acc.tolist(), pred


def flashinfer_chain(target, draft_logits, drafts, with_softmax: bool):
    """FlashInfer's chain_speculative_sampling (probabilities in, fp32); raises when absent."""
    import flashinfer

    fn = flashinfer.sampling.chain_speculative_sampling
    pt = torch.softmax(target.float(), -1)
    pd = torch.softmax(draft_logits.float(), -1)
    ids = drafts.to(torch.int32)

    def call():
        if with_softmax:
            a, b = torch.softmax(target.float(), -1), torch.softmax(draft_logits.float(), -1)
        else:
            a, b = pt, pd
        return fn(b, ids, a)

    call()
    return call


# ------------------------------------------------------------------ the benchmark

def bench_batch(rec: Recorder, p: dict, B: int, device, backends: dict):
    import tridiff.ops as ops

    V, dtype = p["V"], p["dtype"]
    elt = torch.tensor([], dtype=dtype).element_size()
    target = _logits(B, N_DRAFT + 1, V, dtype, device, seed=B)
    drafts = _drafts_matching(target, ACCEPT_AT)
    lens = torch.full((B,), 1024, dtype=torch.int32, device=device)
    seed = torch.arange(B, dtype=torch.int64, device=device) + 7
    offset = torch.zeros(B, dtype=torch.int64, device=device)
    shape = dict(B=B, T=N_DRAFT + 1, V=V)
    rb = dict(rec=rec, device=device, rep=p["rep_ms"], shape=shape, dtype=dtype)

    nbytes = target.numel() * elt
    _each(backends["accept_linear"], "accept_linear", rb, nbytes,
          lambda name: lambda: ops.accept_linear(target, drafts, lens, eos_id=-1, backend=name))
    _base("accept_linear", "torch_argmax_cumprod_host", rb, nbytes, lambda: torch_accept_linear(target, drafts))

    _each(backends["sample"], "sample_T1", rb, nbytes,
          lambda name: lambda: ops.sample(target, temperature=1.0, seed=seed, offset=offset, backend=name))
    _base("sample_T1", "torch_softmax_multinomial", rb, nbytes,
          lambda: torch.multinomial(torch.softmax(target.float().view(-1, V), -1), 1))

    draft_logits = _logits(B, N_DRAFT, V, dtype, device, seed=B + 1000)
    nbytes_r = (target.numel() + draft_logits.numel()) * elt
    _each(backends["accept_rejection"], "accept_rejection", rb, nbytes_r,
          lambda name: lambda: ops.accept_rejection(target, draft_logits, drafts, lens, eos_id=-1, temperature=1.0,
                                                    seed=seed, offset=offset, backend=name))
    _base("accept_rejection", "torch_softmax_rejection", rb, nbytes_r,
          lambda: torch_rejection(target, draft_logits, drafts))
    for label, soft in (("flashinfer_chain+softmax", True), ("flashinfer_chain(probs given)", False)):
        try:
            call = flashinfer_chain(target, draft_logits, drafts, soft)
        except Exception as exc:  # noqa: BLE001 - not installed or a different API version
            rec.skip("accept_rejection", label, shape, f"{type(exc).__name__}: {str(exc)[:120]}")
            continue
        _base("accept_rejection", label, rb, nbytes_r, call)

    # Diffusion step over a 32-token block: x0 + confidence, then threshold unmasking.
    block = torch.full((B, N_DRAFT + 1), MASK_ID, dtype=torch.int64, device=device)
    block[:, 0] = 5

    def tridiff_step(name):
        def call():
            x0, conf = ops.diffusion_confidence(target, backend=name)
            return ops.diffusion_unmask(block, x0, conf, mask_id=MASK_ID, threshold=THRESHOLD, backend=name)
        return call

    ok = [n for n in backends["diffusion_confidence"] if n in backends["diffusion_unmask"]]
    _each(ok, "diffusion_step", rb, nbytes, tridiff_step)
    _base("diffusion_step", "torch_softmax_gather_host", rb, nbytes, lambda: torch_diffusion_step(target, block))

    L = p["quad_L"]
    qlog = _logits(B, L * (L + 1), V, dtype, device, seed=B + 2000)
    qdraft = qlog.view(B, L, L + 1, V)[:, :, 0].float().argmax(-1)
    qdraft = torch.cat([qdraft[:, :1], qdraft[:, :-1]], 1)  # d[a+1] == pred[a, 0]: all accepted
    qshape = dict(B=B, T=L * (L + 1), V=V, L=L)
    rq = dict(rb, shape=qshape)
    nbytes_q = qlog.numel() * elt
    _each(backends["accept_quadratic"], "accept_quadratic", rq, nbytes_q,
          lambda name: lambda: ops.accept_quadratic(qlog, qdraft, lens, eos_id=-1, backend=name))
    _base("accept_quadratic", "torch_argmax_cumprod_host", rq, nbytes_q,
          lambda: torch_accept_quadratic(qlog, qdraft, L))


REFERENCE_MAX_B = 8  # on CUDA the torch reference (the truth, not a contender) is timed at small B only


def _each(names, op, rb, nbytes, make):
    for name in names:
        if name == "torch" and rb["device"].type == "cuda" and rb["shape"]["B"] > REFERENCE_MAX_B:
            rb["rec"].skip(op, name, rb["shape"], f"reference backend timed only for B <= {REFERENCE_MAX_B} on CUDA")
            continue
        try:
            t = time_fn(make(name), rb["device"], rep_ms=rb["rep"])
        except Exception as exc:  # noqa: BLE001
            rb["rec"].skip(op, name, rb["shape"], f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        rb["rec"].add(op, name, rb["shape"], rb["dtype"], t, bytes=nbytes)


def _base(op, name, rb, nbytes, fn):
    t = time_fn(fn, rb["device"], rep_ms=rb["rep"])
    rb["rec"].add(op, name, rb["shape"], rb["dtype"], t, role="baseline", bytes=nbytes)


def run(quick: bool = False, out_dir=None, device=None, backends=None, budget_s=None, overrides=None,
        print_table: bool = True) -> list:
    device, p, rec = start_run("accept", plan, quick, device, out_dir, budget_s, overrides)
    avail = backends_per_op(rec, ("accept_linear", "accept_rejection", "accept_quadratic", "sample",
                                  "diffusion_confidence", "diffusion_unmask"), device, backends)
    with checks_off_on_cuda(device):
        for B in p["Bs"]:
            if rec.out_of_time():
                rec.skip("*", "*", dict(B=B), "time budget spent")
                continue
            bench_batch(rec, p, B, device, avail)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rec.finish(print_table=print_table)


def main(argv=None) -> int:
    return bench_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
