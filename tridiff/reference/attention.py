"""Reference mode-switchable attention over a KV cache (docs/spec.md section 2).

Layouts: q [B, Tq, Hq, D]; new keys/values k, v [B, Tq, Hkv, D]; cache contiguous
[B, Tmax, Hkv, D] or paged [num_pages, page, Hkv, D] with block_table [B, max_pages].
Row b has P = cache_lens[b] committed keys and n = q_lens[b] new tokens; new token i
is key P + i in the row's key sequence [cache[:P] | new[:n]].
"""
from __future__ import annotations

import torch

from tridiff.modes import Mode
from tridiff.reference.slots import capacity, logical_view, write_rows


def visibility(cache_lens, modes, mode_args, q_lens, Tq: int, Tcap: int) -> torch.Tensor:
    """Bool [B, Tq, Tcap + Tq]: may new token i see key j? Keys are [cache slots | new tokens].

    Rows i >= q_lens[b] see nothing (their output is zero).
    """
    device = cache_lens.device
    P = cache_lens.long()[:, None, None]
    n = q_lens.long()[:, None, None]
    mode = modes.long()[:, None, None]
    arg = mode_args.long()[:, None, None]
    i = torch.arange(Tq, device=device)[None, :, None]
    jc = torch.arange(Tcap, device=device)[None, None, :]
    jn = torch.arange(Tq, device=device)[None, None, :]

    cached = (jc < P) & (i < n)

    causal = jn <= i
    bidir = torch.ones_like(causal)
    sub = (arg + 1).clamp(min=1)  # QUADRATIC sub-block length L + 1
    a, b = i // sub, i % sub
    a2, b2 = jn // sub, jn % sub
    quadratic = ((b2 == 0) & (a2 <= a)) | ((b != 0) & (a2 == a))
    causal_then_bidir = (i >= n - arg) | causal
    anchored = _anchored(mode_args, q_lens, i, jn)
    new = torch.where(
        mode == Mode.CAUSAL, causal,
        torch.where(mode == Mode.BIDIR_BLOCK, bidir,
                    torch.where(mode == Mode.QUADRATIC, quadratic,
                                torch.where(mode == Mode.ANCHORED_QUADRATIC, anchored, causal_then_bidir))))
    new = new & (jn < n) & (i < n)
    return torch.cat([cached.expand(-1, Tq, -1), new.expand(cache_lens.shape[0], -1, -1)], dim=2)


def _anchored(mode_args, q_lens, i, jn) -> torch.Tensor:
    """ANCHORED_QUADRATIC among new tokens (tridiff.modes): bool [B, Tq, Tq]."""
    bit = torch.arange(32, device=mode_args.device)
    bits = (mode_args.long()[:, None] & 0xFFFFFFFF) >> bit & 1          # [B, 32]: the uint32 mask
    k = bits.sum(dim=1)
    L = (q_lens.long() // (k + 1)).clamp(min=1)[:, None, None]
    # anchor[b, g] = the (g+1)-th set bit = how many bit positions have <= g set bits up to them
    g = torch.arange(32, device=mode_args.device)
    anchor = (bits.cumsum(dim=1)[:, None, :] <= g[None, :, None]).sum(dim=2)   # [B, 32]
    group = i // L - 1                                                   # -1: a clean row
    a_row = anchor.gather(1, group.clamp(0, 31)[:, :, 0])[:, :, None]
    clean_key = jn < L
    clean_row = clean_key & (jn <= i)
    mask_row = (clean_key & (jn <= a_row)) | (jn // L == i // L)
    return torch.where(group < 0, clean_row, mask_row)


def attention(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
              softmax_scale: float, write_kv: bool) -> torch.Tensor:
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    group = Hq // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    Tcap = capacity(k_cache, block_table)

    keys = torch.cat([logical_view(k_cache, block_table).to(acc), k.to(acc)], dim=1)
    vals = torch.cat([logical_view(v_cache, block_table).to(acc), v.to(acc)], dim=1)
    mask = visibility(cache_lens, modes, mode_args, q_lens, Tq, Tcap)  # [B, Tq, Tk]

    qg = q.to(acc).reshape(B, Tq, Hkv, group, D)
    scores = torch.einsum("bqhgd,bkhd->bhgqk", qg, keys) * softmax_scale
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    row_has_keys = mask.any(dim=-1)[:, None, None, :, None]
    probs = torch.softmax(scores.masked_fill(~row_has_keys, 0.0), dim=-1)
    probs = torch.where(row_has_keys, probs, torch.zeros_like(probs))
    out = torch.einsum("bhgqk,bkhd->bqhgd", probs, vals).reshape(B, Tq, Hq, D)

    if write_kv:
        write_rows(k_cache, block_table, k, cache_lens, q_lens)
        write_rows(v_cache, block_table, v, cache_lens, q_lens)
    return out.to(q.dtype).contiguous()   # the op returns contiguous (its fake kernel too)
