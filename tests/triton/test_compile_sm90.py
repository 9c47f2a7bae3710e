"""Compiled-mode check of the KV-cache, sampling, acceptance, Philox, attention and int4 GEMM kernels for
sm_90a (H100/H200), on a machine without a GPU.

The other Triton tests run kernels in the interpreter, which accepts things the compiler
rejects (non-constexpr globals, unsupported dtype mixes) and says nothing about shared
memory or register spills. Here a child process (TRITON_INTERPRET unset) swaps in a fake
driver that reports an sm_90 target and calls the launchers themselves on empty CPU
tensors of the production shapes; a JIT cache hook records each launch's exact
specialisation (signature, constexprs, alignment, options) and stops it before compiling
or launching. Every distinct specialisation is then compiled with triton's bundled ptxas
(spawned workers, one per core) and its cubin's resource usage read with cuobjdump.
So the variants are the launchers' own choices (tile sizes, vocabulary splits, dtypes),
not a copy of them. The machine facts supplied are the H100/H200 SM count, which the
sampling launchers use to size their vocabulary splits and the attention launcher its
cache splits, and (attention) that the tensors are on a GPU, so it picks compiled tiles.
Beyond the production shapes: every attention tile config the launcher's rule can pick,
and the argument values the JIT specialises (1, multiples of 16, int32-sized bits).
"""
import json
import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.compile_check  # CPU-only: not part of the GPU suite's test stage

KERNEL_MODULES = ("kv_cache", "accept", "sample", "philox", "attention", "quant_gemm")
SM90_SM_COUNT = 132         # H100 SXM and H200 multiprocessors
SM90_SMEM = 227 * 1024      # per-block shared memory limit (opt-in) on sm_90
V = 131072                  # vocabulary of the target models
HKV, HEAD_DIM = 8, 128      # KV heads and head_dim of the target models
# No kernel may spill at the real shapes (the two per-row kernels that did at 4 warps
# launch with 8: rejection_finish and paged_release).


# ---- child process: collect the launchers' specialisations, compile them ------------------

class _Sm90Driver:
    """Just enough of a driver for the JIT to specialise and compile for sm_90 without CUDA."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)


def _use_sm90_driver():
    from triton.runtime.driver import driver
    driver.set_active(_Sm90Driver())


def _scenarios():
    """(label, real, run): run() calls a launcher once. real = the bf16 production shapes."""
    import functools

    import torch

    from tridiff.kernels.philox import philox_fill_kernel
    from tridiff.triton import accept as ta
    from tridiff.triton import kv_cache as tk
    from tridiff.triton import sample as ts

    e, i32, i64 = torch.empty, torch.int32, torch.int64
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    bf16 = torch.bfloat16

    def zeros(B, dtype=i64):
        return torch.zeros(B, dtype=dtype)

    def sample(B, T, dt, temp):
        ts.sample(e(B, T, V, dtype=dt), temp, zeros(B), zeros(B))

    def confidence(B, L, dt, temp):
        ts.diffusion_confidence(e(B, L, V, dtype=dt), temp, zeros(B), zeros(B))

    def unmask(B, L, dt, threshold):
        ts.diffusion_unmask(zeros((B, L)), zeros((B, L)), e(B, L, dtype=dt), 7, threshold,
                            None if threshold is not None else zeros(B, i32))

    def linear(B, n, dt, temp):
        ta.accept_linear(e(B, n + 1, V, dtype=dt), zeros((B, n)), zeros(B, i32), 2, temp, zeros(B), zeros(B))

    def rejection(B, n, dt):
        ta.accept_rejection(e(B, n + 1, V, dtype=dt), e(B, n, V, dtype=dt), zeros((B, n)), zeros(B, i32), 2,
                            0.7, zeros(B), zeros(B))

    def quadratic(B, L, dt):
        ta.accept_quadratic(e(B, L * (L + 1), V, dtype=dt), zeros((B, L)), zeros(B, i32), 2)

    def kv_write(B, T, D, dt, page, fused_qkv=False):
        Tmax = 4096
        if fused_qkv:  # k, v as strided views of one [B, T, Hq + 2 Hkv, D] projection
            qkv = e(B, T, 4 * HKV + 2 * HKV, D, dtype=dt)
            k, v = qkv[:, :, 4 * HKV:5 * HKV], qkv[:, :, 5 * HKV:]
        else:
            k, v = e(B, T, HKV, D, dtype=dt), e(B, T, HKV, D, dtype=dt)
        if page:
            pages = Tmax // page
            kc, vc = e(B * pages, page, HKV, D, dtype=dt), e(B * pages, page, HKV, D, dtype=dt)
            bt = zeros((B, pages), i32)
        else:
            kc, vc, bt = e(B, Tmax, HKV, D, dtype=dt), e(B, Tmax, HKV, D, dtype=dt), None
        tk.kv_write_(kc, vc, k, v, zeros(B, i32), zeros(B, i32), bt)

    def kv_compact(layers, B, n, D, dt, page):
        Tmax = 1024 + 1056  # committed prefix + the largest quadratic block (L = 32)
        if page:
            pages = Tmax // page
            kc, vc = e(B * pages, page, HKV, D, dtype=dt), e(B * pages, page, HKV, D, dtype=dt)
            bt = zeros((B, pages), i32)
        else:
            kc, vc, bt = e(layers, B, Tmax, HKV, D, dtype=dt), e(layers, B, Tmax, HKV, D, dtype=dt), None
        tk.kv_compact_(kc, vc, zeros(B, i32), zeros((B, n), i32), bt)

    def pages(op, B, max_pages):
        getattr(tk, op)(zeros((B, max_pages), i32), zeros(B * max_pages, i32), zeros(1, i32), zeros(B, i32), 16)

    def philox(precise):
        n = 4096  # BLOCK=1024 is what tests/triton/test_philox_triton.py launches with
        philox_fill_kernel[(4,)](e(n, dtype=i64), e(n), e(n), zeros(n), zeros((n, 4)), n,
                                 PRECISE=precise, BLOCK=1024)

    P = functools.partial
    # bf16: every production shape. fp16/fp32: one shape per op (the shape-dependent choices
    # are the bf16 ones; the dtype changes pointer types, conversions and the accumulator).
    for dt in (bf16, torch.float16, torch.float32):
        full, d = dt == bf16, names[dt]
        for temp in (0.0, 0.7):
            # verify rows [1, 32, V] split the vocabulary; [64, 32, V] is one program per row
            for B in ((1, 64) if full else (1,)):
                yield f"sample [{B},32,V] {d} T={temp}", full, P(sample, B, 32, dt, temp)
                yield f"diffusion_confidence [{B},32,V] {d} T={temp}", full, P(confidence, B, 32, dt, temp)
            for B, n in ((1, 31), (8, 31), (64, 31), (1, 63)) if full else ((1, 31),):
                yield f"accept_linear [{B},{n + 1},V] {d} T={temp}", full, P(linear, B, n, dt, temp)
        yield f"sample [1,1,V] {d} T=0.7", full, P(sample, 1, 1, dt, 0.7)
        for B, n in ((1, 31), (8, 31), (1, 63)) if full else ((1, 31),):
            yield f"accept_rejection [{B},{n + 1},V] {d}", full, P(rejection, B, n, dt)
        for B, L in ((1, 16), (8, 16), (1, 32)) if full else ((1, 16),):
            yield f"accept_quadratic [{B},{L}*{L + 1},V] {d}", full, P(quadratic, B, L, dt)
        for thr in (0.9, None):
            yield f"diffusion_unmask [8,32] {d} {'threshold' if thr else 'top-k'}", full, P(unmask, 8, 32, dt, thr)
        for page in (None, 16):
            kind = f"page{page}" if page else "contiguous"
            for T in (1, 32) if full else (32,):
                yield f"kv_write_ [8,{T},{HKV},{HEAD_DIM}] {d} {kind}", full, P(kv_write, 8, T, HEAD_DIM, dt, page)
            # quadratic L=16 / L=32 blocks (one fused launch), a long compaction (gather + scatter)
            for n in (16, 32, 512) if full else (32, 512):
                yield (f"kv_compact_ 34 layers [8,{n}] {HEAD_DIM} {d} {kind}", full,
                       P(kv_compact, 34, 8, n, HEAD_DIM, dt, page))
    yield "kv_write_ [8,32] bf16 fused-QKV views", True, P(kv_write, 8, 32, HEAD_DIM, bf16, None, True)
    for B, max_pages in ((1, 256), (64, 256)):  # 4096 tokens in pages of 16
        for op in ("paged_reserve_", "paged_release_"):
            yield f"{op} [{B},{max_pages}]", True, P(pages, op, B, max_pages)
    for precise in (True, False):
        yield f"philox_fill BLOCK=1024 PRECISE={precise}", True, P(philox, precise)
    # supported extremes and other head dims: compiled and checked, not production shapes
    for D in (64, 256):
        yield f"kv_write_ [8,32,{HKV},{D}] bf16 contiguous", False, P(kv_write, 8, 32, D, bf16, None)
    yield "paged_reserve_ [256,1024]", False, P(pages, "paged_reserve_", 256, 1024)
    yield "paged_release_ [256,1024]", False, P(pages, "paged_release_", 256, 1024)
    yield f"diffusion_unmask [8,{ts.MAX_UNMASK_L}] bf16 (largest L)", False, P(unmask, 8, ts.MAX_UNMASK_L, bf16, 0.9)
    yield (f"accept_linear [1,{ta.MAX_POSITIONS},V] bf16 (most positions)", False,
           P(linear, 1, ta.MAX_POSITIONS - 1, bf16, 0.0))
    yield from _specialisation_edges(P, sample, confidence, unmask, linear, rejection, quadratic, kv_write,
                                     kv_compact, pages)
    yield from _attention_scenarios()
    yield from _quant_gemm_scenarios()


def _quant_gemm_scenarios():
    """int4 dequant-GEMM (tridiff.triton.quant): the 3B preset's four projection shapes at
    1 (AR), 17 and 33 (verify) and 256 rows, g128 bf16 (split-K and not); fp16, fp32 and
    group 64 at one shape."""
    import functools

    import torch

    from tridiff.config import preset
    from tridiff.triton import quant as tq

    def gemm(M, N, K, dt, group):
        e, i32 = torch.empty, torch.int32
        tq.quant_linear(e(M, K, dtype=dt), e(K // 8, N, dtype=i32), e(K // group, N, dtype=dt),
                        e(K // group, N // 8, dtype=i32), 4, group)

    c = preset("3b")
    P = functools.partial
    shapes = {"qkv": (c.q_size + 2 * c.kv_size, c.hidden_size), "o": (c.hidden_size, c.q_size),
              "gate_up": (2 * c.intermediate_size, c.hidden_size), "down": (c.hidden_size, c.intermediate_size)}
    for name, (N, K) in shapes.items():
        for M in (1, 17, 33, 256):
            yield f"quant_linear 3b {name} [{M},{K}]x[{K},{N}] bf16 g128", True, P(gemm, M, N, K, torch.bfloat16, 128)
    N, K = shapes["qkv"]
    for dt, d in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        yield f"quant_linear 3b qkv [17,{K}] {d} g128", False, P(gemm, 17, N, K, dt, 128)
    yield f"quant_linear 3b qkv [1,{K}] bf16 g64", False, P(gemm, 1, N, K, torch.bfloat16, 64)


def _specialisation_edges(P, sample, confidence, unmask, linear, rejection, quadratic, kv_write, kv_compact,
                          pages):
    """Argument values the JIT types differently from the production shapes: an int equal
    to 1 becomes a compile-time constant (no .to()), one that fits int32 is typed i32
    (the float64 bits of 0.0 and of subnormals, which then cannot be bitcast to float64),
    and a multiple of 16 gets a divisibility hint. Values, not shapes: small V-sized rows."""
    import torch

    bf16, f64 = torch.bfloat16, torch.float64
    for n in (1, 16):  # one draft token: linear self-speculation with block length 2
        yield f"accept_rejection [1,{n + 1},V] bf16 n={n}", False, P(rejection, 1, n, bf16)
        for temp in (0.0, 0.7):
            yield f"accept_linear [1,{n + 1},V] bf16 n={n} T={temp}", False, P(linear, 1, n, bf16, temp)
    for L in (1, 2, 16):
        yield f"accept_quadratic [1,{L}*{L + 1},V] bf16 L={L}", False, P(quadratic, 1, L, bf16)
    for L in (1, 16):
        for thr in (0.0, 0.5, None):  # threshold 0.0: float64 bits 0
            yield f"diffusion_unmask [1,{L}] bf16 threshold={thr}", False, P(unmask, 1, L, bf16, thr)
    yield "diffusion_unmask [1,16] fp64 threshold=5e-324 (bits 1)", False, P(unmask, 1, 16, f64, 5e-324)
    for temp in (5e-324, 1e-320):  # float64 bits 1 and a subnormal that fits int32
        yield f"sample [1,16,V] bf16 T={temp}", False, P(sample, 1, 16, bf16, temp)
        yield f"diffusion_confidence [1,16,V] bf16 T={temp}", False, P(confidence, 1, 16, bf16, temp)
    for B in (1, 16):
        for T in (1, 16):
            yield f"kv_write_ [{B},{T}] bf16 page1", False, P(kv_write, B, T, HEAD_DIM, bf16, 1)
            yield f"kv_compact_ 1 layer [{B},{T}] bf16 page1", False, P(kv_compact, 1, B, T, HEAD_DIM, bf16, 1)
            yield f"kv_compact_ 1 layer [{B},{T}] bf16 contiguous", False, P(kv_compact, 1, B, T, HEAD_DIM, bf16, None)
        for op in ("paged_reserve_", "paged_release_"):
            yield f"{op} [{B},1]", False, P(pages, op, B, 1)


def attention_tile_configs():
    """{(D, dtype, tile config): (Tq, group)} for every tile config the Triton attention
    launcher can pick on a GPU, from its own rule (tile_config) over every head dim, dtype,
    GQA group and query length; the value is the smallest (Tq, group) that gets it. The
    rule sees only next_power_of_2(Tq * group_p2), so powers of two cover every input,
    and 128 query positions saturate every cap (checked against 256)."""
    import triton

    from tridiff.triton import attention as ta

    def table(max_tq):
        found = {}
        for D in ta.HEAD_DIMS:
            for dt in ta.DTYPES:
                for group in (1 << i for i in range(ta.MAX_GROUP.bit_length())):
                    for tq in (1 << i for i in range(max_tq.bit_length())):
                        gp2 = triton.next_power_of_2(group)
                        cfg = ta.tile_config(D, tq * gp2, gp2, dt, True)
                        found.setdefault((D, dt, tuple(sorted(cfg.items()))), (tq, group))
        return found

    configs = table(128)
    assert configs.keys() == table(256).keys()
    return configs


def _attention_scenarios():
    """Attention launches (the launcher picks tiles, splits and the merge): the production
    verify/decode shapes, then one launch per tile config it can pick (a 16-token verify at
    group 4, BLOCK_M 64 with 8 warps, is one). The launcher's device facts become an
    sm_90 GPU's: compiled tiles, 132 SMs."""
    import functools

    import torch

    from tridiff.triton import attention as ta

    ta._gpu_facts = lambda device: (True, SM90_SM_COUNT)
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

    def attention(B, Tq, group, D, dt, page, write_kv, Tmax=4096):
        e, i32 = torch.empty, torch.int32
        q, k, v = e(B, Tq, group * HKV, D, dtype=dt), e(B, Tq, HKV, D, dtype=dt), e(B, Tq, HKV, D, dtype=dt)
        if page:
            kc, vc = e(B * Tmax // page, page, HKV, D, dtype=dt), e(B * Tmax // page, page, HKV, D, dtype=dt)
            bt = torch.zeros((B, Tmax // page), dtype=i32)
        else:
            kc, vc, bt = e(B, Tmax, HKV, D, dtype=dt), e(B, Tmax, HKV, D, dtype=dt), None
        z = torch.zeros(B, dtype=i32)
        ta.launch(q, k, v, kc, vc, z, torch.zeros(B, dtype=torch.int8), z, z, bt, D ** -0.5, write_kv)

    P = functools.partial
    bf16 = torch.bfloat16
    # Hq 32 / Hkv 8, D 128: verify blocks of 32 and 16 tokens, decode; small batches split the cache
    for B, Tq, page, write_kv in ((1, 32, 16, True), (1, 16, 16, True), (8, 32, None, True), (64, 32, 16, True),
                                  (1, 1, 16, False), (64, 1, None, False)):
        kind = f"page{page}" if page else "contiguous"
        yield (f"attention [{B},{Tq}] group 4 D128 bf16 {kind}{' write_kv' if write_kv else ''}", True,
               P(attention, B, Tq, 4, HEAD_DIM, bf16, page, write_kv))
    for (D, dt, cfg), (Tq, group) in attention_tile_configs().items():
        tiles = " ".join(f"{k}={v}" for k, v in cfg)
        yield (f"attention [1,{Tq}] group {group} D{D} {names[dt]} page16 ({tiles})", False,
               P(attention, 1, Tq, group, D, dt, 16, True))


def _launch_facts(compile):
    """A launch's constexpr values by name, argument types, warps and stages."""
    names = list(compile["signature"])
    consts = {names[path[0]]: v if isinstance(v, (bool, int, float)) else str(v)
              for path, v in compile["constants"].items()}
    return dict(consts=consts, types=dict(compile["signature"]), warps=compile["num_warps"],
                stages=compile["num_stages"])


def _collect():
    """One task per distinct (kernel, specialisation key) launched, in first-seen order."""
    from triton import knobs

    import tridiff.triton._common as tc

    _use_sm90_driver()
    tc.target_programs = lambda device: 2 * SM90_SM_COUNT  # the launchers' own rule on an H100/H200
    seen, current = {}, {}

    def hook(*, key, fn, compile, **_):
        k = (fn.module, fn.name, str(key))
        task = seen.setdefault(k, dict(module=fn.module, kernel=fn.name, spec=compile["specialization_data"],
                                       labels=[], real=False, **_launch_facts(compile)))
        task["labels"].append(current["label"])
        task["real"] |= current["real"]
        return True  # handled: the JIT neither compiles nor launches

    knobs.runtime.jit_cache_hook = hook
    for label, real, run in _scenarios():
        current.update(label=label, real=real)
        run()
    knobs.runtime.jit_cache_hook = None
    return list(seen.values())


def _resource_usage(k) -> dict:
    """Registers, stack frame (= spill space: Triton inlines every call), local memory and
    static shared memory of the cubin; the ptxas spill line where there is a stack frame."""
    import tempfile

    from triton import knobs
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
        with open(cubin, "wb") as f:
            f.write(k.asm["cubin"])
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", cubin], check=True,
                             capture_output=True, text=True).stdout
        usage = {n.lower(): int(v) for n, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
        if usage["stack"]:
            with open(ptx, "w") as f:
                f.write(k.asm["ptx"])
            log = subprocess.run([knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", ptx, "-o", cubin],
                                 capture_output=True, text=True).stderr
            usage["spill_log"] = " ".join(line.strip() for line in log.splitlines() if "spill" in line)
    return usage


def _compile(task):
    import importlib
    import time
    _use_sm90_driver()
    fn = getattr(importlib.import_module(task["module"]), task["kernel"])
    t0 = time.perf_counter()
    try:
        k = fn.preload(task["spec"])  # triton.compile of the recorded ASTSource, ptxas included
    except Exception as exc:  # reported per variant; the test fails on it
        return dict(task, error=f"{type(exc).__name__}: {exc}"[-4000:])
    return dict(task, error=None, seconds=round(time.perf_counter() - t0, 2), dyn_shared=k.metadata.shared,
                num_warps=k.metadata.num_warps, **_resource_usage(k))


def _launchable_kernels():
    """Per module: the @triton.jit functions defined there whose name ends in _kernel."""
    import importlib

    from triton.runtime.jit import JITFunction
    out = {}
    for short in KERNEL_MODULES:
        mod = importlib.import_module(f"tridiff.kernels.{short}")
        out[short] = sorted(n for n, f in vars(mod).items() if isinstance(f, JITFunction)
                            and n.endswith("_kernel") and f.fn.__module__ == mod.__name__)
    return out


def _child():
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    tasks = _collect()
    # the slow compiles (libdevice + Philox rounds) first, so the two workers finish together
    tasks.sort(key=lambda t: t["kernel"].startswith(("rejection", "vocab", "confidence")), reverse=True)
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_compile, tasks))
    print(json.dumps(dict(results=results, kernels=_launchable_kernels())))


if __name__ == "__main__":
    _child()


# ---- pytest side ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sm90(compiled_python):
    """Collect and compile once per pytest process (the child takes ~a minute on 2 cores)."""
    r = compiled_python(os.path.abspath(__file__), timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _of(sm90, module):
    return [r for r in sm90["results"] if r["module"] == f"tridiff.kernels.{module}"]


def _row(r):
    more = len(r["labels"]) - 1
    what = ("* " if r["real"] else "  ") + r["labels"][0] + (f" (+{more} more)" if more else "")
    if r["error"]:
        return f"{r['kernel']:26s} {what}: {r['error'].splitlines()[0]}"
    return (f"{r['kernel']:26s} regs {r['reg']:3d} spill/stack {r['stack']:3d} B local {r['local']} "
            f"smem {r['dyn_shared'] + r['shared']:6d} B warps {r['num_warps']:2d} {what}")


TRITON_MODULES = pytest.mark.parametrize("backend,module", [("triton", m) for m in KERNEL_MODULES],
                                         ids=[f"triton-{m}" for m in KERNEL_MODULES])


@TRITON_MODULES
def test_every_kernel_compiles_for_sm90(sm90, backend, module):
    """Every *_kernel of the module compiles in every launched variant; shared memory fits.
    (Table: -s; '*' marks the bf16 production shapes.)"""
    rows = _of(sm90, module)
    print("\n" + "\n".join(_row(r) for r in rows))
    assert sm90["kernels"][module], module
    assert sorted({r["kernel"] for r in rows}) == sm90["kernels"][module]  # none left unlaunched
    assert any(r["real"] for r in rows)
    failed = [_row(r) for r in rows if r["error"]]
    assert not failed, "\n".join(failed)
    for r in rows:
        assert r["dyn_shared"] + r["shared"] <= SM90_SMEM, _row(r)


def test_every_attention_tile_config_compiled(sm90):
    """The attention variants compiled above include every tile config the launcher's rule
    can pick on a GPU (computed here from tile_config, not from the child's list)."""
    import torch
    dtypes = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
    want = {(D, dtypes[dt], c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"])
            for D, dt, cfg in attention_tile_configs() for c in [dict(cfg)]}
    got = {_tile(r) for r in _of(sm90, "attention") if r["kernel"] == "attention_kernel" and not r["error"]}
    assert (128, "*bf16", 64, 64, 8, 3) in want  # a 16-token verify at GQA group 4
    assert not want - got, sorted(want - got)


def _tile(r):
    c = r["consts"]
    return c["HEAD_DIM"], r["types"]["Q"], c["BLOCK_M"], c["BLOCK_N"], r["warps"], r["stages"]


def _known_spill(r) -> bool:
    """Spills outside the production shapes that are reported (table: -s), not asserted:
    float32 attention and int4 GEMM (IEEE FMA-path dots; a test dtype) and the split merge
    at head dim 256 or into float32, which unrolls every split's [16, D] partial into
    registers."""
    if r["real"]:
        return False
    if r["kernel"] == "attention_kernel":
        return r["types"]["Q"] == "*fp32"
    if r["kernel"] == "merge_kernel":
        return r["consts"]["HEAD_DIM"] == 256 or r["types"]["OUT"] == "*fp32"
    if r["kernel"] == "quant_gemm_kernel":   # fp32 x: IEEE dots on the FMA path (392 B at 4 warps)
        return r["types"]["x_ptr"] == "*fp32"
    return False


@TRITON_MODULES
def test_no_spills(sm90, backend, module):
    """No kernel spills registers or uses local memory in any variant (for the streaming
    kernels a spill would sit in their hot loop; the per-row finish kernels launch with
    enough warps to avoid it), _known_spill aside."""
    rows = [r for r in _of(sm90, module) if not r["error"] and not _known_spill(r)]
    assert rows
    for r in rows:
        assert r["local"] == 0, _row(r)
        assert r["stack"] == 0, _row(r) + " " + r.get("spill_log", "")
