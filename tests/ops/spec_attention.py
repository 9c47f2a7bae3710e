"""An independent, deliberately plain transcription of docs/spec.md section 2.

Python loops over (row, query, key) decide visibility straight from the spec's
sentences; attention is then a dense float64 softmax. Nothing here shares code with
tridiff.reference, so the reference and the kernels are both checked against it.
"""
import math

import torch

CAUSAL, BIDIR_BLOCK, QUADRATIC, CAUSAL_THEN_BIDIR, ANCHORED_QUADRATIC = 0, 1, 2, 3, 4


def visible(mode: int, arg: int, P: int, n: int, i: int, j: int) -> bool:
    """May new token i (of n) see key j, where keys 0..P-1 are cached and P+i' is new token i'?"""
    if j < P:
        return True  # every mode sees the whole committed cache
    jn = j - P
    if jn >= n:
        return False
    if mode == CAUSAL:
        return j <= P + i
    if mode == BIDIR_BLOCK:
        return j < P + n
    if mode == QUADRATIC:
        L = arg
        a, b = divmod(i, L + 1)
        a2, b2 = divmod(jn, L + 1)
        return (b2 == 0 and a2 <= a) or (b != 0 and a2 == a)
    if mode == CAUSAL_THEN_BIDIR:
        K = arg
        if i < n - K:
            return j <= P + i
        return j < P + n
    if mode == ANCHORED_QUADRATIC:
        bits = arg % 2 ** 32  # the int32 holds a uint32 bitmask
        anchors = [a for a in range(32) if (bits >> a) & 1]
        L = n // (len(anchors) + 1)
        if i < L:  # clean slot d_i: causal over the clean slots
            return jn < L and jn <= i
        g = (i - L) // L  # mask slot of anchor anchors[g]
        if jn < L:
            return jn <= anchors[g]
        return (jn - L) // L == g
    raise ValueError(mode)


def dense_attention(q, k, v, k_cache, v_cache, P, modes, args, n_new, scale=None):
    """q [B,Tq,Hq,D] etc. as python lists of per-row ints; returns float64 [B,Tq,Hq,D]."""
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    group = Hq // Hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    out = torch.zeros(B, Tq, Hq, D, dtype=torch.float64)
    for b in range(B):
        keys = torch.cat([k_cache[b, : P[b]], k[b, : n_new[b]]]).double()
        vals = torch.cat([v_cache[b, : P[b]], v[b, : n_new[b]]]).double()
        nk = keys.shape[0]
        for i in range(n_new[b]):
            mask = torch.tensor([visible(modes[b], args[b], P[b], n_new[b], i, j) for j in range(nk)])
            for h in range(Hq):
                s = (keys[:, h // group] @ q[b, i, h].double()) * scale
                s = s.masked_fill(~mask, float("-inf"))
                out[b, i, h] = torch.softmax(s, 0) @ vals[:, h // group]
    return out
