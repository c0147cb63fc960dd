"""The start's requests, sent in order without waiting for one another, and the cgroup
placement's notice: a part of :class:`~._worker.WorkerProcess` (see ``_worker``), used by
``_worker_life``'s start.

A worker started with cordon's own worker command is sent ``initialize`` at once (before its
hello: it is the host's own code) and, when the plugin's lifecycle asks (``activate_early``),
``activate`` right behind it. Both are queued here in that order on the channel, each with the
record its answer will arrive in (:meth:`_queue`, :meth:`_answer`): ``request`` would send each
from a task of its own, in no set order. The move into the cgroups runs meanwhile; the worker
imports nothing of the plugin until ``$/placed`` (:meth:`_send_placed`), asked for in
``initialize`` when the move was not done when it went.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from cordon.protocol import (
    ACTIVATE,
    CANCEL,
    INITIALIZE,
    encode_notification,
    encode_request,
)
from cordon.protocol._methods import PLACED

from ._worker_reader import _FuturePending
from ._worker_state import _Pending, _WorkerState

__all__: list[str] = []


class _WorkerHandshake(_WorkerState):
    """Queueing the start's requests and the ``$/placed`` notice (a mixin of
    ``WorkerProcess``, through ``_worker_life``'s ``_WorkerLife``)."""

    #: Send ``activate`` right behind ``initialize`` (set before ``run``, or before a spare
    #: is claimed: the plugin's lifecycle does); :meth:`activate` then awaits its answer.
    activate_early: bool = False

    def _send_initialize(self, protocol: int) -> None:
        """Queue ``initialize`` (and ``activate`` behind it, if asked: the worker serves them
        in order, so activation costs no round trip of its own). If the move into the
        cgroups is not done yet, the worker is told to wait for ``$/placed`` before the
        plugin's import; the move then overlaps its lock-down."""
        params = self.params
        params.protocol = protocol
        params.await_placed = self._place is not None and not self._placed.is_set()
        self._init_call = self._queue(INITIALIZE, params)
        if self.activate_early:
            self._activation = self._queue(ACTIVATE, None)

    def _queue(self, method: str, params: Any) -> tuple[int, _Pending]:
        """Send a request now, in order with any sent before it, and return what its answer
        will arrive in (see :meth:`_answer`): ``request`` sends from a task of its own, which
        would leave two requests in no set order."""
        self._next_id += 1
        ident = self._next_id
        pending = _FuturePending(None, self._loop) if self._loop is not None else _Pending(None)
        self._pending[ident] = pending
        if not self._put(encode_request(ident, method, params)):
            # stdin is closing (the worker is being stopped) or its queue is full (a worker
            # that has read nothing yet cannot have filled it): it will not be answered.
            self._pending.pop(ident, None)
            pending.error = self._startup_error(f"could not send {method}")
            pending.wake()
        return ident, pending

    async def _answer(self, call: tuple[int, _Pending]) -> msgspec.Raw:
        """The answer to a request from :meth:`_queue`; the worker's exit fails it (like any
        call in flight). Cancelled, the worker is told, as for any call."""
        ident, pending = call
        try:
            await pending.wait()
        except anyio.get_cancelled_exc_class():
            if pending.result is None and pending.error is None:
                self._send_nowait(encode_notification(CANCEL, {"id": ident}))
            raise
        finally:
            self._pending.pop(ident, None)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def activate(self) -> None:
        """Run the plugin's activation hooks: the answer to the ``activate`` sent right
        behind ``initialize`` (``activate_early``), else a request now.

        A plugin without hooks (its initialize answer says how many) has nothing to wait
        for: the activate sent early runs no code, and the first call, behind it in the
        worker's stdin, is served after it anyway. Its answer is then not awaited (nor kept:
        it is ignored on arrival), which saves the first call a round trip. The count is the
        plugin's word: a plugin that hides its hooks only lets its own first call overtake
        them."""
        call, self._activation = self._activation, None
        if call is None:
            await self.request(ACTIVATE, None, timeout=None)
        elif self.init_result is not None and self.init_result.activate_hooks == 0:
            self._pending.pop(call[0], None)
        else:
            await self._answer(call)

    async def _run_place(self, pid: int) -> None:
        try:
            if self._place is not None:
                await self._place(pid)
        except Exception as exc:
            self._place_error = exc
        finally:
            self._placed.set()
            self._send_placed()

    def _send_placed(self) -> None:
        """``$/placed``, once: when initialize asked the worker to wait for it and the move
        is done. Never after a failed move: the worker then waits, and is killed for it."""
        call = self._init_call
        if (
            call is None
            or self._placed_sent
            or not self._placed.is_set()
            or self._place_error is not None
            or not self.params.await_placed
        ):
            return
        self._placed_sent = True
        self._send_nowait(encode_notification(PLACED))
