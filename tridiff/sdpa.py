"""The "sdpa" backend: attention on CPU through torch's scaled_dot_product_attention with
the mode mask, over the committed keys only; every other op is the torch reference's
(re-exported, so backend="sdpa" can run a whole forward or a whole decoding loop).

Its `attention` (same signature as tridiff.reference.attention, the definition of truth
it is tested against) serves CPU tensors. It computes the same function as the
reference, differently:

  * keys: the committed slots [0, max_b P_b) of the cache and the new tokens, not the
    whole capacity; the cache is neither copied whole nor upcast (SDPA accumulates half
    inputs in fp32 itself). When every row has the same committed length and writes
    its K/V into a contiguous cache (decoding one sequence), the new K/V are written
    first and the keys are read from the cache in place, without a concatenation;
  * GQA: the query heads of one KV head are stacked as extra query rows of that head
    ([B, Hkv, group * Tq, D]), so K/V are never repeated per query head;
  * one mask per forward: `attention_prepare` builds the [B, Tq, keys] mask (from
    tridiff.reference.attention.visibility, restricted to those keys), the K/V write
    indices and the layout once, and returns the per-layer function that
    tridiff.ops.attention_plan calls for every layer. A mask that hides nothing (one
    row decoding causally) is dropped, which lets SDPA take its unmasked path.

Rows past q_lens[b] (they see nothing) attend to everything inside SDPA and are zeroed
afterwards, as the reference returns zeros there. cache_lens and q_lens are read on the
host once per prepare (the longest committed length sizes the keys): free on CPU, a
device sync elsewhere, which is why this backend serves CPU tensors only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tridiff.reference import (  # noqa: F401  (the reference serves every op but attention)
    accept_linear, accept_quadratic, accept_rejection, diffusion_confidence, diffusion_unmask,
    kv_append_, kv_commit_, kv_compact_, kv_rollback_, kv_write_, paged_release_, paged_reserve_, sample,
)
from tridiff.reference.attention import visibility


def unavailable():
    return None


def supports_attention(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                       softmax_scale, write_kv):
    for t in (q, k, v, k_cache, v_cache, cache_lens):
        if t.device.type != "cpu":
            return (f"the sdpa backend reads the longest committed length on the host, so it takes "
                    f"CPU tensors only (got {t.device})")
    return None


def attention(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
              softmax_scale, write_kv):
    run = attention_prepare(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                            softmax_scale, write_kv)
    return run(q, k, v, k_cache, v_cache)


def attention_prepare(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                      softmax_scale, write_kv):
    """The per-layer attention function for these metadata (see the module docstring)."""
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    group = Hq // Hkv
    if B == 0 or Tq == 0:
        return lambda q, k, v, k_cache, v_cache: torch.zeros_like(q)
    lens, counts = cache_lens.tolist(), q_lens.tolist()   # the host reads (B integers each)
    p_max, same_p, padded = max(lens), min(lens) == max(lens), min(counts) < Tq
    P = cache_lens.long()
    n = q_lens.long()
    valid = torch.arange(Tq)[None, :] < n[:, None] if padded or not same_p else None   # [B, Tq]
    if Tq == 1:
        # One new token sees the committed keys and itself, whatever the mode.
        if same_p:
            mask = None
        else:
            mask = torch.cat([torch.arange(p_max)[None, :] < P[:, None], valid], dim=1)[:, None]
    else:
        mask = visibility(cache_lens, modes, mode_args, q_lens, Tq, p_max)        # [B, Tq, p_max + Tq]
    if mask is not None and padded:
        mask = mask | ~valid[:, :, None]
    if mask is None or bool(mask.all()):
        attn_mask = None
    else:   # query row (g, i) of KV head h is query head h * group + g at token i
        attn_mask = mask[:, None, None].expand(B, 1, group, Tq, p_max + Tq).reshape(B, 1, group * Tq, -1)
    zero_rows = ~valid[:, :, None, None] if padded else None
    committed = _committed_reader(k_cache, block_table, B, p_max)
    write = _writer(k_cache, block_table, P, n, Tq) if write_kv else None
    # Every row committed the same length and writes its new keys into a contiguous
    # cache: they land at slots p_max.., right where the concatenation would put them,
    # so write first and read keys [0, p_max + Tq) of the cache in place (no copy).
    in_place = write is not None and block_table is None and same_p
    scale = float(softmax_scale)

    def run(q, k, v, k_cache, v_cache):
        if in_place:
            write(k_cache, k)
            write(v_cache, v)
            keys, vals = k_cache[:, :p_max + Tq], v_cache[:, :p_max + Tq]
        elif p_max:
            keys, vals = torch.cat([committed(k_cache), k], dim=1), torch.cat([committed(v_cache), v], dim=1)
        else:
            keys, vals = k, v
        if Tq == 1:   # [B, 1, Hq, D] is [B, Hkv, group, D] already
            qg = q.reshape(B, Hkv, group, D)
        else:         # [B, Tq, Hkv, group, D] -> [B, Hkv, group * Tq, D]
            qg = q.reshape(B, Tq, Hkv, group, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, group * Tq, D)
        o = F.scaled_dot_product_attention(qg, keys.transpose(1, 2), vals.transpose(1, 2),
                                           attn_mask=attn_mask, scale=scale)
        if Tq == 1:
            out = o.reshape(B, 1, Hq, D)
        else:
            # contiguous, as the op's contract (and its fake kernel under torch.compile) says
            out = o.reshape(B, Hkv, group, Tq, D).permute(0, 3, 1, 2, 4).reshape(B, Tq, Hq, D).contiguous()
        if zero_rows is not None:
            out = out.masked_fill(zero_rows, 0.0)
        if write is not None and not in_place:
            write(k_cache, k)
            write(v_cache, v)
        return out

    return run


def _committed_reader(cache, block_table, B: int, p_max: int):
    """cache -> [B, p_max, Hkv, D]: a view of a contiguous cache, a gather of the pages
    holding positions < p_max of a paged one."""
    if block_table is None:
        return lambda c: c[:, :p_max]
    page = cache.shape[1]
    need = -(-p_max // page)
    pages = block_table[:, :need].long().clamp(min=0)   # unallocated (-1) pages are never visible
    return lambda c: c[pages].reshape(B, need * page, *c.shape[2:])[:, :p_max]


def _writer(cache, block_table, P, n, Tq: int):
    """(cache, new) -> None storing new[b, :n[b]] at positions P[b].. of row b, as
    tridiff.reference.slots.write_rows does; the indices are built once here."""
    B = P.shape[0]
    if B == 1 and block_table is None:   # one row: a slice copy, no index tensors
        p, count = P.tolist()[0], n.tolist()[0]
        if count == 0:
            return lambda cache, new: None
        return lambda cache, new: cache[:, p:p + count].copy_(new[:, :count])
    i = torch.arange(Tq)[None, :].expand(B, Tq)
    rows = torch.arange(B)[:, None].expand(B, Tq)
    pos = P[:, None] + i
    take = i < n[:, None]
    everything = bool(take.all())
    if not everything:
        rows, i, pos = rows[take], i[take], pos[take]
        if rows.numel() == 0:
            return lambda cache, new: None
    if block_table is None:
        index = (rows, pos)
    else:
        page = cache.shape[1]
        index = (block_table.long()[rows, torch.div(pos, page, rounding_mode="floor")], pos % page)

    def write(cache, new):
        cache.index_put_(index, new if everything else new[rows, i])

    return write
