"""The worker's JSON-RPC endpoint: serves host requests concurrently on an asyncio loop.

asyncio rather than anyio: the worker must start fast and stay small (see the README's
performance section), and plugin authors expect ``asyncio`` in ``async def`` tools anyway.
Frames are read and written with raw ``os.read``/``os.write`` on non-blocking pipe fds; a
burst of responses produced in one loop iteration leaves in one ``write``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import traceback
from typing import Any, Final, Literal

import msgspec

from cordon.protocol import (
    ACTIVATE,
    CANCEL,
    DEACTIVATE,
    INITIALIZE,
    INVOKE,
    OVERSIZE,
    PING,
    Batch,
    CallCancelled,
    CancelParams,
    CordonError,
    FrameSplitter,
    FrameTooLarge,
    InvalidParams,
    InvalidRequest,
    InvokeParams,
    MethodNotFound,
    Notification,
    PluginError,
    QuotaExceeded,
    Request,
    Response,
    decode_frame,
    decode_params,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
    error_from_wire,
    error_to_wire,
)
from cordon.protocol._messages import decode_request, encode_result_body
from cordon.protocol._methods import FAULT

from ._context import Context
from ._large import ONE_PASS_FROM, LargeCalls
from ._logging import attach as attach_logging
from ._logging import detach as detach_logging
from ._loopfast import LoopFast
from ._plugin import Handler, Plugin
from ._threads import NO_THREAD, SyncCalls, thread_quota

__all__ = ["Server"]

#: Bytes per read: a pipe's default capacity, so a pipelined burst arrives in one syscall.
#: Not more: ``os.read`` allocates the full size up front, and above glibc's mmap threshold
#: (128 KiB) every read was an mmap, mremap and munmap (see runtime/_worker.py).
READ_SIZE: Final = 64 * 1024
#: Bytes per read while a frame is partly read: a large one is coming, and the grown pipe
#: (F_SETPIPE_SZ, up to 1 MiB) holds this much; the allocation is paid once per MiB here.
LARGE_READ_SIZE: Final = 1024 * 1024
#: An answer this large, with nothing queued before it, is written straight from itself
#: (see :meth:`Server.send_body`); a smaller one is queued, so a burst leaves in one write.
DIRECT_WRITE: Final = 64 * 1024
_NL: Final = b"\n"
#: Traceback text sent to the host is for humans; cap it so a deep recursion cannot bloat a frame.
MAX_TRACEBACK: Final = 16 * 1024

_invoke_decoder = msgspec.json.Decoder(InvokeParams)


class _InvokeCall(msgspec.Struct, forbid_unknown_fields=True):
    """An ``invoke`` request whose params are an :class:`InvokeParams`; anything that does
    not fit (another method, bad params, extra members) goes the general way, which also
    produces the right error for it."""

    jsonrpc: Literal["2.0"]
    id: int | str
    method: Literal["invoke"]
    params: InvokeParams


_invoke_call_decoder = msgspec.json.Decoder(_InvokeCall)


def decode_invoke(frame: bytes) -> _InvokeCall | None:
    try:
        return _invoke_call_decoder.decode(frame)
    except msgspec.DecodeError:
        return None


_cancel_decoder = msgspec.json.Decoder(CancelParams)


class _HostAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """A success answer with an integer id, its result decoded with it: the frames the
    host's ``decode_success`` would accept (tests hold the two to that). Anything else
    (an error answer...) is classified by ``decode_frame``."""

    jsonrpc: Literal["2.0"]
    id: int
    result: Any


_host_answer_decoder = msgspec.json.Decoder(_HostAnswer)


def decode_host_answer(frame: bytes) -> _HostAnswer | None:
    try:
        return _host_answer_decoder.decode(frame)
    except msgspec.DecodeError:
        return None


class Server:
    def __init__(
        self,
        *,
        rfd: int,
        wfd: int,
        splitter: FrameSplitter,
        plugin: Plugin,
        plugin_id: str,
        scratch_dir: str,
        faults: bool = False,
    ) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.splitter = splitter
        self.plugin = plugin
        self.plugin_id = plugin_id
        self.scratch_dir = scratch_dir
        #: ``$/fault`` is served only when the host asked for it at initialize (tests).
        self.faults = faults
        self.max_frame = splitter.max_frame
        self._large = LargeCalls(plugin)
        self._out = bytearray()
        self._flush_scheduled = False
        self._writer_armed = False
        #: Set while dispatching a read: output waits for the end of it (one write per burst).
        self._holding = False
        self._tasks: dict[Any, asyncio.Task[bytes | None]] = {}
        #: Plain ``def`` functions and ``ctx.run`` (see _threads); ``_threaded`` is its set
        #: of calls whose thread runs.
        self._sync = SyncCalls(plugin_id)
        self._threaded = self._sync.threaded
        self._host_pending: dict[int, asyncio.Future[Any]] = {}
        self._next_host_id = 0
        self._closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The loop shortcuts (or their public stand-ins), chosen in :meth:`serve`.
        self._fast: LoopFast | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, initial_frames: list[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._sync.bind(self._loop)
        # Log records from now on travel as notifications on this channel (see _logging).
        attach_logging(self.post)
        self._fast = LoopFast(self._loop, self.rfd)
        self._closed = asyncio.Event()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        for frame in initial_frames:
            self._dispatch(frame)
        self._loop.add_reader(self.rfd, self._on_readable)
        try:
            await self._closed.wait()
        finally:
            detach_logging()
            self._loop.remove_reader(self.rfd)
            for task in list(self._tasks.values()):
                task.cancel()
            self._flush()

    def _on_readable(self) -> None:
        splitter = self.splitter
        while True:
            try:
                data = os.read(self.rfd, LARGE_READ_SIZE if splitter.pending else READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # The host closed our stdin: that is how it says "shut down".
                assert self._closed is not None
                self._closed.set()
                return
            self._holding = True
            try:
                for frame in splitter.feed(data):
                    self._dispatch(frame)
            finally:
                self._holding = False
            # Answers produced while dispatching leave in one write, now rather than a
            # loop pass later; _flush only if it does not all fit (it arms the writer).
            out = self._out
            if out and not self._writer_armed:
                try:
                    written = os.write(self.wfd, out)
                except OSError:
                    written = 0  # _flush tells a full pipe from a gone host
                if written == len(out):
                    out.clear()
                else:
                    del out[:written]
                    self._flush()
            if not self._wait_here():
                return

    def _wait_here(self) -> bool:
        """Wait for the next request inside this callback while nothing else could need
        the loop: no call in flight, no output waiting, not closing, and (``_loopfast``) no
        callback ready, no timer, no fd but ours and the loop's self-pipe. A sequential
        caller's requests are then served here, one poll each, without passing through
        asyncio's loop machinery. True: a request is waiting. False: back to the loop.
        """
        fast = self._fast
        if fast is None or self._tasks or self._threaded or self._host_pending or self._out:
            return False
        if self._closed is None or self._closed.is_set():
            return False  # the host is gone (a failed write): serve() must see it now
        return fast.idle_poll()

    # -- output ---------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        idle = not self._out and not self._tasks
        self._out += frame
        self._queued(idle)

    def send_body(self, body: bytes | bytearray) -> None:
        """:meth:`send` for a frame without its newline (an answer, see _run_handler). A
        large one with nothing queued before it is written straight from itself, newline
        and all in one ``writev``: no copy of it is made in this process (one was made to
        add the newline, another to queue it: 90 us a MiB). The rest of a partial write is
        queued as any frame is."""
        out = self._out
        idle = not out and not self._tasks
        if not out and not self._writer_armed and len(body) >= DIRECT_WRITE:
            try:
                n = os.writev(self.wfd, (body, _NL))
            except OSError:
                n = 0  # _flush tells a full pipe from a gone host
            if n > len(body):
                return
            out += memoryview(body)[n:]
        else:
            out += body
        out += _NL
        self._queued(idle)

    def _queued(self, idle: bool) -> None:
        """Frames were queued: write them now, at the end of the read being dispatched, or
        on a loop pass."""
        if self._holding or self._writer_armed:
            # The read being dispatched writes everything it produced when it ends; an
            # armed writer, when the pipe has room. A flush scheduled now would only cost
            # a loop pass.
            return
        if idle:
            # Nothing else in flight or queued (a sequential caller waits on exactly this
            # frame): write now instead of a loop pass later. Under concurrency, frames
            # produced in one loop pass still coalesce into one write.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._out:
            try:
                n = os.write(self.wfd, self._out)
            except BlockingIOError:
                break
            except OSError:
                # The host is gone; nothing left to serve.
                self._out.clear()
                if self._closed is not None:
                    self._closed.set()
                return
            del self._out[:n]
        assert self._loop is not None
        if self._out and not self._writer_armed:
            self._writer_armed = True
            self._loop.add_writer(self.wfd, self._on_writable)
        elif not self._out and self._writer_armed:
            self._writer_armed = False
            self._loop.remove_writer(self.wfd)

    def _on_writable(self) -> None:
        self._flush()

    def notify(self, method: str, params: Any) -> None:
        """Send a notification, from the loop's thread or any other (a sync tool's)."""
        self.post(encode_notification(method, params))

    def post(self, frame: bytes) -> None:
        """:meth:`send` from any thread. From another thread the frame is handed to the
        loop with ``call_soon_threadsafe``: frames one thread posts keep their order, and
        one posted before a sync tool returns goes out before its result (the executor
        hands the result to the loop the same way, later). Dropped once the loop is gone."""
        if self._sync.on_loop_thread():
            self.send(frame)
            return
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is ending
            loop.call_soon_threadsafe(self.send, frame)

    # -- incoming -------------------------------------------------------------------------

    def _dispatch(self, frame: bytes | object) -> None:
        if frame is OVERSIZE:
            err = FrameTooLarge(limit=self.max_frame)
            self.send(encode_error(None, error_to_wire(err)))
            return
        assert isinstance(frame, bytes)
        # The common frames, each decoded by one narrow struct alone: a tool call (its
        # params too), then any request; anything else is classified in full.
        out: bytes | asyncio.Task[bytes | None] | None
        if len(frame) >= ONE_PASS_FROM:
            # A large tool call: arguments and all in one pass (see _large).
            large = self._large.decode(frame)
            if large is not None:
                out = self._run(*large, False)
                if isinstance(out, bytes):
                    self.send(out)
                return
        call = decode_invoke(frame)
        if call is not None:
            try:
                out = self._invoke(call.id, call.params, False)
            except CordonError as exc:
                out = encode_error(call.id, error_to_wire(exc))
            if isinstance(out, bytes):
                self.send(out)
            return
        req = decode_request(frame)
        if req is not None:
            out = self._handle_request(req)
            if isinstance(out, bytes):
                self.send(out)
            return
        answer = decode_host_answer(frame)
        if answer is not None:
            # The host's answer to a host/... request, its result decoded with it in one pass.
            fut = self._host_pending.pop(answer.id, None)
            if fut is not None and not fut.done():
                fut.set_result(answer.result)
            return
        msg = decode_frame(frame)
        if isinstance(msg, Batch):
            self._dispatch_batch(msg)
        elif isinstance(msg, Request):
            out = self._handle_request(msg)
            if isinstance(out, bytes):
                self.send(out)
        elif isinstance(msg, Notification):
            self._handle_notification(msg)
        elif isinstance(msg, Response):
            self._handle_response(msg)
        else:
            self.send(encode_error(msg.id, msg.error))

    def _dispatch_batch(self, batch: Batch) -> None:
        immediate: list[bytes] = []
        waiting: list[asyncio.Task[bytes | None]] = []
        for item in batch.items:
            if isinstance(item, Request):
                out = self._handle_request(item, batched=True)
                if isinstance(out, bytes):
                    immediate.append(out)
                elif out is not None:
                    waiting.append(out)
            elif isinstance(item, Notification):
                self._handle_notification(item)
            elif isinstance(item, Response):
                self._handle_response(item)
            else:
                immediate.append(encode_error(item.id, item.error))

        def emit(parts: list[bytes]) -> None:
            if parts:
                # Each part is a frame with its newline; a batch answer is one JSON array.
                self.send(b"[" + b",".join(p.rstrip(b"\n") for p in parts) + b"]\n")

        if not waiting:
            emit(immediate)
            return

        async def gather() -> None:
            done = await asyncio.gather(*waiting, return_exceptions=True)
            emit(immediate + [d for d in done if isinstance(d, bytes)])

        assert self._loop is not None
        self._loop.create_task(gather())

    def _handle_request(
        self, req: Request, *, batched: bool = False
    ) -> bytes | asyncio.Task[bytes | None] | None:
        method = req.method
        try:
            if method == INVOKE:
                try:
                    params = _invoke_decoder.decode(req.params or b"{}")
                except msgspec.ValidationError as exc:
                    raise InvalidParams(f"invalid invoke params: {exc}", field=None) from None
                return self._invoke(req.id, params, batched)
            if method == PING:
                return encode_result(req.id, "pong")
            if method == ACTIVATE:
                hooks = self.plugin.activate_hooks
                return self._start(req.id, self._run_hooks(req.id, hooks), batched)
            if method == DEACTIVATE:
                hooks = self.plugin.deactivate_hooks
                return self._start(req.id, self._run_hooks(req.id, hooks), batched)
            if method == INITIALIZE:
                raise InvalidRequest("the worker is already initialized")
            if method == FAULT and self.faults:
                from ._faults import run_fault

                return self._start(req.id, run_fault(self, req.id, req.params), batched)
            raise MethodNotFound(f"method {method!r} not found", method=method)
        except CordonError as exc:
            return encode_error(req.id, error_to_wire(exc))

    def _invoke(
        self, ident: Any, params: InvokeParams, batched: bool
    ) -> bytes | asyncio.Task[bytes | None]:
        """Start a tool call. Raises :class:`CordonError` for a call that cannot start."""
        handler = self.plugin.handlers.get((params.kind, params.name))
        if handler is None:
            raise MethodNotFound(
                f"plugin {self.plugin_id!r} has no {params.kind} {params.name!r}",
                method=f"{params.kind}:{params.name}",
            )
        return self._run(ident, handler, handler.decode_arguments(params.arguments), batched)

    def _run(
        self, ident: Any, handler: Handler, args: dict[str, Any], batched: bool
    ) -> bytes | asyncio.Task[bytes | None]:
        if ident in self._tasks:
            return self._duplicate(ident)
        return self._spawn(ident, self._run_handler(ident, handler, args, batched), handler.task)

    def _start(self, ident: Any, coro: Any, batched: bool) -> asyncio.Task[bytes | None] | bytes:
        if ident in self._tasks:
            coro.close()
            return self._duplicate(ident)
        return self._spawn(ident, self._complete(ident, coro, batched))

    @staticmethod
    def _duplicate(ident: Any) -> bytes:
        return encode_error(
            ident, error_to_wire(InvalidRequest(f"request id {ident!r} is already in use"))
        )

    def _spawn(self, ident: Any, coro: Any, name: str | None = None) -> asyncio.Task[bytes | None]:
        """Start a request's task and, from a read, run its first step at once.

        The first step runs now instead of on the next loop pass: what 3.12's eager task
        factory does, which 3.11 lacks. A tool that never suspends (most do not) is then
        answered from the read that brought its request, saving a loop pass and an
        ``epoll_wait`` per call (~12 us of a sequential call here). The step is the task's
        own, taken off the ready queue it was just put on, so it runs as the task:
        ``current_task()``, its context, cancellation and ``asyncio.timeout`` all behave as
        on the next pass. Only while :meth:`_on_readable` dispatches (a plain callback:
        inside a task, as for the initial frames, asyncio refuses to enter a second one),
        and only when that step is the *only* thing queued, so running it early reorders
        nothing: a ``$/cancel`` earlier in the same read has queued the cancelled task's
        wake-up, and a request that follows it on the channel must not run before the
        cancellation has reached the plugin's code.
        """
        loop = self._loop
        assert loop is not None
        task: asyncio.Task[bytes | None]
        if loop.get_task_factory() is None:
            # loop.create_task is a Python wrapper around exactly this (~0.7 us a call). A
            # name spares the task formatting "Task-<n>" for itself.
            task = asyncio.Task(coro, loop=loop, name=name)
        else:
            task = loop.create_task(coro, name=name)
        self._tasks[ident] = task
        if self._holding:
            assert self._fast is not None
            self._fast.step_now(task)
        return task

    async def _complete(self, ident: Any, coro: Any, batched: bool) -> bytes | None:
        """Run one request and send its answer from the loop pass it finished in (a done
        callback would cost another pass). A batch member's answer goes out with its batch."""
        try:
            out: bytes | None = await coro
        finally:
            self._tasks.pop(ident, None)
            self._threaded.discard(ident)
            self._sync.forget(ident)
        if out is not None and not batched:
            self.send(out)
        return out

    def _forget(self, ident: Any, task: asyncio.Task[bytes | None]) -> None:
        # Only for a task cancelled before its first step: its body (and finally) never ran.
        if self._tasks.get(ident) is task:
            del self._tasks[ident]
        self._threaded.discard(ident)

    def _handle_notification(self, note: Notification) -> None:
        if note.method == CANCEL:
            try:
                ident = _cancel_decoder.decode(note.params).id
            except msgspec.DecodeError:
                return
            task = self._tasks.get(ident)
            if task is not None:
                task.cancel()
                task.add_done_callback(functools.partial(self._forget, ident))
                self._sync.cancel(ident)
        # Unknown notifications are ignored, as JSON-RPC requires.

    def _handle_response(self, resp: Response) -> None:
        fut = self._host_pending.pop(resp.id, None) if isinstance(resp.id, int) else None
        if fut is None or fut.done():
            return
        if resp.error is not None:
            fut.set_exception(error_from_wire(resp.error))
        else:
            try:
                fut.set_result(decode_params(resp.result))
            except msgspec.DecodeError as exc:
                fut.set_exception(exc)

    # -- running plugin code --------------------------------------------------------------

    async def request_host(self, method: str, params: Any) -> Any:
        """Send a worker → host request and wait for the host's answer."""
        assert self._loop is not None
        self._next_host_id += 1
        ident = self._next_host_id
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._host_pending[ident] = fut
        try:
            self.send(encode_request(ident, method, params))
            return await fut
        finally:
            self._host_pending.pop(ident, None)

    def _context(self, call_id: Any) -> Context:
        return Context(
            plugin_id=self.plugin_id,
            scratch_dir=self.scratch_dir,
            call_id=call_id,
            request=self.request_host,
            notify=self.notify,
            run=self._sync.run,
        )

    async def _run_handler(
        self, ident: Any, handler: Handler, args: dict[str, Any], batched: bool
    ) -> bytes | None:
        """Run one tool call and send its answer from the loop pass it finished in, like
        :meth:`_complete` but in one coroutine: a tool call is the hot path, and the
        wrapper coroutine, its extra ``await`` level and the ``partial`` for ``ctx`` were
        paid on every call. A result is encoded without the newline, which
        :meth:`send_body` adds without copying the answer."""
        out = b""
        body: bytes | bytearray | None = None
        result: Any = None
        try:
            try:
                if handler.is_async:
                    if handler.wants_ctx:
                        result = await handler.fn(self._context(ident), **args)
                    else:
                        result = await handler.fn(**args)
                else:
                    result = await self._run_sync(ident, handler, args)
                # Encoded inside this try: a result too big to encode under the memory
                # limit raises MemoryError here, and is answered like any other.
                try:
                    body = encode_result_body(ident, result)
                except (TypeError, msgspec.EncodeError, OverflowError) as exc:
                    out = self._not_json(ident, handler, exc)
                result = None
                if body is not None and len(body) + 1 > self.max_frame:
                    out = self._too_large(ident, handler, len(body) + 1)
                    body = None
            except asyncio.CancelledError:
                if ident in self._threaded:
                    # Its thread still runs and cannot be stopped: saying "cancelled" would
                    # be a lie. Stay silent; the host's cancel deadline recycles this worker.
                    raise
                out = encode_error(ident, error_to_wire(CallCancelled(method=handler.name)))
            except CordonError as exc:
                out = encode_error(ident, error_to_wire(exc))
            except MemoryError:
                result = None  # what could not be encoded goes before the answer is made
                out = encode_error(ident, error_to_wire(self._memory_quota()))
            except Exception as exc:
                if isinstance(exc, RuntimeError) and str(exc) == NO_THREAD:
                    # A thread the plugin started itself: the limit, not the plugin's bug.
                    err = thread_quota(self.plugin_id, exc)
                    out = encode_error(ident, error_to_wire(err))
                else:
                    out = encode_error(ident, error_to_wire(self._plugin_error(exc)))
        finally:
            self._tasks.pop(ident, None)
            self._threaded.discard(ident)
            self._sync.forget(ident)
        if batched:
            return out if body is None else b"".join((body, _NL))
        if body is None:
            self.send(out)
        else:
            self.send_body(body)
        return None  # sent

    def _memory_quota(self) -> QuotaExceeded:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        limit = None if soft == resource.RLIM_INFINITY else soft
        return QuotaExceeded(kind="memory", limit=limit, plugin=self.plugin_id)

    async def _run_sync(self, ident: Any, handler: Handler, args: dict[str, Any]) -> Any:
        fn = handler.fn
        if handler.wants_ctx:
            fn = functools.partial(fn, self._context(ident))
        result = await self._sync.call(ident, functools.partial(fn, **args))
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def _not_json(self, ident: Any, handler: Handler, exc: Exception) -> bytes:
        err = PluginError(
            exc_type=type(exc).__name__,
            exc_message=f"result of {handler.kind} {handler.name!r} is not JSON: {exc}",
            plugin=self.plugin_id,
        )
        return encode_error(ident, error_to_wire(err))

    def _too_large(self, ident: Any, handler: Handler, size: int) -> bytes:
        # Sending it would break the host's framing limit and get us killed; say why.
        err = QuotaExceeded(
            f"result of {handler.kind} {handler.name!r} is {size} bytes, over the "
            f"{self.max_frame}-byte message limit",
            kind="message-size",
            limit=self.max_frame,
            plugin=self.plugin_id,
        )
        return encode_error(ident, error_to_wire(err))

    def _plugin_error(self, exc: BaseException) -> PluginError:
        tb = "".join(traceback.format_exception(exc))
        if len(tb) > MAX_TRACEBACK:
            tb = "...\n" + tb[-MAX_TRACEBACK:]
        return PluginError(
            exc_type=type(exc).__qualname__,
            exc_message=str(exc)[:4096],
            traceback=tb,
            plugin=self.plugin_id,
        )

    async def _run_hooks(self, ident: Any, hooks: list[Any]) -> bytes | None:
        ctx = self._context(ident)
        try:
            for hook in hooks:
                out = hook(ctx)
                if asyncio.iscoroutine(out):
                    await out
        except asyncio.CancelledError:
            return encode_error(ident, error_to_wire(CallCancelled(method="activate")))
        except CordonError as exc:
            return encode_error(ident, error_to_wire(exc))
        except Exception as exc:
            return encode_error(ident, error_to_wire(self._plugin_error(exc)))
        return encode_result(ident, len(hooks))

    def shutdown_threads(self) -> None:
        self._sync.shutdown()
