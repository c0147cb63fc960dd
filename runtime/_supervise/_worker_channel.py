"""The channel to a worker and its pending calls: framing writes (:meth:`_put` and the
writer task), every call's deadline on one timer, :meth:`request` and its wrappers, and the
dispatch of what the worker sends: responses to their callers, notifications (hello,
progress, logs), and worker → host requests within their in-flight bounds. A worker's error
is vetted (:meth:`_vet`) where it enters the host.

:meth:`request` and :meth:`_put` are every call's path (the asyncio reader callback in
``_worker_reader`` resolves the answers): they are moved here unchanged.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
import anyio.lowlevel
import msgspec
import structlog

from cordon.protocol import (
    CANCEL,
    HELLO,
    INVOKE,
    LOCKED_DOWN,
    OVERSIZE,
    PING,
    PROGRESS,
    Batch,
    CallCancelled,
    CallTimeout,
    CordonError,
    FrameTooLarge,
    Hello,
    HttpError,
    Incoming,
    IncompatibleProtocol,
    InternalError,
    Invalid,
    InvalidParams,
    InvalidRequest,
    LockedDown,
    MethodNotFound,
    Notification,
    PermissionDenied,
    PluginError,
    ProgressParams,
    QuotaExceeded,
    RemoteError,
    Request,
    Response,
    SandboxUnavailable,
    WorkerCrashed,
    decode_frame,
    decode_params,
    encode_error,
    encode_notification,
    encode_result,
    error_from_wire,
    error_to_wire,
)
from cordon.protocol._framing import Refused, structural_count
from cordon.protocol._messages import encode_request_body

from ._decode_budget import VALUE_COST, DecodeBudget, refused_envelope
from ._worker_reader import UNDECODED, _FuturePending, decode_large
from ._worker_state import _Pending, _WorkerState

__all__ = ["CANCEL_GRACE", "SEND_BUFFER"]

log = structlog.get_logger("cordon")
_thread_time = time.thread_time

#: A cancelled call must answer within this, or the worker is recycled (a thread or a C loop
#: cannot be interrupted, and we will not leave it burning CPU behind a "cancelled" answer).
CANCEL_GRACE: Final = 1.0
#: Bytes queued for the worker's stdin before callers wait (and host answers and cancel
#: notices are dropped): backpressure, not a memory leak.
SEND_BUFFER: Final = 4 * 1024 * 1024
_NL: Final = b"\n"
#: Per request, on top of its params: the task, the decoded message, the audit record.
HOST_REQUEST_OVERHEAD: Final = 1024

#: What a worker may answer a call with. Anything else (say, a forged WorkerCrashed or
#: PluginUnavailable) is reported as the PluginError it really is.
_WORKER_MAY_RAISE: Final = (
    PluginError,
    InvalidParams,
    MethodNotFound,
    CallCancelled,
    PermissionDenied,
    QuotaExceeded,
    FrameTooLarge,
    InvalidRequest,
    SandboxUnavailable,
    IncompatibleProtocol,
    RemoteError,
    # A request the host made for the plugin failed, and the plugin let it through: the
    # caller learns as much from it as the plugin did (it is the host's own report).
    HttpError,
)

#: Errors only the launch (hello, initialize: lock-down before any plugin code) may report.
#: From a running plugin they are a claim about the host it cannot know (and would send the
#: operator off to weaken the sandbox): they arrive as a PluginError.
_LAUNCH_ONLY: Final = (SandboxUnavailable, IncompatibleProtocol)


class _WorkerChannel(_WorkerState):
    """The channel and its calls (a mixin of ``WorkerProcess``)."""

    #: Made by ``_worker_reader``'s ``_attach_loop``; host requests are charged to it here.
    decode_budget: DecodeBudget

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- writing ---------------------------------------------------------------------------

    def _put(self, frame: bytes, *, newline: bool = False) -> bool:
        """Hand a frame to the channel without waiting. On an idle channel with no other
        call in flight it is written at once (a sequential caller waits on exactly this
        frame); otherwise it is queued and the writer task sends everything queued in one
        write. ``newline``: ``frame`` is a request's body, and its newline is written with
        it in one ``writev`` (or queued behind it), so a large request is never copied to
        add one (45 us a MiB). False: the queue is full or stdin is closing; nothing was
        taken."""
        if self._broken:
            return True  # the worker is gone; _reap fails the calls waiting on it
        out = self._out
        if self._stdin_closing or len(out) >= SEND_BUFFER:
            return False
        if not out and len(self._pending) <= 1:
            try:
                wfd = self._wfd
                n = os.writev(wfd, (frame, _NL)) if newline else os.write(wfd, frame)
            except BlockingIOError:
                n = 0
            except OSError:
                self._broken = True
                return True
            if n == len(frame) + newline:
                return True
            self._writer_wake.set()
            out += memoryview(frame)[n:]
        else:
            if not out:
                self._writer_wake.set()
            out += frame
        if newline:
            out += _NL
        return True

    async def _writer(self) -> None:
        """Write what :meth:`_put` queued: a pipelined burst leaves in one write, and a full
        pipe is waited out here rather than by the callers. Ends (closing stdin) once
        :meth:`_close_stdin` was called and everything queued before it is written."""
        out = self._out
        try:
            while True:
                if not out:
                    if self._stdin_closing:
                        return
                    await self._writer_wake.wait()
                    self._writer_wake = anyio.Event()
                    continue
                try:
                    n = os.write(self._wfd, out)
                except BlockingIOError:
                    await anyio.wait_writable(self._wfd)
                    continue
                except OSError:
                    self._broken = True
                    out.clear()
                    return
                del out[:n]
                if self._drained is not None and len(out) < SEND_BUFFER:
                    self._drained.set()
                    self._drained = None
        finally:
            if self._drained is not None:
                self._drained.set()
                self._drained = None
            self._stdin_closing = True
            self._close_stdin_fd()

    def _close_stdin(self) -> None:
        """EOF for the worker (how it is told to shut down), after what is queued."""
        self._stdin_closing = True
        self._writer_wake.set()

    def _close_stdin_fd(self) -> None:
        if self._wfd >= 0:
            fd, self._wfd = self._wfd, -1
            os.close(fd)

    async def _send(self, frame: bytes) -> None:
        if len(frame) > self.max_frame:
            raise FrameTooLarge(limit=self.max_frame, size=len(frame))
        while not self._put(frame):
            if self._stdin_closing:
                await self.exited.wait()
                assert self.exit is not None
                raise self.exit.error(self.plugin_id) from None
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def _send_nowait(self, frame: bytes) -> None:
        # Dropped when the queue is full or stdin is closing, as it always was.
        self._put(frame)

    def _prune_deadlines(self) -> None:
        """Answered calls leave their deadline in the heap (see :meth:`request`, which
        pushes each call's and wakes the timer for an earlier one); drop those now and
        then. One timer task serves every call's deadline: a cancel scope per call cost
        more than the rest of the call's bookkeeping together."""
        self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
        heapq.heapify(self._deadlines)

    async def _timer(self) -> None:
        """Wake each call whose deadline passed with ``expired`` set; the caller then asks
        the worker to cancel (see :meth:`_cancel_after_timeout`)."""
        while True:
            now = anyio.current_time()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                _, ident = heapq.heappop(heap)
                pending = self._pending.get(ident)
                if pending is not None and not pending.woken():
                    pending.expired = True
                    pending.wake()
            self._timer_wake = anyio.Event()
            self._timer_at = heap[0][0] if heap else math.inf
            with anyio.CancelScope(deadline=self._timer_at):
                await self._timer_wake.wait()

    # -- what the worker sends (read by _worker_reader) -------------------------------------

    def _violation(self, detail: str) -> bool:
        log.warning("worker.protocol_violation", plugin=self.plugin_id, detail=detail)
        self.kill_nowait("protocol-violation", detail)
        return False

    def _on_frame(self, frame: bytes | object, msg: Incoming | Batch | None = None) -> bool:
        if frame is OVERSIZE:
            return self._violation(f"sent a frame over the {self.max_frame}-byte limit")
        if isinstance(frame, Refused):
            return self._on_refused(frame)
        assert isinstance(frame, bytes)
        if msg is None:
            msg = decode_frame(frame)
        if isinstance(msg, Response):
            self._on_response(msg)
            return True
        if isinstance(msg, Request):
            self._on_request(msg)
            return True
        if isinstance(msg, Notification):
            self._on_notification(msg)
            return True
        if isinstance(msg, Batch):
            for item in msg.items:
                if isinstance(item, Invalid):
                    return self._violation(f"sent an invalid message: {item.error.message}")
            for item in msg.items:
                if isinstance(item, Response):
                    self._on_response(item)
                elif isinstance(item, Request):
                    self._on_request(item)
                elif isinstance(item, Notification):
                    self._on_notification(item)
            return True
        assert isinstance(msg, Invalid)
        preview = self.redactor.clean_message(frame[:80].decode("utf-8", "replace"), 80)
        return self._violation(f"wrote garbage on the protocol channel: {preview!r}")

    def _on_refused(self, frame: Refused) -> bool:
        """A frame over ``max-frame-values``, never decoded: the call it answers fails with
        :class:`FrameTooLarge` (``kind="values"``), a request of the worker's is answered
        with it, and anything else (a notification, no envelope) is a protocol violation,
        as an oversize frame is."""
        cap = self._splitter.max_values
        exc = FrameTooLarge(limit=cap, size=frame.values, kind="values", plugin=self.plugin_id)
        if self._splitter.refused_count == 1:  # once per worker: each costs it a frame
            log.warning(
                "worker.frame_refused", plugin=self.plugin_id, values=frame.values, limit=cap
            )
        envelope = refused_envelope(frame.head)
        if envelope is not None and envelope[0] == "answer":
            pending = self._pending.pop(envelope[1], None) if isinstance(envelope[1], int) else None
            if pending is not None:
                pending.error = exc
                pending.wake()
            return True  # an answer to nothing we asked: ignored, as any other
        if envelope is not None:
            ident = envelope[1]
            if self._tg is not None:
                # Waits for room in the worker's stdin queue, as any host answer does.
                self._tg.start_soon(self._answer_refused, encode_error(ident, error_to_wire(exc)))
            return True
        return self._violation(f"sent a frame over the {cap}-value limit ({exc.message})")

    async def _answer_refused(self, frame: bytes) -> None:
        try:
            await self._send(frame)
        except CordonError:
            pass  # the worker is gone; nobody is left to answer

    def _on_response(self, msg: Response) -> None:
        if self.reply_delay > 0 and self._tg is not None:
            self._tg.start_soon(self._deliver_later, msg, self.reply_delay)
            return
        self._deliver(msg)

    async def _deliver_later(self, msg: Response, delay: float) -> None:
        await anyio.sleep(delay)
        self._deliver(msg)

    def _deliver(self, msg: Response) -> None:
        pending = self._pending.pop(msg.id, None) if isinstance(msg.id, int) else None
        if pending is None:
            # A response to nothing we asked (or already gave up on): harmless, ignored.
            return
        if msg.error is not None:
            # Every string in it is the plugin's: redacted and neutralised here, where a
            # worker's error enters the host, so no caller, log or terminal sees it raw.
            pending.error = self.redactor.clean_error(self._vet(error_from_wire(msg.error)))
        else:
            pending.result = msg.result
        pending.wake()

    def _vet(self, exc: CordonError) -> CordonError:
        """A worker's error is a claim, not a fact: only errors a worker can honestly raise
        pass as themselves, and the plugin they name is always the one on this channel."""
        # The exact class: auto-registered host classes may subclass an allowed one
        # (UnknownContribution is a MethodNotFound) and must not be forgeable through it.
        if type(exc) not in _WORKER_MAY_RAISE or (
            type(exc) in _LAUNCH_ONLY
            and (self.lockdown_report is not None or self.init_result is not None)
        ):
            return PluginError(
                f"plugin raised {type(exc).__name__}: {exc.message}",
                exc_type=type(exc).__name__,
                exc_message=exc.message,
                plugin=self.plugin_id,
            )
        if "plugin" in exc._fields:
            setattr(exc, "plugin", self.plugin_id)  # noqa: B010 - not every class has it
        return exc

    def _on_notification(self, msg: Notification) -> None:
        if msg.method == HELLO and self._hello is None:
            try:
                self._hello = msgspec.json.decode(msg.params, type=Hello)
            except msgspec.DecodeError:
                self.kill_nowait("protocol-violation", "malformed hello")
                return
            self._hello_event.set()
        elif msg.method == PROGRESS:
            try:
                prog = msgspec.json.decode(msg.params, type=ProgressParams)
            except msgspec.DecodeError:
                return
            pending = self._pending.get(prog.id) if isinstance(prog.id, int) else None
            if pending is not None and pending.on_progress is not None:
                try:
                    pending.on_progress(prog)
                except Exception:
                    log.exception("progress_callback_failed", plugin=self.plugin_id)
        elif msg.method == LOCKED_DOWN:
            # Only the first, and only during initialize: it comes from the launch's own code,
            # before the plugin's import. Any later one is the plugin's and changes nothing.
            if self.lockdown_report is None and self.init_result is None and self._hello:
                try:
                    self.lockdown_report = msgspec.json.decode(msg.params, type=LockedDown).sandbox
                except msgspec.DecodeError:
                    self.kill_nowait("protocol-violation", "malformed lock-down report")
        elif self._on_host_notification is not None and self._hello is not None:
            # A log record (host/log as a notification): served now, in channel order, so
            # it is in the host's log before the result the worker sent after it.
            try:
                follow_up = self._on_host_notification(msg.method, msg.params)
            except Exception:
                log.exception("host_notification_failed", plugin=self.plugin_id)
                return
            if follow_up is not None and self._tg is not None:
                self._tg.start_soon(follow_up)

    # -- worker → host requests -------------------------------------------------------------
    #
    # Bounded per worker: at most host_requests_max served at once, holding at most
    # host_request_bytes_max of params (one is always admitted). A request that does not
    # fit waits in _host_waiting and the pump, which is the only reader of the channel,
    # admits it before it reads another byte: so past the bound the host stops reading
    # this worker (its pipe fills, its writes block or buffer in its own memory) instead of
    # buffering. A slot is held until the answer is queued for the worker's stdin, so a
    # worker that does not read its answers is stopped the same way.
    #
    # No deadlock: the same channel carries the worker's answers to the host's own calls,
    # which wait unread while reading is paused; but no host request handler waits on a
    # worker's answer (storage, config, log, exec are the host's own work; events.emit only
    # queues), so every slot frees by itself and reading resumes. A worker that does not
    # read its stdin stalls only itself; its host calls end by their own timeouts.

    def _host_fits(self, msg: Request) -> bool:
        if self._host_inflight >= self.host_requests_max:
            return False
        return self._host_inflight == 0 or (
            self._host_bytes + len(msg.params) + HOST_REQUEST_OVERHEAD
            <= self.host_request_bytes_max
        )

    def _on_request(self, msg: Request) -> None:
        # Its handler decodes the params later, in a task of its own where that is not
        # measured: charged now, by their structural bytes (one C pass).
        params = msg.params
        if len(params) > 64:
            self.decode_budget.charge(structural_count(bytes(params)) * VALUE_COST)
        if self._host_waiting or not self._host_fits(msg):
            self._host_waiting.append(msg)
            return
        self._start_host_request(msg)

    def _start_host_request(self, msg: Request) -> None:
        assert self._tg is not None
        size = len(msg.params) + HOST_REQUEST_OVERHEAD
        self._host_inflight += 1
        self._host_bytes += size
        self._tg.start_soon(self._serve_host_request, msg, size)

    async def _admit_waiting(self) -> None:
        """Start the waiting requests as slots free; the channel is not read meanwhile."""
        waiting = self._host_waiting
        while waiting:
            if self._host_fits(waiting[0]):
                self._start_host_request(waiting.popleft())
                continue
            self._host_slot = anyio.Event()
            await self._host_slot.wait()

    async def _serve_host_request(self, msg: Request, size: int) -> None:
        try:
            try:
                if self._on_host_request is None:
                    raise MethodNotFound(f"method {msg.method!r} not found", method=msg.method)
                result = await self._on_host_request(msg.method, msg.params)
                frame = encode_result(msg.id, result)
            except CordonError as exc:
                frame = encode_error(msg.id, error_to_wire(exc))
            except Exception as exc:
                log.exception("host_api_failed", plugin=self.plugin_id, method=msg.method)
                frame = encode_error(msg.id, error_to_wire(InternalError(f"host error: {exc}")))
            if len(frame) > self.max_frame:
                frame = encode_error(
                    msg.id, error_to_wire(FrameTooLarge(limit=self.max_frame, size=len(frame)))
                )
            try:
                # Waits while the worker's stdin queue is full: the answer is never dropped,
                # and the slot stays taken until the worker takes its answers.
                await self._send(frame)
            except CordonError:
                pass  # the worker is gone; nobody is left to answer
        finally:
            self._host_inflight -= 1
            self._host_bytes -= size
            self._host_slot.set()

    # -- calls ----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Any,
        *,
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
        label: str | None = None,
    ) -> msgspec.Raw:
        """Send a request and wait for its answer, the result as the JSON it is.

        On ``timeout`` the worker is asked to cancel; if it has not answered within
        :data:`CANCEL_GRACE` it is killed (reason ``timeout``). If the caller is cancelled,
        the worker is told (``$/cancel``) and the cancellation propagates unchanged.
        """
        raw: msgspec.Raw = await self._call(method, params, timeout, on_progress, label, False)
        return raw

    async def _call(
        self,
        method: str,
        params: Any,
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None,
        label: str | None,
        want_value: bool,
    ) -> Any:
        """:meth:`request`; with ``want_value`` the result decoded (once: in the reader, or
        here for a large one, see ``_worker_reader``) rather than as ``msgspec.Raw``."""
        if self.exit is not None:
            raise self.exit.error(self.plugin_id)
        self._next_id += 1
        ident = self._next_id
        loop = self._loop
        pending: _Pending
        fut: asyncio.Future[None] | None = None
        if loop is not None:
            pending = _FuturePending(on_progress, loop, want_value)
            fut = pending._fut  # to await it without pending.wait()'s call
        else:
            pending = _Pending(on_progress)
        self._pending[ident] = pending
        try:
            # Without its newline, which _put adds without copying the request.
            body = encode_request_body(ident, method, params)
            if len(body) + 1 > self.max_frame or not self._put(body, newline=True):
                await self._send(body + _NL)
            if timeout is not None:
                # anyio's clock is the loop's: read it directly on asyncio (no backend lookup).
                deadline = (self._clock() if loop is not None else anyio.current_time()) + timeout
                deadlines = self._deadlines
                heapq.heappush(deadlines, (deadline, ident))
                if deadline < self._timer_at:
                    self._timer_wake.set()
                elif len(deadlines) > 2 * len(self._pending) + 64:
                    self._prune_deadlines()
            await (fut if fut is not None else pending.wait())
            if pending.expired and pending.result is None and pending.error is None:
                assert timeout is not None
                await self._cancel_after_timeout(ident, pending, label or method, timeout)
        except anyio.get_cancelled_exc_class():
            if pending.result is None and pending.error is None:
                self._send_nowait(encode_notification(CANCEL, {"id": ident}))
            raise
        finally:
            self._pending.pop(ident, None)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        if not want_value:
            return pending.result
        if fut is not None:
            assert isinstance(pending, _FuturePending)
            if pending.value is not UNDECODED:
                return pending.value
            if pending.frame is not None:
                return await self._decode_large(pending.frame)
        return decode_params(pending.result)

    async def _decode_large(self, frame: bytes) -> Any:
        """A large answer, decoded in this caller's task, in pieces; a frame that is no
        valid answer after all is the protocol violation it would have been in the reader
        (the worker is killed), and the call fails as the worker's other calls do."""
        # Decoded here, in the caller's task, but it is the plugin's frame: each stretch
        # between checkpoints is charged to its budget (the next read pauses if spent).
        budget = self.decode_budget
        began = [_thread_time()]

        async def checkpoint() -> None:
            budget.charge(_thread_time() - began[0])
            await anyio.lowlevel.checkpoint()
            began[0] = _thread_time()

        try:
            value = await decode_large(frame, checkpoint)
            budget.charge(_thread_time() - began[0])
            return value
        except msgspec.DecodeError:
            self._on_frame(frame)  # classified as the reader would have: a violation
            await self.exited.wait()
            assert self.exit is not None
            raise self.exit.error(self.plugin_id) from None

    async def _cancel_after_timeout(
        self, ident: int, pending: _Pending, method: str, timeout: float
    ) -> None:
        pending.rearm()  # the timer woke the first wait
        self._send_nowait(encode_notification(CANCEL, {"id": ident}))
        with anyio.move_on_after(CANCEL_GRACE):
            await pending.wait()
        if not pending.woken() or isinstance(pending.error, WorkerCrashed):
            self.kill_nowait("timeout", f"{method} ignored cancellation after {timeout} s")
        pending.error = CallTimeout(timeout=timeout, method=method, plugin=self.plugin_id)
        pending.wake()

    def invoke(
        self,
        name: str,
        arguments: Any,
        *,
        kind: str = "tool",
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Coroutine[Any, Any, msgspec.Raw]:
        """``await`` it: :meth:`request` for ``invoke``. Hands out request's own coroutine
        rather than awaiting it in one more (every tool call passes here)."""
        params = {"name": name, "kind": kind, "arguments": arguments}
        return self._call(INVOKE, params, timeout, on_progress, name, False)

    def invoke_decoded(
        self,
        name: str,
        arguments: Any,
        *,
        kind: str = "tool",
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """:meth:`invoke`, its result decoded: the tool-call path (``PluginHandle.call``)."""
        params = {"name": name, "kind": kind, "arguments": arguments}
        return self._call(INVOKE, params, timeout, on_progress, name, True)

    async def ping(self, timeout: float) -> bool:
        try:
            with anyio.fail_after(timeout):
                await self.request(PING, None, timeout=None)
        except (TimeoutError, CordonError):
            return False
        return True
