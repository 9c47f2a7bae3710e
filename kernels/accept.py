"""Speculative-draft acceptance (docs/spec.md section 3) on top of kernels/sample.py.

Pass 1 (kernels.sample.vocab_argmax_kernel, or rejection_stats_kernel) streams every
needed logits row once in vocabulary ranges and leaves per-range partials; the finish
kernels here run one program per batch row and do the prefix-match count, the emitted
tokens, eos truncation, next token / draft and new cache lengths on the device (no host
synchronisation). Per-row vectors (positions, partial ranges) are small: n+1 <= 1024,
S <= a few hundred.
"""
import triton
import triton.language as tl

from .philox import ACCEPT, RESIDUAL, SAMPLE, _int64, gumbel, precise_exp, precise_log, uniform
from .sample import (NEG_INF, argmax_update, combine_argmax, combine_stats, div_rn, load_row, scan_argmax,
                     stats_update, store_pair, temperature, vocab_range)

BIG = tl.constexpr(1 << 30)


@triton.jit
def leading(match, i, n):
    """Number of leading True of match over positions i < n (first i with no match)."""
    return tl.minimum(tl.min(tl.where(match & (i < n), BIG, i), axis=0), n)


@triton.jit
def finish_row(tok, i, m, n_acc, eos_id, b, cache_lens, tokens_out, s_tok, n_acc_out, n_emit_out,
               new_lens_out, hit_out):
    """Emit tok[:n_acc] cut after the first eos (inclusive), -1 after; write the per-row results."""
    live = i < n_acc
    is_eos = live & (tok == eos_id) & (eos_id >= 0)
    first = tl.min(tl.where(is_eos, i, BIG), axis=0)
    emitted = live & (i <= first)
    tl.store(tokens_out + b * s_tok + i, tl.where(emitted, tok, -1), mask=i < m)
    tl.store(n_acc_out + b, n_acc.to(tl.int32))
    tl.store(n_emit_out + b, tl.sum(emitted.to(tl.int32), axis=0))
    tl.store(new_lens_out + b, (tl.load(cache_lens + b).to(tl.int64) + n_acc).to(tl.int32))
    tl.store(hit_out + b, first < BIG)


@triton.jit
def linear_finish_kernel(part_val, part_idx, draft, cache_lens, n_acc_out, tokens_out, n_emit_out,
                         next_out, new_lens_out, hit_out, n, S, eos_id, s_d, s_tok,
                         BLOCK_N1: tl.constexpr, BLOCK_S: tl.constexpr):
    """ar[i] = combined best id of row i (argmax or Gumbel sample); c = leading ar[i] == d[i]."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_N1)
    ar = combine_argmax(part_val, part_idx, b * (n + 1) + i, i < n + 1, S, BLOCK_S).to(tl.int64)
    d = tl.load(draft + b * s_d + i, mask=i < n, other=-2)
    c = leading(ar == d, i, n)
    tl.store(next_out + b, tl.sum(tl.where(i == c, ar, 0), axis=0))
    finish_row(ar, i, n + 1, c + 1, eos_id, b, cache_lens, tokens_out, s_tok, n_acc_out, n_emit_out,
               new_lens_out, hit_out)


@triton.jit
def _quad_accepted(part_val, part_idx, draft, b, L, S, s_d, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr):
    """(ar = pred[:, 0] [BLOCK_L], accepted count) of row b."""
    a = tl.arange(0, BLOCK_L)
    ar = combine_argmax(part_val, part_idx, b * L + a, a < L, S, BLOCK_S).to(tl.int64)
    d_next = tl.load(draft + b * s_d + a + 1, mask=a < L - 1, other=-2)
    return ar, 1 + leading(ar == d_next, a, L - 1)


@triton.jit
def quadratic_rows_kernel(logits, part_val, part_idx, draft, part2_val, part2_idx,
                          L, V, split_len, s_b, s_t, s_v, s_d, S1,
                          ACC: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_L: tl.constexpr,
                          BLOCK_S: tl.constexpr):
    """Grid (B*(L-1), S): argmax of slot 2+j of the last accepted sub-block (only those
    L-1 rows of the L*(L+1) are read). Each program re-derives `accepted` from pass 1."""
    r = tl.program_id(0)
    sp, S, start, end = vocab_range(V, split_len)
    b = (r // (L - 1)).to(tl.int64)
    j = r % (L - 1)
    ar, acc = _quad_accepted(part_val, part_idx, draft, b, L, S1, s_d, BLOCK_L, BLOCK_S)
    slot = (acc - 1) * (L + 1) + 2 + j
    row = logits + b * s_b + slot.to(tl.int64) * s_t
    best_val, best_idx = scan_argmax(row, start, end, s_v, 0, 0, 0, 0, ACC, ACC, 0, SAMPLE, False, BLOCK_V)
    store_pair(part2_val, part2_idx, r * S + sp, best_val, best_idx)


@triton.jit
def quadratic_finish_kernel(part_val, part_idx, part2_val, part2_idx, draft, cache_lens, n_acc_out,
                            tokens_out, n_emit_out, next_out, new_lens_out, hit_out,
                            L, S1, S2, eos_id, s_d, s_tok, s_next,
                            BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a = tl.arange(0, BLOCK_L)
    ar, acc = _quad_accepted(part_val, part_idx, draft, b, L, S1, s_d, BLOCK_L, BLOCK_S)
    first = tl.sum(tl.where(a == acc - 1, ar, 0), axis=0)
    rest = combine_argmax(part2_val, part2_idx, b * (L - 1) + a - 1, (a >= 1) & (a < L), S2, BLOCK_S)
    tl.store(next_out + b * s_next + a, tl.where(a == 0, first, rest.to(tl.int64)), mask=a < L)
    d = tl.load(draft + b * s_d + a, mask=a < L, other=-1)
    finish_row(d, a, L, acc, eos_id, b, cache_lens, tokens_out, s_tok, n_acc_out, n_emit_out,
               new_lens_out, hit_out)


@triton.jit
def rejection_stats_kernel(target, draft_logits, seed_ptr, offset_ptr, part_m, part_s, bonus_val,
                           bonus_idx, n, V, split_len, s_tb, s_tt, s_tv, s_db, s_dt, s_dv, temp_bits,
                           ACC: tl.constexpr, PRECISE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Grid (B*(2n+1), S). Row j of batch row b: j < n softmax statistics of target row j
    at temperature T, n <= j < 2n those of draft row j-n, j = 2n the bonus: the SAMPLE-
    stream Gumbel-max of target row n (kept as range partials)."""
    r = tl.program_id(0)
    sp, S, start, end = vocab_range(V, split_len)
    b = (r // (2 * n + 1)).to(tl.int64)
    j = r % (2 * n + 1)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    if j == 2 * n:
        row = target + b * s_tb + _int64(n) * s_tt  # n == 1 arrives as a constant (no .to)
        best_val, best_idx = scan_argmax(row, start, end, s_tv, temp_bits, seed, n, offset, ACC,
                                         tl.float32, 1, SAMPLE, PRECISE, BLOCK_V)
        store_pair(bonus_val, bonus_idx, b * S + sp, best_val, best_idx)
    else:
        if j < n:
            row = target + b * s_tb + j.to(tl.int64) * s_tt
            s_v = s_tv
        else:
            row = draft_logits + b * s_db + (j - n).to(tl.int64) * s_dt
            s_v = s_dv
        T32 = temperature(temp_bits).to(tl.float32)
        m = tl.full([], NEG_INF, tl.float32)
        s = tl.zeros([], tl.float32)
        for v0 in range(start, end, BLOCK_V):
            v = v0 + tl.arange(0, BLOCK_V)
            vm = v < end
            x = div_rn(load_row(row, v, vm, s_v, ACC).to(tl.float32), T32)
            m, s = stats_update(m, s, tl.where(vm, x, NEG_INF), PRECISE)
        store_pair(part_m, part_s, r * S + sp, m, s)


@triton.jit
def _rejection_state(target, draft_logits, draft, seed, offset, part_m, part_s, b, n, S, temp_bits,
                     s_tb, s_tt, s_tv, s_db, s_dt, s_dv, s_d, ACC: tl.constexpr, PRECISE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Accepted count c of row b and the softmax statistics of position min(c, n-1)."""
    i = tl.arange(0, BLOCK_N)
    im = i < n
    base = b * (2 * n + 1)
    mt, st = combine_stats(part_m, part_s, base + i, im, S, PRECISE, BLOCK_S)
    md, sd = combine_stats(part_m, part_s, base + n + i, im, S, PRECISE, BLOCK_S)
    x = tl.load(draft + b * s_d + i, mask=im, other=0)
    T32 = temperature(temp_bits).to(tl.float32)
    lt = div_rn(tl.load(target + b * s_tb + i.to(tl.int64) * s_tt + x * s_tv, mask=im,
                                other=0.0).to(ACC).to(tl.float32), T32)
    ld = div_rn(tl.load(draft_logits + b * s_db + i.to(tl.int64) * s_dt + x * s_dv, mask=im,
                                other=0.0).to(ACC).to(tl.float32), T32)
    pt = div_rn(precise_exp(lt - mt, PRECISE), st)
    pd = div_rn(precise_exp(ld - md, PRECISE), sd)
    u = uniform(seed, 0, i, ACCEPT, offset)
    c = leading(u * pd < pt, i, n)
    ci = tl.minimum(c, n - 1)
    pick = i == ci
    return (c, ci, tl.sum(tl.where(pick, mt, 0.0), axis=0), tl.sum(tl.where(pick, st, 0.0), axis=0),
            tl.sum(tl.where(pick, md, 0.0), axis=0), tl.sum(tl.where(pick, sd, 0.0), axis=0))


@triton.jit
def rejection_residual_kernel(target, draft_logits, draft, seed_ptr, offset_ptr, part_m, part_s,
                              res_val, res_idx, pt_val, pt_idx, res_any, n, V, split_len, temp_bits,
                              s_tb, s_tt, s_tv, s_db, s_dt, s_dv, s_d, S1,
                              ACC: tl.constexpr, PRECISE: tl.constexpr, BLOCK_V: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (B, S): at the first rejected position ci, Gumbel-max (RESIDUAL stream) of
    log(max(0, p_t - p_d)) and, for the all-zero case, of log(p_t), over one range.
    Rows that accepted every draft (c == n) read nothing."""
    b = tl.program_id(0).to(tl.int64)
    sp, S, start, end = vocab_range(V, split_len)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    c, ci, mt, st, md, sd = _rejection_state(target, draft_logits, draft, seed, offset, part_m, part_s,
                                             b, n, S1, temp_bits, s_tb, s_tt, s_tv, s_db, s_dt, s_dv, s_d,
                                             ACC, PRECISE, BLOCK_N, BLOCK_S)
    if c < n:
        T32 = temperature(temp_bits).to(tl.float32)
        trow = target + b * s_tb + ci.to(tl.int64) * s_tt
        drow = draft_logits + b * s_db + ci.to(tl.int64) * s_dt
        rv = tl.full([], NEG_INF, tl.float32)
        ri = start + tl.zeros([], tl.int32)
        pv = tl.full([], NEG_INF, tl.float32)
        pi = start + tl.zeros([], tl.int32)
        anyr = tl.zeros([], tl.int32)
        for v0 in range(start, end, BLOCK_V):
            v = v0 + tl.arange(0, BLOCK_V)
            vm = v < end
            lt = div_rn(load_row(trow, v, vm, s_tv, ACC).to(tl.float32), T32)
            ld = div_rn(load_row(drow, v, vm, s_dv, ACC).to(tl.float32), T32)
            p_t = div_rn(precise_exp(lt - mt, PRECISE), st)
            p_d = div_rn(precise_exp(ld - md, PRECISE), sd)
            res = tl.maximum(p_t - p_d, 0.0)
            g = gumbel(seed, v, ci, RESIDUAL, offset, PRECISE)
            rv, ri = argmax_update(rv, ri, tl.where(vm, precise_log(res, PRECISE) + g, NEG_INF), v0)
            pv, pi = argmax_update(pv, pi, tl.where(vm, precise_log(p_t, PRECISE) + g, NEG_INF), v0)
            anyr = tl.maximum(anyr, tl.max((vm & (res > 0.0)).to(tl.int32), axis=0))
        store_pair(res_val, res_idx, b * S + sp, rv, ri)
        store_pair(pt_val, pt_idx, b * S + sp, pv, pi)
        tl.store(res_any + b * S + sp, anyr)


@triton.jit
def rejection_finish_kernel(target, draft_logits, draft, seed_ptr, offset_ptr, part_m, part_s,
                            bonus_val, bonus_idx, res_val, res_idx, pt_val, pt_idx, res_any,
                            cache_lens, n_acc_out, tokens_out, n_emit_out, next_out, new_lens_out, hit_out,
                            n, S1, S2, eos_id, temp_bits, s_tb, s_tt, s_tv, s_db, s_dt, s_dv, s_d, s_tok,
                            ACC: tl.constexpr, PRECISE: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_N1: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    bonus = tl.sum(combine_argmax(bonus_val, bonus_idx, b + tl.zeros([1], tl.int64), tl.full([1], 1, tl.int1),
                                  S1, BLOCK_S), axis=0).to(tl.int64)
    final = bonus
    c = n + tl.zeros([], tl.int32)
    if n > 0:
        c, ci, mt, st, md, sd = _rejection_state(target, draft_logits, draft, seed, offset, part_m, part_s,
                                                 b, n, S1, temp_bits, s_tb, s_tt, s_tv, s_db, s_dt, s_dv,
                                                 s_d, ACC, PRECISE, BLOCK_N, BLOCK_S)
        if c < n:
            sp = tl.arange(0, BLOCK_S)
            anyr = tl.max(tl.load(res_any + b * S2 + sp, mask=sp < S2, other=0), axis=0)
            one = b + tl.zeros([1], tl.int64)
            ok = tl.full([1], 1, tl.int1)
            if anyr > 0:
                final = tl.sum(combine_argmax(res_val, res_idx, one, ok, S2, BLOCK_S), axis=0).to(tl.int64)
            else:
                final = tl.sum(combine_argmax(pt_val, pt_idx, one, ok, S2, BLOCK_S), axis=0).to(tl.int64)
    i = tl.arange(0, BLOCK_N1)
    d = tl.load(draft + b * s_d + i, mask=i < n, other=-1)
    tok = tl.where(i == c, final, d)
    tl.store(next_out + b, final)
    finish_row(tok, i, n + 1, c + 1, eos_id, b, cache_lens, tokens_out, s_tok, n_acc_out, n_emit_out,
               new_lens_out, hit_out)
