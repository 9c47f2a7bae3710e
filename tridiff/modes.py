"""The closed set of attention modes (SPEC.md section 2).

Kernels take the mode per sequence as an int8 tensor holding these values, plus an
int32 `mode_args` tensor: L for QUADRATIC (the row then has L*(L+1) new tokens),
K for CAUSAL_THEN_BIDIR (the last K new tokens form the bidirectional block).
"""
import enum


class Mode(enum.IntEnum):
    CAUSAL = 0
    BIDIR_BLOCK = 1
    QUADRATIC = 2
    CAUSAL_THEN_BIDIR = 3


NUM_MODES = len(Mode)
