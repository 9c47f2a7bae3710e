"""Putting a server together: model directory -> Engine + tokenizer + chat template ->
ASGI app, run by uvicorn in the foreground (`tridiff serve`) or in a thread of this
process (BackgroundServer: tests, benches, notebooks).

    with BackgroundServer(make_state("path/to/model", max_rows=8)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

from tridiff.serve.app import ServeState, build_app
from tridiff.serve.chat import ChatTemplate

ENGINE_KEYS = ("max_rows", "num_pages", "page_size", "max_context", "prefill_chunk", "backend")


def load_model(model_dir: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
               activations: str = "float"):
    import torch

    from tridiff.model import Model

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"model: expected a checkpoint directory with config.json, got {model_dir!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Model.from_pretrained(model_dir, device=device, dtype=getattr(torch, dtype) if dtype else None,
                                 activations=activations)


def load_tokenizer(model_dir: str):
    if not os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        return None
    from tridiff.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(model_dir)


def make_state(model_dir: str, *, model=None, model_id: Optional[str] = None, max_queue: int = 64,
               strategy: str = "auto", device: Optional[str] = None, dtype: Optional[str] = None,
               activations: str = "float", **engine_kwargs) -> ServeState:
    """A ServeState over a new Engine for `model_dir` (its tokenizer.json and chat
    template, when present). model: an already loaded Model of that directory; else it is
    loaded with device, dtype and activations (Model.from_pretrained's).
    engine_kwargs: Engine's (max_rows, num_pages, page_size, max_context, prefill_chunk,
    backend); None values take the Engine's defaults."""
    from tridiff.engine import Engine

    unknown = set(engine_kwargs) - set(ENGINE_KEYS)
    if unknown:
        raise TypeError(f"make_state: unknown engine argument {sorted(unknown)[0]!r}")
    engine_kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
    if model is None:
        model = load_model(model_dir, device=device, dtype=dtype, activations=activations)
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(model, **engine_kwargs)
    return ServeState(engine, model_id=model_id or os.path.basename(os.path.normpath(model_dir)),
                      tokenizer=tokenizer, chat_template=ChatTemplate.load(model_dir, tokenizer),
                      max_rows=engine_kwargs.get("max_rows", getattr(engine, "max_rows", 32)),
                      max_queue=max_queue, default_strategy=strategy)


def run(state: ServeState, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(build_app(state), host=host, port=port, log_level=log_level)


class BackgroundServer:
    """uvicorn in a daemon thread of this process on a free localhost port (port 0 by
    default: the OS picks; `url` has the one it got). A context manager: entered, the
    server answers; left, it has shut down and the engine thread has stopped."""

    def __init__(self, state: ServeState, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", start_timeout: float = 60.0):
        import uvicorn

        self.state = state
        self.app = build_app(state)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level=log_level,
                                                     lifespan="on"))
        self._thread: Optional[threading.Thread] = None
        self._host, self._timeout = host, start_timeout
        self.port: Optional[int] = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._server.run, name="tridiff-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("tridiff serve: the server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.state.loop.stop()
