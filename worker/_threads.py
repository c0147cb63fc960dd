"""Plugin code on threads: plain ``def`` functions in a small pool, and ``ctx.run``, which
lets such code wait for a host API on the worker's event loop.

* A sync call runs in the pool; a thread that cannot start (no address space for its stack
  under RLIMIT_AS, or RLIMIT_NPROC) is a :class:`QuotaExceeded`, never the plugin's error.
* ``ctx.run(aw)`` submits ``aw`` to the loop with ``run_coroutine_threadsafe`` and waits; the
  result, or the same typed error ``await`` would raise, comes back to the thread. On the
  loop's own thread it refuses (waiting there could never end).
* Cancelling a call cancels what its threads wait for in ``ctx.run``: the wait raises
  :class:`CallCancelled` in the thread. A threaded call says "cancelled" only once its thread
  has returned; a thread that does not return leaves it silent, and the host's cancel grace
  recycles the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import resource
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from cordon.protocol import CallCancelled, QuotaExceeded

__all__ = ["NO_THREAD", "SYNC_THREADS", "SyncCalls", "thread_quota"]

#: Threads for synchronous plugin functions; they cannot be cancelled, so keep the pool small.
SYNC_THREADS: Final = 8
#: What CPython says when ``pthread_create`` fails (EAGAIN: no address space for the stack
#: under RLIMIT_AS, or RLIMIT_NPROC reached): a resource limit, not the plugin's bug.
NO_THREAD: Final = "can't start new thread"

T = TypeVar("T")


def thread_quota(plugin_id: str, exc: BaseException) -> QuotaExceeded:
    """A thread that could not start: the address space (RLIMIT_AS) its stack needs, or
    RLIMIT_NPROC when that is the only limit set."""
    mem = resource.getrlimit(resource.RLIMIT_AS)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    limit: int | None
    if mem == resource.RLIM_INFINITY and nproc != resource.RLIM_INFINITY:
        kind, limit = "processes", nproc
    else:
        kind, limit = "memory", None if mem == resource.RLIM_INFINITY else mem
    return QuotaExceeded(
        f"plugin {plugin_id!r} cannot start another thread ({exc}): its {kind} "
        f"limit ({limit}) is reached",
        kind=kind,
        limit=limit,
        plugin=plugin_id,
    )


class _Job:
    """A sync call handed to the pool; ``abandoned`` once answered without it."""

    __slots__ = ("abandoned", "fn")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.abandoned = False

    def __call__(self) -> Any:
        if self.abandoned:
            return None
        return self.fn()


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


class SyncCalls:
    """The worker's threads for one server. ``threaded`` holds the ids of calls whose thread
    is running (the server reads it: such a call cannot be answered "cancelled")."""

    def __init__(self, plugin_id: str) -> None:
        self.plugin_id = plugin_id
        self.threaded: set[Any] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        #: Per call: the futures its threads wait on in ``ctx.run``, cancelled with the call,
        #: and the calls cancelled meanwhile (so a later ``ctx.run`` fails at once).
        self._waits: dict[Any, set[concurrent.futures.Future[Any]]] = {}
        self._cancelled: set[Any] = set()
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop ``ctx.run`` submits to; call from that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    async def call(self, ident: Any, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the pool for call ``ident``. Raises :class:`QuotaExceeded` when no
        thread can start, ``CancelledError`` once the thread has ended after a cancel (with
        ``ident`` left in :attr:`threaded` if it did not)."""
        loop = self._loop
        assert loop is not None
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                SYNC_THREADS, thread_name_prefix="cordon-sync"
            )
        job = _Job(fn)
        try:
            cfut = self._executor.submit(job)
        except RuntimeError as exc:
            # The pool queued the job before its new thread failed to start; a thread that
            # frees up later must not run a call that was already answered.
            job.abandoned = True
            raise thread_quota(self.plugin_id, exc) from None
        self.threaded.add(ident)
        try:
            result = await asyncio.wrap_future(cfut, loop=loop)
        except asyncio.CancelledError:
            # What the thread waits on through ctx.run is cancelled (it raises CallCancelled
            # there); a job still queued never starts. Wait for the thread to end, and only
            # then let the call say "cancelled".
            self.cancel(ident)
            if not cfut.cancelled():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(cfut, loop=loop)
            self.threaded.discard(ident)
            raise
        self.threaded.discard(ident)
        return result

    def run(self, ident: Any, aw: Awaitable[T]) -> T:
        """``ctx.run``: run ``aw`` on the loop and wait for it in this (non-loop) thread."""
        loop = self._loop
        if loop is None or self.on_loop_thread():
            if asyncio.iscoroutine(aw):
                aw.close()
            raise RuntimeError(
                "ctx.run() blocks until the worker's event loop has run the awaitable, and "
                "was called on that loop's own thread; in async code, await it instead"
            )
        with self._lock:
            if ident in self._cancelled:
                if asyncio.iscoroutine(aw):
                    aw.close()
                raise CallCancelled(method="ctx.run")
            cfut = asyncio.run_coroutine_threadsafe(_awaited(aw), loop)
            self._waits.setdefault(ident, set()).add(cfut)
        try:
            return cfut.result()
        except concurrent.futures.CancelledError:
            raise CallCancelled(method="ctx.run") from None
        finally:
            with self._lock:
                waits = self._waits.get(ident)
                if waits is not None:
                    waits.discard(cfut)

    def cancel(self, ident: Any) -> None:
        """Call ``ident`` is cancelled: end its threads' ``ctx.run`` waits, now and later."""
        with self._lock:
            self._cancelled.add(ident)
            waits = self._waits.pop(ident, ())
        for cfut in waits:
            cfut.cancel()

    def forget(self, ident: Any) -> None:
        """Call ``ident`` is over."""
        if self._cancelled or self._waits:
            with self._lock:
                self._cancelled.discard(ident)
                self._waits.pop(ident, None)

    def shutdown(self) -> None:
        if self._executor is not None:
            with contextlib.suppress(Exception):
                self._executor.shutdown(wait=False, cancel_futures=True)
