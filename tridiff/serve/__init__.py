"""`tridiff serve`: an OpenAI-compatible HTTP server over tridiff.engine (the optional
extra `pip install tridiff[serve]`: starlette, uvicorn, jinja2).

Layering: protocol (wire format, no framework), text (ids -> streamed text, stop
strings) and chat (chat template) know nothing of the engine; loop (the one engine
thread) bridges tridiff.engine to asyncio; app (Starlette routes) sits on those;
server builds an app from a model directory and runs it (uvicorn); options is the
command line. `import tridiff` never imports this package, and importing this package
imports no web framework until one of the names below is used.
"""

__all__ = ["ServeState", "build_app", "BackgroundServer", "make_state", "run"]


def __getattr__(name):
    import importlib

    if name in ("ServeState", "build_app"):
        return getattr(importlib.import_module("tridiff.serve.app"), name)
    if name in ("BackgroundServer", "make_state", "run"):
        return getattr(importlib.import_module("tridiff.serve.server"), name)
    raise AttributeError(f"module 'tridiff.serve' has no attribute {name!r}")
