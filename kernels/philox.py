"""Philox4x32-10 counter-based randomness, bit-identical to tridiff.reference.philox.

key = the row's int64 seed as (lo, hi) uint32 words; counter = (v, t, stream, offset).
Only the first output word is used. All arithmetic is uint32 (wrapping), so the
result is the same on every device and under the interpreter.

PRECISE selects libdevice's logf/log (the CUDA math library torch also uses) so the
Gumbel variates match torch on the GPU to the bit; the interpreter has no libdevice,
so launchers pass PRECISE=False there and get numpy's log.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

SAMPLE = tl.constexpr(0)
ACCEPT = tl.constexpr(1)
RESIDUAL = tl.constexpr(2)
DIFFUSION = tl.constexpr(3)


@triton.jit
def _int64(c):
    """c (a tensor, Python int or constexpr) as an int64 tensor, so .to() and >> apply."""
    return tl.zeros([], tl.int64) + c


@triton.jit
def philox_word(seed, c0, c1, c2, c3):
    """First output word (uint32) of Philox4x32-10 under key `seed` (int64); broadcasts."""
    seed = _int64(seed)
    k0 = seed.to(tl.uint32)          # truncation keeps the low word
    k1 = (seed >> 32).to(tl.uint32)  # high word (sign bits shifted away)
    x0 = _int64(c0).to(tl.uint32)
    x1 = _int64(c1).to(tl.uint32)
    x2 = _int64(c2).to(tl.uint32)
    x3 = _int64(c3).to(tl.uint32)
    zero = (x0 ^ x1 ^ x2 ^ x3) ^ (x0 ^ x1 ^ x2 ^ x3)  # zeros of the broadcast shape
    x0, x1, x2, x3 = x0 ^ zero, x1 ^ zero, x2 ^ zero, x3 ^ zero
    m0 = tl.full([], 0xD2511F53, tl.uint32)
    m1 = tl.full([], 0xCD9E8D57, tl.uint32)
    w0 = tl.full([], 0x9E3779B9, tl.uint32)
    w1 = tl.full([], 0xBB67AE85, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(x0, m0)
        lo0 = x0 * m0
        hi1 = tl.umulhi(x2, m1)
        lo1 = x2 * m1
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = k0 + w0
        k1 = k1 + w1
    return x0


@triton.jit
def uniform(seed, v, t, stream, offset):
    """float32 in (0, 1): ((x >> 9) + 0.5) * 2**-23, exact."""
    x = philox_word(seed, v, t, stream, offset)
    return ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def precise_log(x, PRECISE: tl.constexpr):
    return libdevice.log(x) if PRECISE else tl.log(x)  # constexpr: only one branch is compiled


@triton.jit
def precise_exp(x, PRECISE: tl.constexpr):
    return libdevice.exp(x) if PRECISE else tl.exp(x)


@triton.jit
def gumbel(seed, v, t, stream, offset, PRECISE: tl.constexpr):
    """float32 standard Gumbel variate -log(-log(u))."""
    u = uniform(seed, v, t, stream, offset)
    return -precise_log(-precise_log(u, PRECISE), PRECISE)


@triton.jit
def philox_fill_kernel(out_word, out_u, out_g, seed_ptr, c_ptr, n, PRECISE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Test/bench helper: element i uses seed_ptr[i] and counters c_ptr[4*i : 4*i+4] (int64)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    seed = tl.load(seed_ptr + i, mask=m, other=0)
    c0 = tl.load(c_ptr + 4 * i, mask=m, other=0)
    c1 = tl.load(c_ptr + 4 * i + 1, mask=m, other=0)
    c2 = tl.load(c_ptr + 4 * i + 2, mask=m, other=0)
    c3 = tl.load(c_ptr + 4 * i + 3, mask=m, other=0)
    x = philox_word(seed, c0, c1, c2, c3)
    tl.store(out_word + i, x.to(tl.int64), mask=m)
    tl.store(out_u + i, uniform(seed, c0, c1, c2, c3), mask=m)
    tl.store(out_g + i, gumbel(seed, c0, c1, c2, c3, PRECISE), mask=m)
