"""Reading a worker's stdout, and the asyncio fast path.

On anyio's asyncio backend a reader callback (:meth:`_on_readable`) resolves the callers'
futures (:class:`_FuturePending`) itself: an answer costs no task wake-up, and a sequential
caller may go on from the very read that brought its answer. Whatever is not a plain
answer is handed to the pump task in order, and reading pauses until it is handled. On any
other backend (trio) :meth:`_read_stdout` handles every frame in the pump task.

These are the tuned hot paths (see benchmarks/RESULTS.md), moved here unchanged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

import anyio

from cordon.protocol import OVERSIZE, Batch, Incoming, ProgressParams, Response, decode_frame
from cordon.protocol._messages import decode_success

from ._worker_state import _Pending, _WorkerState

__all__ = ["READ_SIZE"]

#: Bytes per read of the worker's stdout: a pipe's whole default capacity, so a pipelined
#: burst still arrives in one syscall. Not more: ``os.read`` allocates the full size first,
#: and above glibc's 128 KiB mmap threshold that was an mmap + mremap + munmap and fresh
#: zeroed pages on every read, which cost a sequential call ~25 us on each side.
READ_SIZE: Final = 64 * 1024


class _FuturePending(_Pending):
    """A :class:`_Pending` on anyio's asyncio backend: a bare future costs a fifth of an
    ``anyio.Event`` (no backend lookup, no ``asyncio.Event`` with its waiter list), and
    cancelling the waiting task cancels the future, so cancel scopes work unchanged."""

    __slots__ = ("_fut",)

    def __init__(
        self,
        on_progress: Callable[[ProgressParams], Any] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.result = None
        self.error = None
        self.expired = False
        self.on_progress = on_progress
        # Not loop.create_future(): that is this same call behind a Python method.
        self._fut: asyncio.Future[None] = asyncio.Future(loop=loop)

    def wake(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def woken(self) -> bool:
        # A future cancelled with its waiter (a cancel scope) was not woken by an answer.
        fut = self._fut
        return fut.done() and not fut.cancelled()

    def wait(self) -> Awaitable[Any]:
        return self._fut

    def rearm(self) -> None:
        self._fut = self._fut.get_loop().create_future()


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop when anyio runs on its asyncio backend, else ``None`` (trio). anyio
    names the backend through its cancellation class (sniffio is not a dependency here)."""
    if anyio.get_cancelled_exc_class() is not asyncio.CancelledError:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _WorkerReader(_WorkerState):
    """The stdout reader and the asyncio fast path (a mixin of ``WorkerProcess``)."""

    #: Use the asyncio-only channel paths when anyio runs on asyncio (tests turn this off to
    #: exercise the generic ones, which trio would get).
    _asyncio_fast_path: ClassVar[bool] = True

    def _attach_loop(self) -> None:
        """At the start of :meth:`run`: take the fast path if anyio runs on asyncio."""
        self._loop = loop = _asyncio_loop() if self._asyncio_fast_path else None
        if loop is not None:
            ready = getattr(loop, "_ready", None)
            self._run_queue = ready if isinstance(ready, deque) else None
            if type(loop).time is not asyncio.BaseEventLoop.time:
                self._clock = loop.time

    async def _read_stdout(self) -> None:
        """The generic reader (any anyio backend): every frame handled in this task."""
        fd = self._rfd
        splitter = self._splitter
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            self.last_activity = time.monotonic()
            for frame in splitter.feed(data):
                if not self._on_frame(frame):
                    return
                if self._host_waiting:
                    await self._admit_waiting()

    async def _serve_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio: :meth:`_on_readable` runs as a reader callback and resolves the callers'
        futures itself, so an answer costs no task wake-up of ours (the subprocess
        transport's stream took two loop passes per read). Whatever is not a response
        (hello, progress, a host request, a violation) is handed to this task, in order,
        and reading pauses until it is handled: progress callbacks, host requests and
        anyio calls need a task, and a call's progress must not overtake its answer."""
        fd = self._rfd
        try:
            self._resume_reading()
            while True:
                await self._reader_wake.wait()
                self._reader_wake = anyio.Event()
                if self._reader_error is not None:
                    raise self._reader_error
                backlog = self._backlog
                while backlog:
                    frame, msg = backlog.popleft()
                    if not self._on_frame(frame, msg):
                        return
                    if self._host_waiting:
                        # Reading stays paused meanwhile: backpressure on the worker.
                        await self._admit_waiting()
                if self._stdout_eof:
                    return
                self._resume_reading()
        finally:
            if self._reading:
                self._reading = False
                loop.remove_reader(fd)

    def _resume_reading(self) -> None:
        assert self._loop is not None
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._rfd, self._on_readable)

    def _pause_reading(self) -> None:
        """Stop the callback and wake the pump task (backlog, EOF, or a failure)."""
        if self._reading:
            self._reading = False
            assert self._loop is not None
            self._loop.remove_reader(self._rfd)
        self._reader_wake.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._rfd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stdout_eof = True
            self._pause_reading()
            return
        self.last_activity = time.monotonic()
        try:
            frames = self._splitter.feed(data)
            pending = self._pending
            for i, frame in enumerate(frames):
                msg: Incoming | Batch | None = None
                if frame is not OVERSIZE and self.reply_delay <= 0:
                    assert isinstance(frame, bytes)
                    ok = decode_success(frame)
                    if ok is not None:
                        # The common case, decoded by the narrow struct alone. Only the
                        # asyncio path reads here, so every call waits on a future.
                        call = pending.pop(ok.id, None)
                        if call is not None:
                            assert isinstance(call, _FuturePending)
                            call.result = ok.result
                            fut = call._fut
                            if not fut.done():  # call.wake()
                                fut.set_result(None)
                                ready = self._run_queue
                                if ready and i == len(frames) - 1:
                                    # Nothing follows in this read, so the caller goes on
                                    # now rather than on the loop's next pass: it sends
                                    # its next request from this read (one loop pass and
                                    # one epoll_wait less per sequential call). The step
                                    # run is the one set_result just queued for this
                                    # future (the task's own wake-up), so the task runs as
                                    # it would a moment later; only its order relative to
                                    # callbacks already queued changes, as with 3.12's
                                    # eager tasks. Never from inside a task, which asyncio
                                    # refuses to enter another from (a reader callback
                                    # never is).
                                    handle = ready[-1]
                                    args = handle._args
                                    if args and args[0] is fut and asyncio.current_task() is None:
                                        ready.pop()
                                        handle._run()
                        continue
                    msg = decode_frame(frame)
                    if isinstance(msg, Response):
                        self._deliver(msg)
                        continue
                backlog = self._backlog
                backlog.append((frame, msg))
                backlog.extend((rest, None) for rest in frames[i + 1 :])
                self._pause_reading()
                return
        except Exception as exc:
            # A bug here must end the worker's run as it would in a task, not be logged
            # by the loop and forgotten.
            self._reader_error = exc
            self._pause_reading()

    def _close_stdout_fd(self) -> None:
        if self._reading and self._loop is not None:
            # Never leave a callback registered on a number the next open() may reuse.
            self._reading = False
            self._loop.remove_reader(self._rfd)
        if self._rfd >= 0:
            fd, self._rfd = self._rfd, -1
            os.close(fd)
