"""The ASGI app of `tridiff serve` (Starlette): OpenAI-compatible routes over one EngineLoop.

    POST /v1/completions        prompt: string or token ids; stream by server-sent events or not
    POST /v1/chat/completions   only when the model has a chat template (else 400)
    GET  /v1/models             the one served model
    GET  /health                200 {"status": "ok", engine stats, pages} while the engine thread runs, else 503

Admission: at most max_rows + max_queue requests are in flight (running or waiting in
the engine); one more is answered 503 at once, with Retry-After. A request whose client
disconnects (mid-stream, or while a non-streamed answer is being generated) is aborted
in the engine, which frees its pages. Bad requests get 400 with an OpenAI error body
(protocol.ProtocolError); the engine thread never sees a request that failed parsing,
and a request the engine refuses is answered alone (loop.EngineLoop).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tridiff.serve import protocol as P
from tridiff.serve.loop import EngineLoop, RequestHandle
from tridiff.serve.text import TextStream

log = logging.getLogger("tridiff.serve")
HEALTH_WAIT_S = 5.0  # /health waits this long for the engine thread's page counts (else: counts without)


class ServeState:
    """What the routes share: the engine loop, tokenizer, chat template, admission count."""

    def __init__(self, engine, *, model_id: str, tokenizer=None, chat_template=None, max_rows: int = 32,
                 max_queue: int = 64, default_strategy: str = "auto"):
        if default_strategy not in P.STRATEGIES:
            raise ValueError(f"default_strategy: expected one of {P.STRATEGIES}, got {default_strategy!r}")
        for name, v in (("max_rows", max_rows), ("max_queue", max_queue)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "max_rows" else 0):
                raise ValueError(f"{name}: expected an int >= {1 if name == 'max_rows' else 0}, got {v!r}")
        self.engine = engine
        self.loop = EngineLoop(engine)
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_rows, self.max_queue = max_rows, max_queue
        self.default_strategy = default_strategy
        self.vocab_size = engine.model.config.vocab_size
        self.eos_id = engine.model.config.eos_token_id
        self.max_context = getattr(engine, "max_context", None)
        self.inflight = 0
        self.created = P.now()

    @property
    def max_inflight(self) -> int:
        return self.max_rows + self.max_queue

    def prompt_ids(self, req: P.GenerationRequest) -> list[int]:
        if req.chat:
            if self.chat_template is None:
                raise P.ProtocolError(f"model {self.model_id!r} has no chat template (tokenizer_config.json "
                                      "\"chat_template\"); use /v1/completions", param="messages",
                                      code="no_chat_template")
            ids = self.chat_template.encode(req.messages)
        elif isinstance(req.prompt, str):
            if self.tokenizer is None:
                raise P.ProtocolError(f"prompt: model {self.model_id!r} has no tokenizer.json; send token ids",
                                      param="prompt")
            ids = self.tokenizer.encode(req.prompt)
        else:
            ids = req.prompt
        if not ids:
            raise P.ProtocolError("prompt: encodes to no tokens", param="prompt")
        max_new = req.engine_args["max_new_tokens"]
        if self.max_context is not None and max_new >= self.max_context:
            raise P.ProtocolError(f"max_tokens: expected an integer in [1, {self.max_context - 1}] (the engine's "
                                  f"context is {self.max_context} positions), got {max_new}", param="max_tokens")
        for name, seq in (("prompt", ids), ("stop", req.engine_args["stop_ids"])):
            bad = [t for t in seq if t >= self.vocab_size]
            if bad:
                raise P.ProtocolError(f"{name}: token id {bad[0]} out of range [0, vocab_size={self.vocab_size})",
                                      param=name)
        return ids

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_id:
            raise P.ProtocolError(f"model: this server serves {self.model_id!r}, not {model!r}", status=404,
                                  param="model", code="model_not_found")


class _Lease:
    """One admitted request: counts against the admission limit until released; released
    before the engine finished it, it aborts the request (pages freed)."""

    def __init__(self, state: ServeState, handle: RequestHandle):
        self.state, self.handle = state, handle
        self.finished = False
        self._released = False
        state.inflight += 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.state.inflight -= 1
        if not self.finished:
            self.state.loop.abort(self.handle)


def _error(exc: P.ProtocolError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _disconnected(receive) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        if (await receive())["type"] == "http.disconnect":
            return


class _Generation:
    """Drives one admitted request: reads its engine events, turns them into text with
    stop strings, and builds the response pieces."""

    def __init__(self, state: ServeState, req: P.GenerationRequest, lease: _Lease, prompt_len: int):
        self.state, self.req, self.lease = state, req, lease
        self.text = TextStream(state.tokenizer, req.stop_strings, incremental=req.stream)
        self.prompt_len = prompt_len
        self.id = P.new_id(req.chat)
        self.created = P.now()
        self.final = None
        self.token_ids: list[int] = []   # as the engine returned them, cut after a stop string
        self._stopping = False
        # ids that end a generation and are kept out of the text (not out of token_ids)
        self._end_ids = set(req.engine_args["stop_ids"]) | {state.eos_id}

    async def events(self):
        """Yields (text_delta, new_ids) until the request ends; then self.final is set."""
        handle = self.lease.handle
        while True:
            kind, payload = await handle.next()
            if kind == "error":
                self.lease.finished = True  # the engine thread dropped it already
                raise payload
            if kind != "output":
                continue
            out = payload
            new = [] if self._stopping else list(out.new_tokens)
            text_new = new
            if out.finished and out.finish_reason == "stop" and new and new[-1] in self._end_ids:
                text_new = new[:-1]  # the eos / stop id ends the text, it is not part of it
            delta = self.text.feed(text_new) if text_new else ""
            if self.text.stopped and not self._stopping:
                new = new[:self.text.stop_at - len(self.token_ids)]  # through the token completing it
                self._stopping = True
                if not out.finished:  # the rest of the generation is not wanted: free the pages now
                    self.state.loop.abort(handle, keep=True)
            self.token_ids.extend(new)
            if out.finished:
                self.lease.finished = True
                self.final = out
                tail = self.text.finish()
                yield delta + tail, new
                return
            if delta or new:
                yield delta, new

    @property
    def finish_reason(self) -> Optional[str]:
        return "stop" if self.text.stopped else getattr(self.final, "finish_reason", None)

    def usage(self) -> dict:
        return P.usage(self.prompt_len, len(self.token_ids), self.final)

    def response(self, text: str) -> dict:
        return P.completion(self.id, self.state.model_id, self.created, chat=self.req.chat, text=text,
                            token_ids=self.token_ids, finish_reason=self.finish_reason, usage_=self.usage())

    def chunk(self, text: Optional[str], ids: list, *, last: bool = False, role: bool = False) -> dict:
        return P.chunk(self.id, self.state.model_id, self.created, chat=self.req.chat, text=text,
                       token_ids=ids, finish_reason=self.finish_reason if last else None,
                       usage_=self.usage() if last else None, role=role)


class _EventStream:
    """The SSE response: pumps a generation's chunks, and aborts it if the client goes
    away (noticed by the disconnect message, or by a failed send) before it ends."""

    def __init__(self, gen: _Generation):
        self.gen = gen

    async def __call__(self, scope, receive, send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                with contextlib.suppress(OSError):  # a send that failed: the client is gone
                    pump.result()
        finally:
            for t in (pump, gone):
                t.cancel()
            self.gen.lease.release()

    async def _pump(self, send) -> None:
        gen = self.gen
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        if gen.req.chat:  # the first chunk names the role
            await send({"type": "http.response.body", "body": P.sse(gen.chunk("", [], role=True)),
                        "more_body": True})
        try:
            async for delta, ids in gen.events():
                last = gen.final is not None
                await send({"type": "http.response.body", "body": P.sse(gen.chunk(delta, ids, last=last)),
                            "more_body": True})
            if gen.req.include_usage:  # OpenAI's stream_options: a last chunk with no choice, usage only
                await send({"type": "http.response.body", "body": P.sse(gen.chunk(None, [], last=True)),
                            "more_body": True})
        except P.ProtocolError as exc:  # failed after the 200 went out: an error event ends the stream
            await send({"type": "http.response.body", "body": P.sse(exc.body()), "more_body": True})
        await send({"type": "http.response.body", "body": P.SSE_DONE, "more_body": False})


async def _generate(request: Request, chat: bool):
    state: ServeState = request.app.state.serve
    try:
        body = P.parse_json(await request.body())
        req = P.parse_request(body, chat=chat, default_strategy=state.default_strategy)
        state.check_model(req.model)
        ids = state.prompt_ids(req)
    except P.ProtocolError as exc:
        return _error(exc)
    if state.inflight >= state.max_inflight:
        return _error(P.ProtocolError(
            f"server overloaded: {state.inflight} requests in flight (max_rows {state.max_rows} + max_queue "
            f"{state.max_queue}); retry later", status=503, type="server_overloaded", code="overloaded"))
    if not state.loop.alive:
        return _error(P.ProtocolError("the engine is not running", status=503, type="server_unavailable"))
    lease = _Lease(state, state.loop.submit(ids, req.engine_args))
    gen = _Generation(state, req, lease, len(ids))
    handed_over = False
    try:
        kind, payload = await _or_disconnect(lease.handle.next(), request.receive)
        if kind == "error":
            lease.finished = True
            return _error(payload)
        if req.stream:
            handed_over = True  # the stream releases the lease when it ends
            return _EventStream(gen)
        return JSONResponse(await _or_disconnect(_collect(gen), request.receive))
    except _ClientGone:
        return JSONResponse({}, status_code=499)  # nobody reads it
    except P.ProtocolError as exc:
        return _error(exc)
    finally:
        if not handed_over:
            lease.release()


class _ClientGone(Exception):
    pass


async def _or_disconnect(coro, receive):
    """Await coro unless the client disconnects first (then _ClientGone)."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise _ClientGone()
    finally:
        task.cancel()
        gone.cancel()


async def _collect(gen: _Generation) -> dict:
    parts = [delta async for delta, _ in gen.events()]
    return gen.response("".join(parts))


async def completions(request: Request):
    return await _generate(request, chat=False)


async def chat_completions(request: Request):
    return await _generate(request, chat=True)


async def models(request: Request):
    state: ServeState = request.app.state.serve
    return JSONResponse(P.models_list(state.model_id, state.created))


async def health(request: Request):
    state: ServeState = request.app.state.serve
    alive = state.loop.alive
    stats = state.loop.stats
    if alive:  # fresh counts with pages, from the engine thread between two steps
        with contextlib.suppress(asyncio.TimeoutError):
            stats = await asyncio.wait_for(asyncio.wrap_future(state.loop.query_stats()), HEALTH_WAIT_S)
    body = {"status": "ok" if alive else "engine stopped", "model": state.model_id, "inflight": state.inflight,
            "max_inflight": state.max_inflight, **stats}
    return JSONResponse(body, status_code=200 if alive else 503)


def build_app(state: ServeState) -> Starlette:
    """The ASGI app; the engine thread starts with the app's lifespan and stops with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.loop.start()
        try:
            yield
        finally:
            state.loop.stop()

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])],
                    lifespan=lifespan)
    app.state.serve = state
    return app
