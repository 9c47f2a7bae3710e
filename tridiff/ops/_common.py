"""Helpers shared by the public op modules: argument normalisation and the call path.

Every public op does: validate (raises TridiffInputError before anything is
written) -> resolve the backend -> call the chosen backend's function with the
reference's signature (through the torch.library op when traced, see run).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch


def per_row(arg: str, value, batch: int, device, dtype=torch.int32, default=None) -> torch.Tensor:
    """A per-row integer tensor [B] from an int, a [B] tensor, or None (-> default)."""
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        chk.tensor(arg, value, ndim=1, dtypes=chk.INDEX_DTYPES + (torch.int8, torch.int16), device=device)
        chk.shape(arg, value, (batch,))
        return value.to(dtype)
    if isinstance(value, bool) or not isinstance(value, int):
        chk.fail(arg, "an int or an integer tensor [B]", type(value).__name__)
    return torch.full((batch,), int(value), dtype=dtype, device=device)


def lens_tensor(arg: str, value, batch: int, device) -> None:
    chk.tensor(arg, value, ndim=1, dtypes=(torch.int32,), device=device)
    chk.shape(arg, value, (batch,))


def block_table_tensor(block_table, batch: int, device) -> None:
    chk.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), device=device)
    if block_table.shape[0] != batch:
        chk.fail("block_table", f"shape [{batch}, max_pages]", f"shape {tuple(block_table.shape)}")


def pages_cover(block_table, num_pages: int, page: int, upto: torch.Tensor, what: str) -> None:
    """Every page holding a position < upto[b] is a valid page id."""
    if not chk.values_checkable(block_table) or chk.is_fake(block_table):
        return
    table = block_table.detach().cpu().long()
    need = (upto.detach().cpu().long() + page - 1) // page
    col = torch.arange(table.shape[1])[None, :]
    used = col < need[:, None]
    bad = used & ((table < 0) | (table >= num_pages))
    if bool(bad.any()):
        b, c = (int(x) for x in bad.nonzero()[0])
        chk.fail("block_table", f"valid page ids in [0, {num_pages}) for the pages {what}",
                 f"{int(table[b, c])} at row {b}, page {c}")


# ---- token-selection arguments (tridiff.ops.sample and tridiff.ops.accept) -------------------

def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        chk.fail("temperature", "a finite python float >= 0", repr(temperature))
    return float(temperature)


def check_seed_offset(temperature: float, seed, offset, batch: int, device):
    """int64 [B] seed and offset, required iff temperature > 0; (None, None) at temperature 0."""
    if temperature == 0.0:
        return None, None
    for name, x in (("seed", seed), ("offset", offset)):
        if x is None:
            chk.fail(name, f"an int64 tensor [{batch}] (required when temperature > 0)", "None")
        chk.tensor(name, x, ndim=1, dtypes=(torch.int64,), device=device)
        chk.shape(name, x, (batch,))
    return seed, offset


def check_token_int(arg: str, value, V: Optional[int], allow_none_value: bool) -> int:
    """An int token id: in [0, V) (or any >= 0 when V is None); -1 allowed if allow_none_value."""
    low = -1 if allow_none_value else 0
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low \
        and (V is None or value < V)
    if not ok:
        rng = f"in [0, {V})" if V is not None else ">= 0"
        chk.fail(arg, f"an int {rng}" + (" or -1 (disabled)" if allow_none_value else ""), repr(value))
    return int(value)


def check_ids_in_range(arg: str, ids: torch.Tensor, V: int) -> None:
    """Every token id in [0, V) (a host check; skipped where values are not checkable)."""
    if ids.numel() == 0 or not chk.values_checkable(ids) or chk.is_fake(ids):
        return
    vals = ids.detach().to("cpu", torch.int64)
    bad = (vals < 0) | (vals >= V)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        chk.fail(arg, f"token ids in [0, V={V})", f"{int(vals[where])} at index {where}")


def check_logits(arg: str, logits, ndim) -> None:
    chk.tensor(arg, logits, dtypes=chk.FLOAT_DTYPES)
    if logits.dim() not in ndim:
        chk.fail(arg, " or ".join(f"{d} dimensions" for d in ndim), f"shape {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        chk.fail(arg, "a vocabulary dimension V >= 1", f"shape {tuple(logits.shape)}")


def run(op: str, backend: str, device, args: tuple, custom_op):
    """Resolve the backend for `op` and run it: through its torch.library op while
    torch.compile traces or a dispatch mode is active (_dispatch.traced), else by calling
    the backend function directly -- the op's body does exactly that, so the result is
    the same, without the dispatcher's tens of microseconds per call."""
    name = _dispatch.resolve(op, backend, device, args, {})
    if _dispatch.traced():
        return custom_op(*args, name)
    return _dispatch.implementation(op, name)(*args)
