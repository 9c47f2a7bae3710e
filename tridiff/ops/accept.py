"""Public acceptance ops for speculative decoding (docs/spec.md section 3).

  accept_linear(target_logits [B, n+1, V], draft_tokens [B, n] int64, cache_lens [B] int32, *,
                eos_id, temperature=0.0, seed=None, offset=None, backend="auto") -> AcceptResult
      block = [seed, d_1..d_n]; verify row i predicts position i+1: ar[i] = argmax (T == 0)
      or the SAMPLE-stream Gumbel sample at t = i (T > 0, the reference's lossy rule).
      Accept the leading drafts with ar[i] == draft_tokens[b, i]; emit ar[0..c].
  accept_rejection(target_logits [B, n+1, V], draft_logits [B, n, V], draft_tokens [B, n],
                   cache_lens [B], *, eos_id, temperature, seed=None, offset=None, backend="auto")
      -> AcceptResult. Lossless speculative sampling; temperature 0 = accept_linear greedy.
  accept_quadratic(logits [B, L*(L+1), V], draft [B, L] int64, cache_lens [B] int32, *, eos_id,
                   backend="auto") -> QuadraticAcceptResult

AcceptResult: n_accepted int32 [B] (accepted drafts + 1), tokens int64 [B, n+1] (emitted,
-1 after n_emitted), n_emitted int32 [B] (n_accepted cut after the first eos), next_token
int64 [B] (the next seed, not committed), new_cache_lens int32 [B] (= cache_lens +
n_accepted; cache_lens is the committed length P before the block), hit_eos bool [B].
QuadraticAcceptResult has tokens [B, L] and next_draft int64 [B, L] instead of next_token.
eos_id = -1 disables eos handling. seed / offset: int64 [B], required iff temperature > 0.
Pure functions: nothing is mutated. Bit-level rules: tridiff.reference.accept.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.ops._common import (check_ids_in_range, check_logits, check_seed_offset, check_temperature,
                                 check_token_int, lens_tensor, run)

AcceptResult = namedtuple("AcceptResult",
                          ["n_accepted", "tokens", "n_emitted", "next_token", "new_cache_lens", "hit_eos"])
QuadraticAcceptResult = namedtuple("QuadraticAcceptResult",
                                   ["n_accepted", "tokens", "n_emitted", "next_draft", "new_cache_lens",
                                    "hit_eos"])

_Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _fake_result(x: torch.Tensor, B: int, width: int, next_width: Optional[int]):
    i32 = x.new_empty((B,), dtype=torch.int32)
    nxt = x.new_empty((B,) if next_width is None else (B, next_width), dtype=torch.int64)
    return (i32, x.new_empty((B, width), dtype=torch.int64), torch.empty_like(i32), nxt,
            torch.empty_like(i32), x.new_empty((B,), dtype=torch.bool))


# ---- torch.library registrations -----------------------------------------------------------

@torch.library.custom_op("tridiff::accept_linear", mutates_args=())
def _linear_op(target_logits: torch.Tensor, draft_tokens: torch.Tensor, cache_lens: torch.Tensor,
               eos_id: int, temperature: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
               backend: str) -> _Result:
    return tuple(_dispatch.implementation("accept_linear", backend)(
        target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset))


@_linear_op.register_fake
def _linear_fake(target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset, backend):
    B, n1, _ = target_logits.shape
    return _fake_result(target_logits, B, n1, None)


@torch.library.custom_op("tridiff::accept_rejection", mutates_args=())
def _rejection_op(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft_tokens: torch.Tensor,
                  cache_lens: torch.Tensor, eos_id: int, temperature: float, seed: Optional[torch.Tensor],
                  offset: Optional[torch.Tensor], backend: str) -> _Result:
    return tuple(_dispatch.implementation("accept_rejection", backend)(
        target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset))


@_rejection_op.register_fake
def _rejection_fake(target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature, seed,
                    offset, backend):
    B, n1, _ = target_logits.shape
    return _fake_result(target_logits, B, n1, None)


@torch.library.custom_op("tridiff::accept_quadratic", mutates_args=())
def _quadratic_op(logits: torch.Tensor, draft: torch.Tensor, cache_lens: torch.Tensor, eos_id: int,
                  backend: str) -> _Result:
    return tuple(_dispatch.implementation("accept_quadratic", backend)(logits, draft, cache_lens, eos_id))


@_quadratic_op.register_fake
def _quadratic_fake(logits, draft, cache_lens, eos_id, backend):
    B, L = draft.shape
    return _fake_result(logits, B, L, L)


# ---- validation ---------------------------------------------------------------------------------

def _check_drafts(arg: str, drafts, B: int, n: int, V: int, dev) -> None:
    chk.tensor(arg, drafts, ndim=2, dtypes=(torch.int64,), device=dev)
    chk.shape(arg, drafts, (B, n))
    check_ids_in_range(arg, drafts, V)


def _check_cache_lens(cache_lens, B: int, dev) -> None:
    lens_tensor("cache_lens", cache_lens, B, dev)
    if chk.values_checkable(cache_lens) and not chk.is_fake(cache_lens):
        chk.lengths_in_range("cache_lens", cache_lens, 0, 2**31 - 1, "2**31-1")


def _check_target(target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset):
    check_logits("target_logits", target_logits, (3,))
    B, n1, V = target_logits.shape
    if n1 < 1:
        chk.fail("target_logits", "shape [B, n+1, V] with n+1 >= 1", f"shape {tuple(target_logits.shape)}")
    dev = target_logits.device
    _check_drafts("draft_tokens", draft_tokens, B, n1 - 1, V, dev)
    _check_cache_lens(cache_lens, B, dev)
    eos_id = check_token_int("eos_id", eos_id, V, True)
    temperature = check_temperature(temperature)
    seed, offset = check_seed_offset(temperature, seed, offset, B, dev)
    return eos_id, temperature, seed, offset


# ---- public functions ---------------------------------------------------------------------------

def accept_linear(target_logits, draft_tokens, cache_lens, *, eos_id, temperature=0.0, seed=None,
                  offset=None, backend="auto"):
    eos_id, temperature, seed, offset = _check_target(target_logits, draft_tokens, cache_lens, eos_id,
                                                      temperature, seed, offset)
    args = (target_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset)
    return AcceptResult(*run("accept_linear", backend, target_logits.device, args, _linear_op))


def accept_rejection(target_logits, draft_logits, draft_tokens, cache_lens, *, eos_id, temperature,
                     seed=None, offset=None, backend="auto"):
    eos_id, temperature, seed, offset = _check_target(target_logits, draft_tokens, cache_lens, eos_id,
                                                      temperature, seed, offset)
    B, n1, V = target_logits.shape
    check_logits("draft_logits", draft_logits, (3,))
    chk.tensor("draft_logits", draft_logits, device=target_logits.device)
    chk.shape("draft_logits", draft_logits, (B, n1 - 1, V))
    args = (target_logits, draft_logits, draft_tokens, cache_lens, eos_id, temperature, seed, offset)
    return AcceptResult(*run("accept_rejection", backend, target_logits.device, args, _rejection_op))


def accept_quadratic(logits, draft, cache_lens, *, eos_id, backend="auto"):
    check_logits("logits", logits, (3,))
    B, S, V = logits.shape
    dev = logits.device
    chk.tensor("draft", draft, ndim=2, dtypes=(torch.int64,), device=dev)
    L = draft.shape[1]
    if L < 1 or draft.shape[0] != B or S != L * (L + 1):
        chk.fail("draft", f"shape [B={B}, L] with L >= 1 and L*(L+1) = logits.shape[1] = {S}",
                 f"shape {tuple(draft.shape)}")
    check_ids_in_range("draft", draft, V)
    _check_cache_lens(cache_lens, B, dev)
    eos_id = check_token_int("eos_id", eos_id, V, True)
    args = (logits, draft, cache_lens, eos_id)
    return QuadraticAcceptResult(*run("accept_quadratic", backend, dev, args, _quadratic_op))
