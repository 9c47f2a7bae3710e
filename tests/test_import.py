"""Importing tridiff needs no GPU, no triton and no compiled extension."""
import subprocess
import sys
import textwrap


def test_import_and_cpu_op_without_triton_or_extensions():
    code = textwrap.dedent("""
        import sys
        # Make triton and every compiled tridiff module unimportable.
        for name in ("triton", "tridiff._C", "tridiff._C_cpu", "tridiff._cuda", "tridiff._cpu", "cupy"):
            sys.modules[name] = None
        import torch
        import tridiff
        from tridiff import ops, Mode
        q = torch.randn(1, 2, 2, 8); k = torch.randn(1, 2, 1, 8)
        cache = torch.zeros(1, 4, 1, 8)
        out = ops.attention(q, k, k, cache, cache.clone(), torch.zeros(1, dtype=torch.int32), Mode.CAUSAL)
        assert out.shape == q.shape and torch.isfinite(out).all()
        from tridiff import _dispatch
        assert "triton" in _dispatch.why_not("triton", "attention", (), {})
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")
