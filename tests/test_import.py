"""Importing tridiff needs no GPU, no triton and no compiled extension."""
import subprocess
import sys
import textwrap

from tridiff import _ext

# The compiled modules by their real names, from the loader itself: a renamed extension
# is blocked under its new name rather than silently left importable.
BLOCKED = ("triton", "cupy", *_ext.MODULES.values())


def test_import_and_cpu_op_without_triton_or_extensions():
    code = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # unimportable
        import torch
        import tridiff
        from tridiff import ops, Mode
        q = torch.randn(1, 2, 2, 8); k = torch.randn(1, 2, 1, 8)
        cache = torch.zeros(1, 4, 1, 8)
        out = ops.attention(q, k, k, cache, cache.clone(), torch.zeros(1, dtype=torch.int32), Mode.CAUSAL)
        assert out.shape == q.shape and torch.isfinite(out).all()
        from tridiff import _dispatch, _ext
        assert "triton" in _dispatch.why_not("triton", "attention", (), {{}})
        for ext, modname in _ext.MODULES.items():  # the blocking really hid every extension
            reason = _ext.reason(ext)
            assert reason is not None and modname in reason, (ext, reason)
            assert _dispatch.backend_unavailable(ext), ext
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")
