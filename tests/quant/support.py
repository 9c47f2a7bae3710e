"""Shared by the quantized-model tests."""


def code_prompts(tok) -> list:
    """Two code prompts for the bundled model (bos first)."""
    return [tok.encode("import os\n\n\ndef read_lines(path):\n", add_bos=True),
            tok.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self",
                       add_bos=True)]


def zero_point_case():
    """Codes all 8 with per-group zero points and scales (K 256, N 16, group 64) and 3 rows
    of x: (qweight, zeros, scales, z [G, N], x, group). Each group then contributes
    s (8 - z) times its sum of (rounded) activations."""
    import torch

    from tridiff.quant import gptq

    K, N, group = 256, 16, 64
    G = K // group
    codes = torch.full((K, N), 8, dtype=torch.int32)
    z = torch.arange(G * N, dtype=torch.int32).view(G, N) % 16
    s = (0.5 + torch.arange(G * N).view(G, N) / 64).to(torch.float16)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(3))
    return gptq.pack_rows(codes, 4), gptq.pack_cols(z, 4), s, z, x, group


def assert_spec_equals_ar_through_the_stack(model, tok, stack_rows, n=32, L=16):
    """Linear self-speculation on the two code prompts equals AR greedy token for token,
    every forward of both on the C++ stack (stack_rows, tests/quant/conftest.py), drafts
    verified L rows per sequence, and some drafts accepted."""
    from tridiff.generate import generate

    prompts = code_prompts(tok)
    ar = generate(model, prompts, mode="ar", max_new_tokens=n + L - 1).results
    ar_forwards = len(stack_rows)
    spec = generate(model, prompts, mode="linear-spec", max_new_tokens=n, block_length=L).results
    assert ar_forwards > n and len(stack_rows) > ar_forwards
    assert min(stack_rows) > 0, stack_rows   # every forward of both ran the C++ stack
    assert 2 * L in stack_rows[ar_forwards:]   # draft-and-verify forwards of L rows per sequence
    for a, s in zip(ar, spec):
        assert len(s.tokens) >= min(n, len(a.tokens)) and s.tokens == a.tokens[:len(s.tokens)]
    assert sum(len(s.tokens) for s in spec) > sum(s.nfe for s in spec)   # drafts are accepted
