"""Counter-based randomness shared bit-for-bit by every backend.

Philox4x32-10 (Salmon et al., SC'11): key = the row's int64 seed split into
(lo, hi) 32-bit words; counter = (c0, c1, c2, c3) = (vocab index v, position t,
stream, offset). The first output word x becomes the uniform
    u = ((x >> 9) + 0.5) * 2**-23            in (0, 1), exact in float32,
and the Gumbel variate g = -log(-log(u)) (float32). Streams:
    SAMPLE    token sampling at position t over the vocabulary (also the bonus /
              correction token of rejection sampling)
    ACCEPT    the accept coin of draft position t (v = 0)
    RESIDUAL  residual resampling at rejected position t
    DIFFUSION float64 Gumbel-max noise of the diffusion x0 at position t
The Triton and CUDA backends implement the same function; tests compare them
bit-exactly. Plain integer torch ops only (int64 holding uint32 values), so it
runs on any device without host synchronisation.
"""
from __future__ import annotations

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10

SAMPLE, ACCEPT, RESIDUAL, DIFFUSION = 0, 1, 2, 3


def _mulhilo(m: int, x: torch.Tensor):
    """(hi, lo) 32-bit words of m * x for uint32 m and x, using int64 without overflow."""
    x_lo = x & 0xFFFF
    x_hi = x >> 16
    p1 = m * x_lo                     # < 2**48
    p2 = m * x_hi                     # < 2**48
    low_sum = p1 + ((p2 & 0xFFFF) << 16)  # < 2**49
    lo = low_sum & MASK32
    hi = ((p2 >> 16) + (low_sum >> 32)) & MASK32
    return hi, lo


def philox(seed: torch.Tensor, c0, c1, c2, c3) -> torch.Tensor:
    """First output word (int64 holding a uint32) of Philox4x32-10; arguments broadcast.

    Counters may be tensors or Python ints; ints become device fills (never a
    host-to-device copy, which would stall the stream on CUDA). The key words keep
    the seed's own shape and broadcast inside each round.
    """
    seed = seed.long()
    counters = (c0, c1, c2, c3)
    shape = torch.broadcast_shapes(seed.shape, *(c.shape for c in counters if isinstance(c, torch.Tensor)))

    def word(c):
        if isinstance(c, torch.Tensor):
            return (c.long() & MASK32).expand(shape)
        return torch.full(shape, int(c) & MASK32, dtype=torch.int64, device=seed.device)

    x0, x1, x2, x3 = (word(c) for c in counters)
    k0 = seed & MASK32
    k1 = (seed >> 32) & MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(M0, x0)
        hi1, lo1 = _mulhilo(M1, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return x0


def uniform(seed, v, t, stream, offset) -> torch.Tensor:
    """float32 uniform in (0, 1) for counter (v, t, stream, offset) under key seed."""
    x = philox(seed, v, t, stream, offset)
    return ((x >> 9).to(torch.float32) + 0.5) * (2.0 ** -23)


def gumbel(seed, v, t, stream, offset) -> torch.Tensor:
    """float32 standard Gumbel variate -log(-log(u))."""
    u = uniform(seed, v, t, stream, offset)
    return -torch.log(-torch.log(u))
