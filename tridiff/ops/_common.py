"""Helpers shared by the public op modules: argument normalisation and the call path.

Every public op does: validate (raises TridiffInputError before anything is
written) -> resolve the backend -> call the chosen backend's function with the
reference's signature (through the torch.library op when traced, see run).
"""
from __future__ import annotations

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


def run(op: str, backend: str, device, args: tuple, custom_op):
    """Resolve the backend for `op` and run it: through its torch.library op while
    torch.compile traces or a dispatch mode is active (_dispatch.traced), else by calling
    the backend function directly -- the op's body does exactly that, so the result is
    the same, without the dispatcher's tens of microseconds per call."""
    name = _dispatch.resolve(op, backend, device, args, {})
    if _dispatch.traced():
        return custom_op(*args, name)
    return _dispatch.implementation(op, name)(*args)
