"""quant_linear, quant_linear_a8 and mixed_linear of the "cpp" backend: one projection of
fp32 activations against int4 (GPTQ) or bf16 weights (csrc/cpu/decoder_qgemm.inc and
decoder_a8.inc, the panels the C++ layer stack runs), and the weight descriptors both it
and the stack (native/decoder.py) pass.

The int4 panels read each output feature's codes as one contiguous run: the GPTQ qweight
[K/8, N] held transposed in memory (qweight.t() contiguous, the layout
tridiff.quant.packed gives CPU-resident packed weights once at load). A qweight in the
checkpoint's own layout is transposed for the call (a copy of the codes, never of fp32).
The int4a8 panels read the checkpoint's layout itself (qweight row-major; the layout
packed weights with int8 activations hold), and copy any other for the call.
"""
from __future__ import annotations

import torch

from tridiff.native.base import NativeBase

PROJ_FULL, PROJ_BF16, PROJ_INT4, PROJ_INT4_A8 = 0, 1, 2, 3   # csrc/cpu/decoder.h ProjFormat
GROUP_MULTIPLE = 64                         # the int4 panels' K block
A8_GROUP_MULTIPLE, A8_GROUP_MAX = 8, 1024   # the int4a8 panels' groups (decoder.h proj_weight_ok)


def int4_reason(x_dtype, qweight, scales, qzeros, bits, group_size, K, a8: bool = False):
    """None, or why the int4 panels (a8: the int4a8 panels of csrc/cpu/decoder_a8.inc)
    cannot take this weight (formats and layout only; shapes are the public op's checks)."""
    name = "int4a8" if a8 else "int4"
    if x_dtype != torch.float32:
        return f"the C++ {name} panels take float32 activations, got {x_dtype}"
    if bits != 4:
        return f"the C++ {'int4a8' if a8 else 'quantized'} panels take 4-bit codes, got bits={bits}"
    multiple, largest = (A8_GROUP_MULTIPLE, A8_GROUP_MAX) if a8 else (GROUP_MULTIPLE, K)
    if group_size % multiple or group_size > largest or K % group_size:
        limit = f" up to {A8_GROUP_MAX}" if a8 else ""
        return f"the C++ {name} panels take group sizes that are multiples of {multiple}{limit}, got {group_size}"
    if scales.dtype != torch.float16:
        return f"the C++ {name} panels take float16 scales, got {scales.dtype}"
    if not scales.is_contiguous() or not qzeros.is_contiguous():
        return "scales and qzeros must be contiguous"
    if not a8 and not (qweight.t().is_contiguous() or qweight.is_contiguous()):
        return "qweight must be contiguous, or transposed-contiguous (the CPU layout)"
    return None


def int4_meta(qweight, scales, qzeros, group_size):
    """(codes [N, K/8] contiguous, the 4 meta integers of csrc/cpu/module.cpp proj_weight)."""
    codes = qweight.t()
    if not codes.is_contiguous():
        codes = codes.contiguous()
    return codes, [PROJ_INT4, scales.data_ptr(), qzeros.data_ptr(), int(group_size)]


class QuantOps(NativeBase):
    def _packed_reason(self, op, a8, x, qweight, scales, qzeros, bits, group_size):
        if self.device_type != "cpu":
            return f"{op} of this backend is a CPU kernel (csrc/cpu/{'decoder_a8' if a8 else 'decoder_qgemm'}.inc)"
        return self.device_reason(x, qweight, scales, qzeros) or \
            int4_reason(x.dtype, qweight, scales, qzeros, bits, group_size, x.shape[-1], a8=a8)

    def _packed_linear(self, x, N, weight):
        """out [M, N] = x W^T through proj_linear; weight() -> (codes, meta), asked only
        when there are rows (it may copy the codes into the layout the panels read)."""
        M, K = x.shape
        x = x.contiguous()
        out = torch.empty((M, N), dtype=x.dtype)
        if M:
            codes, meta = weight()
            self.lib().proj_linear(codes.data_ptr(), meta, x.data_ptr(), M, K, N, out.data_ptr(),
                                   torch.get_num_threads())
        return out

    def supports_quant_linear(self, x, qweight, scales, qzeros, bits, group_size):
        return self._packed_reason("quant_linear", False, x, qweight, scales, qzeros, bits, group_size)

    def quant_linear(self, x, qweight, scales, qzeros, bits, group_size):
        return self._packed_linear(x, qweight.shape[1], lambda: int4_meta(qweight, scales, qzeros, group_size))

    def supports_quant_linear_a8(self, x, qweight, scales, qzeros, bits, group_size):
        return self._packed_reason("quant_linear_a8", True, x, qweight, scales, qzeros, bits, group_size)

    def quant_linear_a8(self, x, qweight, scales, qzeros, bits, group_size):
        """The codes are read in the GPTQ layout itself (qweight [K/8, N] row-major); any
        other layout is made contiguous for the call."""
        return self._packed_linear(x, qweight.shape[1], lambda: (qweight.contiguous(), [
            PROJ_INT4_A8, scales.data_ptr(), qzeros.data_ptr(), int(group_size)]))

    def supports_mixed_linear(self, x, weight):
        if self.device_type != "cpu":
            return "mixed_linear of this backend is a CPU kernel (csrc/cpu/decoder_qgemm.inc)"
        reason = self.device_reason(x, weight)
        if reason:
            return reason
        if x.dtype != torch.float32 or weight.dtype != torch.bfloat16:
            return f"the C++ bf16 panels take float32 x and bfloat16 weights, got {x.dtype} and {weight.dtype}"
        if not weight.is_contiguous():
            return "weight must be contiguous"
        return None

    def mixed_linear(self, x, weight):
        M, K = x.shape
        N = weight.shape[0]
        x = x.contiguous()
        out = torch.empty((M, N), dtype=x.dtype)
        if M and N and K:
            self.lib().proj_linear(weight.data_ptr(), [PROJ_BF16, 0, 0, 0], x.data_ptr(), M, K, N, out.data_ptr(),
                                   torch.get_num_threads())
        elif M and N:
            out.zero_()
        return out
