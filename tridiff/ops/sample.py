"""Public token-selection ops: sampling, diffusion x0 / confidence, unmasking.

  sample(logits, *, temperature=0.0, seed=None, offset=None, backend="auto") -> int64
      logits [B, V] -> [B], or [B, T, V] -> [B, T]. temperature 0: argmax (ties -> lowest id);
      > 0: argmax_v(float32(logits)/T + gumbel(seed[b], v, t, SAMPLE, offset[b])).
  diffusion_confidence(logits [B, L, V], *, temperature=0.0, seed=None, offset=None, backend="auto")
      -> DiffusionConfidence(x0 int64 [B, L], conf [B, L] in logits.dtype)
      x0: argmax (the mask id is NOT excluded), or float64 Gumbel-max with the DIFFUSION
      stream; conf = softmax(logits)[x0] in float32 (float64 for float64), no temperature.
  diffusion_unmask(block [B, L] int64, x0 [B, L] int64, conf [B, L] float, *, mask_id,
                   threshold=None, num_transfer=None, backend="auto")
      -> UnmaskResult(new_block int64 [B, L], transferred bool [B, L])
      threshold: the best masked position plus every masked one with conf >= threshold
      (threshold rounded to conf.dtype); num_transfer (int or int [B]): the top-k masked
      positions by conf. Ties -> lower position. Exactly one of the two.
  num_transfer_schedule(mask_counts [B] int, steps) -> int32 [B, steps]   (plain helper)

seed / offset: int64 [B] tensors (the Philox key and counter word of each row, see
tridiff.reference.philox), required when temperature > 0 and ignored at 0. Pure
functions: nothing is mutated. Bit-level definitions: tridiff.reference.sample.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.ops._common import check_logits, check_seed_offset, check_temperature, check_token_int, per_row, run
from tridiff.reference.sample import num_transfer_schedule as _schedule

DiffusionConfidence = namedtuple("DiffusionConfidence", ["x0", "conf"])
UnmaskResult = namedtuple("UnmaskResult", ["new_block", "transferred"])


# ---- torch.library registrations -----------------------------------------------------------

@torch.library.custom_op("tridiff::sample", mutates_args=())
def _sample_op(logits: torch.Tensor, temperature: float, seed: Optional[torch.Tensor],
               offset: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    return _dispatch.implementation("sample", backend)(logits, temperature, seed, offset)


@_sample_op.register_fake
def _sample_fake(logits, temperature, seed, offset, backend):
    return logits.new_empty(logits.shape[:2], dtype=torch.int64)


@torch.library.custom_op("tridiff::diffusion_confidence", mutates_args=())
def _confidence_op(logits: torch.Tensor, temperature: float, seed: Optional[torch.Tensor],
                   offset: Optional[torch.Tensor], backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(_dispatch.implementation("diffusion_confidence", backend)(logits, temperature, seed, offset))


@_confidence_op.register_fake
def _confidence_fake(logits, temperature, seed, offset, backend):
    shape = logits.shape[:2]
    return logits.new_empty(shape, dtype=torch.int64), logits.new_empty(shape)


@torch.library.custom_op("tridiff::diffusion_unmask", mutates_args=())
def _unmask_op(block: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, mask_id: int,
               threshold: Optional[float], num_transfer: Optional[torch.Tensor],
               backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(_dispatch.implementation("diffusion_unmask", backend)(block, x0, conf, mask_id, threshold,
                                                                         num_transfer))


@_unmask_op.register_fake
def _unmask_fake(block, x0, conf, mask_id, threshold, num_transfer, backend):
    return torch.empty_like(block), torch.empty_like(block, dtype=torch.bool)


# ---- public functions ---------------------------------------------------------------------------

def sample(logits, *, temperature=0.0, seed=None, offset=None, backend="auto"):
    check_logits("logits", logits, (2, 3))
    squeeze = logits.dim() == 2
    logits3 = logits[:, None, :] if squeeze else logits
    temperature = check_temperature(temperature)
    seed, offset = check_seed_offset(temperature, seed, offset, logits.shape[0], logits.device)
    out = run("sample", backend, logits.device, (logits3, temperature, seed, offset), _sample_op)
    return out[:, 0] if squeeze else out


def diffusion_confidence(logits, *, temperature=0.0, seed=None, offset=None, backend="auto"):
    check_logits("logits", logits, (3,))
    temperature = check_temperature(temperature)
    seed, offset = check_seed_offset(temperature, seed, offset, logits.shape[0], logits.device)
    x0, conf = run("diffusion_confidence", backend, logits.device, (logits, temperature, seed, offset),
                   _confidence_op)
    return DiffusionConfidence(x0, conf)


def diffusion_unmask(block, x0, conf, *, mask_id, threshold=None, num_transfer=None, backend="auto"):
    chk.tensor("block", block, ndim=2, dtypes=(torch.int64,))
    B, L = block.shape
    dev = block.device
    chk.tensor("x0", x0, ndim=2, dtypes=(torch.int64,), device=dev)
    chk.shape("x0", x0, (B, L))
    chk.tensor("conf", conf, ndim=2, dtypes=chk.FLOAT_DTYPES, device=dev)
    chk.shape("conf", conf, (B, L))
    mask_id = check_token_int("mask_id", mask_id, None, False)
    if (threshold is None) == (num_transfer is None):
        chk.fail("threshold", "exactly one of threshold and num_transfer",
                 "both" if threshold is not None else "neither")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            chk.fail("threshold", "a python float in (0, 1]", repr(threshold))
        threshold = float(threshold)
    else:
        num_transfer = per_row("num_transfer", num_transfer, B, dev, dtype=torch.int32)
        if chk.values_checkable(num_transfer) and not chk.is_fake(num_transfer):
            chk.lengths_in_range("num_transfer", num_transfer, 0, 2**31 - 1, "2**31-1")
    out = run("diffusion_unmask", backend, dev, (block, x0, conf, mask_id, threshold, num_transfer),
              _unmask_op)
    return UnmaskResult(*out)


def num_transfer_schedule(mask_counts, steps):
    """Tokens to unmask per step: int32 [B, steps], an even split of mask_counts[b] with the
    remainder on the first steps. Not a kernel: plain torch, no backend."""
    chk.tensor("mask_counts", mask_counts, ndim=1, dtypes=chk.INDEX_DTYPES)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        chk.fail("steps", "a python int >= 1", repr(steps))
    if chk.values_checkable(mask_counts) and not chk.is_fake(mask_counts):
        chk.lengths_in_range("mask_counts", mask_counts, 0, 2**31 - 1, "2**31-1")
    return _schedule(mask_counts, steps)
