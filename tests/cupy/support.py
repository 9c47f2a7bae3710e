"""A stand-in for cupy on a machine without a GPU: arrays over host memory with the
attributes tridiff.cupy reads, the few cupy functions its launchers call, and a
recorder in place of the compiled module (kernel launches are recorded, not run)."""
import types

import numpy as np


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class FakeArray:
    """The attributes of cupy.ndarray the launchers read, over host memory."""

    def __init__(self, arr):
        self.a = np.asarray(arr)
        self.shape, self.strides, self.ndim = self.a.shape, self.a.strides, self.a.ndim
        self.dtype, self.itemsize = self.a.dtype, self.a.itemsize
        self.data = _Ptr(self.a.ctypes.data)

    def __getitem__(self, idx):
        return FakeArray(self.a[idx])


def fake_cupy():
    m = types.ModuleType("cupy")
    m.empty = lambda shape, dtype: FakeArray(np.empty(shape, dtype=dtype))
    m.ascontiguousarray = lambda x, dtype=None: FakeArray(np.ascontiguousarray(x.a, dtype=dtype))
    m.asnumpy = lambda x: np.asarray(x.a)
    m.float64, m.int64, m.int32, m.bool_ = np.float64, np.int64, np.int32, np.bool_
    return m


class Recorder:
    def __init__(self):
        self.calls = []

    def get_function(self, name):
        def launch(grid, block, args, shared_mem=0):
            self.calls.append((name, grid, block, args, shared_mem))
        return launch
