"""Public mode-switchable attention over a KV cache.

    out = attention(q, k, v, k_cache, v_cache, cache_lens, modes, *, mode_args=None,
                    q_lens=None, block_table=None, softmax_scale=None, write_kv=False,
                    backend="auto")

Layouts (B rows, Tq new-token slots, GQA with Hq a multiple of Hkv):
  q            [B, Tq, Hq, D]      queries of the new tokens (rotary already applied)
  k, v         [B, Tq, Hkv, D]     keys/values of the new tokens
  k/v_cache    [B, Tmax, Hkv, D]   contiguous, or [num_pages, page, Hkv, D] with
  block_table  [B, max_pages] int32 (paged; -1 = no page)
  cache_lens   [B] int32           committed length P of each row
  modes        Mode, int or [B] int tensor (tridiff.Mode values), per row
  mode_args    int or [B] int32    QUADRATIC: L (row has L*(L+1) new tokens);
                                   CAUSAL_THEN_BIDIR: K (last K new tokens = the block);
                                   ANCHORED_QUADRATIC: anchor bitmask read as uint32
                                   (row has L*(popcount+1) new tokens, see tridiff.modes)
  q_lens       int or [B] int32    new tokens per row (<= Tq; default Tq); rows
                                   past q_lens[b] get zeros
  out          [B, Tq, Hq, D]      dtype of q, contiguous (every backend)
write_kv=True also stores k/v[b, :q_lens[b]] in cache slots P.. of row b (in place,
lengths NOT advanced: commit with kv_commit_). Mutates k_cache/v_cache only then.
Visibility per mode is docs/spec.md section 2; tridiff.reference.attention.visibility is
its executable form.
"""
from __future__ import annotations

from typing import Optional

import torch

from tridiff import _checks as chk
from tridiff import _dispatch
from tridiff.modes import NUM_MODES, Mode
from tridiff.ops._common import block_table_tensor, lens_tensor, pages_cover, per_row, run
from tridiff.reference.slots import capacity


@torch.library.custom_op("tridiff::attention", mutates_args=("k_cache", "v_cache"))
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, cache_lens: torch.Tensor, modes: torch.Tensor,
                  mode_args: torch.Tensor, q_lens: torch.Tensor, block_table: Optional[torch.Tensor],
                  softmax_scale: float, write_kv: bool, backend: str) -> torch.Tensor:
    impl = _dispatch.implementation("attention", backend)
    return impl(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                softmax_scale, write_kv)


@_attention_op.register_fake
def _attention_fake(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens, block_table,
                    softmax_scale, write_kv, backend):
    return q.new_empty(q.shape)   # contiguous, whatever q's strides (q is often a view)


def attention(q, k, v, k_cache, v_cache, cache_lens, modes, *, mode_args=None, q_lens=None,
              block_table=None, softmax_scale=None, write_kv=False, backend="auto"):
    args = normalize_attention_args(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args,
                                    q_lens, block_table, softmax_scale, write_kv)
    return run("attention", backend, q.device, args, _attention_op)


def attention_plan(q, k, v, k_cache, v_cache, cache_lens, modes, *, mode_args=None, q_lens=None,
                   block_table=None, softmax_scale=None, write_kv=False, backend="auto") -> "AttentionPlan":
    """`attention` for the layers of one forward, checked once.

        plan = attention_plan(q0, k0, v0, k_cache0, v_cache0, cache_lens, modes, ...)
        out_i = plan(q_i, k_i, v_i, k_cache_i, v_cache_i)     # == attention(q_i, ..., same kwargs)

    Every argument is validated here exactly as `attention` validates it (shapes, dtypes,
    devices, then values) and the backend is resolved once. A call then only compares
    its five tensors' shapes, strides, dtypes and devices with the checked ones (raising
    TridiffInputError naming the first that differs, before anything is written) and
    runs the backend: the metadata (cache_lens, modes, mode_args, q_lens, block_table) is
    the one given here and must not change between calls. A backend may define
    `attention_prepare(*args)` returning a per-call function of (q, k, v, k_cache,
    v_cache) that reuses work shared by every layer (its mask, its cache indices).
    Under torch.compile every call goes through the registered torch.library op."""
    args = normalize_attention_args(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args,
                                    q_lens, block_table, softmax_scale, write_kv)
    name = _dispatch.resolve("attention", backend, q.device, args, {})
    return AttentionPlan(name, args)


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.stride(), t.dtype, t.device


_PLAN_ARGS = ("q", "k", "v", "k_cache", "v_cache")


class AttentionPlan:
    """See attention_plan."""

    def __init__(self, backend: str, args: tuple):
        self.backend = backend
        self.args = args
        self._meta = args[5:]
        self._layouts = tuple(_layout(t) for t in args[:5])
        self._fn = None

    def _function(self):
        impl = _dispatch.implementation("attention", self.backend)
        prepare = getattr(_dispatch.backend_module(self.backend), "attention_prepare", None)
        if prepare is not None:
            return prepare(*self.args)
        meta = self._meta
        return lambda q, k, v, k_cache, v_cache: impl(q, k, v, k_cache, v_cache, *meta)

    def __call__(self, q, k, v, k_cache, v_cache):
        tensors = (q, k, v, k_cache, v_cache)
        for name, t, want in zip(_PLAN_ARGS, tensors, self._layouts):
            if not isinstance(t, torch.Tensor) or _layout(t) != want:
                got = f"shape {tuple(t.shape)}, strides {t.stride()}, {t.dtype} on {t.device}" \
                    if isinstance(t, torch.Tensor) else type(t).__name__
                chk.fail(name, f"shape {tuple(want[0])}, strides {want[1]}, {want[2]} on {want[3]} "
                         "(the layout this attention plan was checked for)", got)
        if _dispatch.traced():
            return _attention_op(*tensors, *self._meta, self.backend)
        if self._fn is None:
            self._fn = self._function()
        return self._fn(*tensors)


def normalize_attention_args(q, k, v, k_cache, v_cache, cache_lens, modes, mode_args, q_lens,
                             block_table, softmax_scale, write_kv) -> tuple:
    """Validate everything (shapes, dtypes, devices, then values) and return the
    positional argument tuple that every backend's `attention` takes."""
    chk.tensor("q", q, ndim=4, dtypes=chk.FLOAT_DTYPES)
    B, Tq, Hq, D = q.shape
    dev = q.device
    for name, x in (("k", k), ("v", v)):
        chk.tensor(name, x, ndim=4, dtypes=(q.dtype,), device=dev)
        chk.shape(name, x, (B, Tq, None, D))
    Hkv = k.shape[2]
    chk.shape("v", v, (B, Tq, Hkv, D))
    if Hkv == 0 or Hq % Hkv != 0:
        chk.fail("q", f"a head count Hq that is a multiple of Hkv={Hkv}", f"Hq={Hq}")
    if block_table is None:
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
            chk.tensor(name, x, ndim=4, dtypes=(q.dtype,), device=dev)
            chk.shape(name, x, (B, None, Hkv, D))
    else:
        block_table_tensor(block_table, B, dev)
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
            chk.tensor(name, x, ndim=4, dtypes=(q.dtype,), device=dev)
            chk.shape(name, x, (None, None, Hkv, D))
    chk.shape("v_cache", v_cache, tuple(k_cache.shape))
    lens_tensor("cache_lens", cache_lens, B, dev)

    if isinstance(modes, Mode) or (isinstance(modes, int) and not isinstance(modes, bool)):
        if not 0 <= int(modes) < NUM_MODES:
            chk.fail("modes", f"a tridiff.Mode value in [0, {NUM_MODES})", int(modes))
    modes_t = per_row("modes", modes, B, dev, dtype=torch.int8)
    if isinstance(mode_args, int) and not isinstance(mode_args, bool) and 2 ** 31 <= mode_args < 2 ** 32:
        mode_args -= 2 ** 32   # an ANCHORED_QUADRATIC bitmask with bit 31 set, as its int32 bits
    mode_args_t = per_row("mode_args", mode_args, B, dev, default=0)
    q_lens_t = per_row("q_lens", q_lens, B, dev, default=Tq)
    if softmax_scale is None:
        softmax_scale = D ** -0.5
    if not isinstance(softmax_scale, (int, float)) or not softmax_scale > 0:
        chk.fail("softmax_scale", "a positive float", softmax_scale)
    if not isinstance(write_kv, bool):
        chk.fail("write_kv", "a bool", type(write_kv).__name__)

    cap = capacity(k_cache, block_table)
    _check_attention_values(modes_t, mode_args_t, q_lens_t, cache_lens, Tq, cap, write_kv)
    if block_table is not None:
        upto = cache_lens + q_lens_t if write_kv else cache_lens
        pages_cover(block_table, k_cache.shape[0], k_cache.shape[1], upto,
                    "covering the committed keys" + (" and the written new keys" if write_kv else ""))
    return (q, k, v, k_cache, v_cache, cache_lens, modes_t, mode_args_t, q_lens_t, block_table,
            float(softmax_scale), write_kv)


def _check_attention_values(modes, mode_args, q_lens, cache_lens, Tq, cap, write_kv) -> None:
    """The per-row value rules, on host lists (one transfer per tensor; a forward checks
    these once, and a few Python comparisons per row cost less than the ~20 small torch
    ops the same rules take as tensor expressions)."""
    if not chk.values_checkable(modes) or chk.is_fake(modes):
        return
    m, arg, n, lens = (t.detach().cpu().tolist() for t in (modes, mode_args, q_lens, cache_lens))
    for b in range(len(m)):
        if not 0 <= m[b] <= NUM_MODES - 1:
            chk.fail("modes", f"values in [0, {NUM_MODES - 1} (tridiff.Mode)] (row {b}: limit {NUM_MODES - 1})",
                     f"{m[b]} at row {b}")
    for b in range(len(m)):
        if not 0 <= n[b] <= Tq:
            chk.fail("q_lens", f"values in [0, Tq={Tq}] (row {b}: limit {Tq})", f"{n[b]} at row {b}")
    for b in range(len(m)):
        hi = cap - n[b] if write_kv else cap
        if not 0 <= lens[b] <= hi:
            desc = f"capacity {cap} minus q_lens (write_kv=True)" if write_kv else f"capacity {cap}"
            chk.fail("cache_lens", f"values in [0, {desc}] (row {b}: limit {hi})", f"{lens[b]} at row {b}")
    for b in range(len(m)):
        mode, a, nb = m[b], arg[b], n[b]
        if mode == Mode.QUADRATIC and (a < 1 or a * (a + 1) != nb):
            chk.fail("mode_args", "L >= 1 with q_lens == L*(L+1) on QUADRATIC rows",
                     f"L={a}, q_lens={nb} at row {b}")
        if mode == Mode.ANCHORED_QUADRATIC and nb > 0:
            mask = a & 0xFFFFFFFF                      # the bitmask read as uint32
            k = bin(mask).count("1")
            L = nb // (k + 1)
            top = mask.bit_length() - 1                # highest anchor (-1: none)
            if nb % (k + 1) != 0 or L < 1 or L > 32 or top >= L:
                chk.fail("mode_args", "an anchor bitmask with q_lens == L*(popcount+1), 1 <= L <= 32 and every "
                         "anchor < L on ANCHORED_QUADRATIC rows",
                         f"mode_args={mask:#x} (k={k}), q_lens={nb} at row {b}")
        if mode == Mode.CAUSAL_THEN_BIDIR and not 0 <= a <= nb:
            chk.fail("mode_args", "0 <= K <= q_lens on CAUSAL_THEN_BIDIR rows", f"K={a}, q_lens={nb} at row {b}")