"""The engine thread: the one place that calls the (synchronous, not thread-safe) Engine.

    loop = EngineLoop(engine); loop.start()
    handle = loop.submit(prompt_ids, engine_args)       # from the asyncio side
    event = await handle.next()   # ("added", rid) | ("output", RequestOutput) | ("error", ProtocolError)
    loop.abort(handle)            # client gone: the engine frees its pages
    loop.stop()

Commands (add, abort, stats, stop) reach the thread through a thread-safe queue; the
thread applies them between steps, runs engine.step() while the engine has work and
blocks on the queue while it has none. Each RequestOutput goes to its request's asyncio
queue by loop.call_soon_threadsafe (a step's outputs in one wake-up of the event loop).
add_request's refusal (TridiffInputError: a bad argument) goes back to that request
alone as a 400; any other exception from add_request or abort is that request's 500.
An exception from step() is the engine's, not one request's: every running request is
aborted and answered 500, and the loop goes on. Nothing a client sends ends the thread.

`stats` is a snapshot (running, waiting, active, steps) written by the engine thread
after each command batch and step (no host read: plain counts). query_stats() asks the
thread for a fresh one between steps that also has free_pages / total_pages (the pool's
free count is a device read, so it is made only when asked: /health, tests).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Optional

from tridiff.errors import TridiffInputError
from tridiff.serve.protocol import ProtocolError, engine_error

log = logging.getLogger("tridiff.serve")


class RequestHandle:
    """One request's side of the bridge: its event queue on the asyncio loop."""

    def __init__(self, prompt_ids, engine_args: dict, aio_loop: asyncio.AbstractEventLoop):
        self.prompt_ids = list(prompt_ids)
        self.engine_args = dict(engine_args)
        self.rid: Optional[int] = None   # the engine's id, set by the engine thread
        self.done = False                # finished, failed or aborted (engine thread's view)
        self.aborted = False             # engine.abort called
        self._aio = aio_loop
        self._events: asyncio.Queue = asyncio.Queue()

    async def next(self):
        return await self._events.get()

    def _push(self, event) -> None:
        try:
            self._aio.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (server shut down): nobody listens
            pass


class EngineLoop:
    def __init__(self, engine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[int, RequestHandle] = {}
        self._thread: Optional[threading.Thread] = None
        self._steps = 0
        self.stats = self._snapshot(0)

    # ------------------------------------------------------------------ asyncio side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tridiff-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what runs, end the thread (joins it)."""
        if self._thread is not None:
            self._commands.put(("stop", None, False))
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompt_ids, engine_args: dict) -> RequestHandle:
        handle = RequestHandle(prompt_ids, engine_args, asyncio.get_running_loop())
        self._commands.put(("add", handle, False))
        return handle

    def abort(self, handle: RequestHandle, *, keep: bool = False) -> None:
        """Abort in the engine (its pages are freed at once). keep=True: the request's
        final RequestOutput (finish_reason "abort", with its counts) is still delivered;
        otherwise nothing more is (its client is gone)."""
        self._commands.put(("abort", handle, keep))

    # ------------------------------------------------------------------ engine thread
    def query_stats(self) -> concurrent.futures.Future:
        """A future of the engine's stats with its page counts, answered by the engine
        thread between steps (thread-safe; from any thread)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("stats", fut, False))
        return fut

    def _snapshot(self, steps: int, pages: bool = False) -> dict:
        e = self.engine
        out = {"running": e.num_running, "waiting": e.num_waiting, "steps": steps,
               "active": len(getattr(self, "_active", ()))}
        if pages:
            out.update(free_pages=e.free_pages, total_pages=e.total_pages)
        return out

    def _run(self) -> None:
        while True:
            try:
                cmd = self._commands.get(block=not self.engine.has_work())
            except queue.Empty:
                cmd = None
            stop = False
            while cmd is not None:  # apply every pending command before the next step
                stop = self._apply(*cmd) or stop
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
            if stop:
                self._abort_all(ProtocolError("the server is shutting down", status=503,
                                              type="server_shutting_down"))
                self.stats = self._snapshot(self._steps)
                return
            self.stats = self._snapshot(self._steps)
            if self.engine.has_work():
                self._step()
                self._steps += 1
            self.stats = self._snapshot(self._steps)

    def _apply(self, kind: str, handle: Optional[RequestHandle], keep: bool) -> bool:
        if kind == "stop":
            return True
        if kind == "stats":
            fut = handle
            try:
                fut.set_result(self._snapshot(self._steps, pages=True))
            except Exception as exc:  # noqa: BLE001
                fut.set_exception(exc)
            return False
        if kind == "add":
            try:
                handle.rid = self.engine.add_request(handle.prompt_ids, **handle.engine_args)
            except TridiffInputError as exc:
                handle.done = True
                handle._push(("error", engine_error(exc)))
            except Exception as exc:  # noqa: BLE001 - one request's failure, answered to it alone
                log.exception("add_request failed")
                handle.done = True
                handle._push(("error", ProtocolError(f"internal error adding the request: {exc}", status=500,
                                                     type="internal_error")))
            else:
                self._active[handle.rid] = handle
                handle._push(("added", handle.rid))
            return False
        if kind == "abort":
            if handle.rid is not None and not handle.done:  # (commands run in order: add came first)
                if not keep:  # nobody listens: nothing more is delivered
                    handle.done = True
                    self._active.pop(handle.rid, None)
                if not handle.aborted:
                    handle.aborted = True
                    try:
                        self.engine.abort(handle.rid)
                    except Exception:  # noqa: BLE001 - the request is gone for the client either way
                        log.exception("abort of request %s failed", handle.rid)
                        if keep:  # no final output will come: end it here
                            handle.done = True
                            self._active.pop(handle.rid, None)
                            handle._push(("error", ProtocolError("internal error aborting the request",
                                                                 status=500, type="internal_error")))
        return False

    def _step(self) -> None:
        try:
            outs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - the engine's failure: fail what runs, keep serving
            log.exception("engine.step failed; aborting every running request")
            self._abort_all(ProtocolError(f"internal error in the engine step: {exc}", status=500,
                                          type="internal_error"))
            return
        batch = []
        for out in outs:
            handle = self._active.get(out.request_id)
            if handle is None:  # aborted by its client: nobody waits for it
                continue
            if out.finished:
                handle.done = True
                del self._active[out.request_id]
            batch.append((handle, ("output", out)))
        _deliver(batch)

    def _abort_all(self, error: ProtocolError) -> None:
        for rid, handle in list(self._active.items()):
            handle.done = True
            try:
                self.engine.abort(rid)
            except Exception:  # noqa: BLE001
                log.exception("abort of request %s failed", rid)
            handle._push(("error", error))
        self._active.clear()


def _deliver(batch) -> None:
    """A step's outputs: one wake-up of each asyncio loop for all of them (not one per
    request), in order, so the event loop thread takes the GIL once per step."""
    by_loop: dict = {}
    for handle, event in batch:
        by_loop.setdefault(handle._aio, []).append((handle._events, event))
    for aio, items in by_loop.items():
        try:
            aio.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # that event loop is closed: nobody listens
            pass


def _put_all(items) -> None:
    for events, event in items:
        events.put_nowait(event)
