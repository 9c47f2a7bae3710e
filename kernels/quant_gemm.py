"""Weight-only quantized GEMM (Triton): y [M, N] = x [M, K] @ W^T, W in the GPTQ layout
(tridiff.quant.gptq: codes packed along K in int32 words, per-group scales and packed
zero points along N; the zero points are the true ones, v2).

Tiling: program (m, n, s) owns a BLOCK_M x BLOCK_N output tile and the K range
[s * K_SPLIT, (s + 1) * K_SPLIT) of split s. Per BLOCK_K step it loads the x tile, the
BLOCK_K / P int32 words of each of its BLOCK_N columns (a word is read by the P lanes
that share it: one memory transaction, the others hit L1), shifts and masks out the
codes, and dequantizes with the group's scale and zero point (BLOCK_K divides the group
size, so one group per step: one [BLOCK_N] row of scales and of zeros). The dequantized
tile goes straight into tl.dot with fp32 accumulation; every x row of the tile reuses
it, which is why a 17-33 row verify costs little more than one row. SPLIT > 1 (skinny
M: too few output tiles to fill the GPU) writes fp32 partials [SPLIT, M, N] that the
launcher sums; SPLIT == 1 stores y in x's dtype.

DOT_F32: multiply in fp32 (x fp32/fp64 -- IEEE, not TF32 -- and under the interpreter,
whose bf16 arithmetic is wrong); otherwise the dequantized tile is rounded to x's half
dtype and tl.dot runs on the tensor cores with fp32 accumulation.
"""
import triton
import triton.language as tl


@triton.jit
def quant_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K, K_SPLIT, s_xm, s_om, s_os,
                      GROUP: tl.constexpr, BITS: tl.constexpr, DOT_F32: tl.constexpr, SPLIT_OUT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    P: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    k_shift = ((offs_k % P) * BITS)[:, None]
    z_shift = (offs_n % P) * BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_s * K_SPLIT
    k_end = tl.minimum(k_begin + K_SPLIT, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < k_end
        a = tl.load(x_ptr + offs_m.to(tl.int64)[:, None] * s_xm + ks[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        words = tl.load(qw_ptr + (ks // P).to(tl.int64)[:, None] * N + offs_n[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0)
        q = (words >> k_shift) & MASK
        g = k0 // GROUP
        scale = tl.load(s_ptr + g.to(tl.int64) * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        zw = tl.load(z_ptr + g.to(tl.int64) * (N // P) + offs_n // P, mask=n_ok, other=0)
        zero = (zw >> z_shift) & MASK
        w = (q - zero[None, :]).to(tl.float32) * scale[None, :]
        if DOT_F32:
            acc += tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
    out_mask = m_ok[:, None] & n_ok[None, :]
    o = out_ptr + pid_s.to(tl.int64) * s_os + offs_m.to(tl.int64)[:, None] * s_om + offs_n[None, :]
    if SPLIT_OUT:
        tl.store(o, acc, mask=out_mask)
    else:
        tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
