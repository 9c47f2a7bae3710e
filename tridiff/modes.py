"""The closed set of attention modes (docs/spec.md section 2).

Kernels take the mode per sequence as an int8 tensor holding these values, plus an
int32 `mode_args` tensor: L for QUADRATIC (the row then has L*(L+1) new tokens),
K for CAUSAL_THEN_BIDIR (the last K new tokens form the bidirectional block), the
anchor set for ANCHORED_QUADRATIC.

ANCHORED_QUADRATIC (pruned one-forward self-speculation): mode_args is a 32-bit
bitmask, read as uint32 (bit 31 makes the int32 negative), bit a set <=> a is an
anchor; anchors a_0 < ... < a_{k-1}, k = popcount. The row's n new tokens are the L
clean slots d_0..d_{L-1} (tokens 0..L-1), then for g = 0..k-1 the L mask slots of
anchor a_g (tokens L+g*L .. L+g*L+L-1): n = L*(k+1), L = n/(k+1) <= 32, a_{k-1} < L.
Among new tokens, clean row i sees clean keys j <= i; a mask row of group g sees
clean keys j <= a_g and the L keys of its own group. Every anchor set {0..L-1} gives
QUADRATIC(L) with its rows and keys permuted (clean slots first).
"""
import enum


class Mode(enum.IntEnum):
    CAUSAL = 0
    BIDIR_BLOCK = 1
    QUADRATIC = 2
    CAUSAL_THEN_BIDIR = 3
    ANCHORED_QUADRATIC = 4


NUM_MODES = len(Mode)
