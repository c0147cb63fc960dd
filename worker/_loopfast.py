"""Every use of asyncio's private internals on the worker's side, behind one switch.

Two shortcuts, each saving a pass through the loop (and an ``epoll_wait``) per call:

* **A request's first step runs as it is read** (:meth:`LoopFast.step_now`): the step a new
  task queued on ``loop._ready`` is taken off and its handle's ``_run`` called, as 3.12's
  eager task factory would (3.11 has none). A tool that never suspends is then answered
  from the read that brought it.
* **An idle worker waits for its next request inside the read callback**
  (:meth:`LoopFast.idle_poll`): when nothing else could need the loop (no ready callback, no
  timer, no fd but the channel and the loop's self-pipe ``_ssock``), it polls those two fds
  itself rather than returning to ``_run_once`` and the selector.

Chosen once, when the server starts (after a zygote fork, in the worker's own environment):
the shortcuts only on a selector loop with the internals they read, and only unless
``CORDON_LOOP_SHORTCUTS=0`` is set; otherwise the public API alone (``path`` says which),
where both are no-ops and the loop runs the step, and the next read, on its next pass.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
from typing import Any, Final, Literal

__all__ = ["ENV", "LoopFast"]

#: ``CORDON_LOOP_SHORTCUTS=0``: the public asyncio API only.
ENV: Final = "CORDON_LOOP_SHORTCUTS"

Path = Literal["shortcuts", "public"]

#: The path the running server chose (``None`` before it starts): tests ask a worker.
chosen: Path | None = None


class LoopFast:
    """The shortcuts for one loop and one channel fd, or their public stand-ins."""

    __slots__ = ("_loop", "_only_ours", "_poll", "_ready", "path")

    def __init__(self, loop: asyncio.AbstractEventLoop, rfd: int) -> None:
        global chosen
        self._loop: Any = loop
        self._ready: collections.deque[Any] | None = None
        self._poll: select.poll | None = None
        #: What the idle poll returns when only a request is waiting.
        self._only_ours = [(rfd, select.POLLIN)]
        ready = getattr(loop, "_ready", None)
        ssock = getattr(loop, "_ssock", None)
        usable = (
            os.environ.get(ENV, "1").strip() != "0"
            and isinstance(ready, collections.deque)
            and ssock is not None
            and hasattr(loop, "_selector")
            and hasattr(loop, "_scheduled")
            and callable(getattr(asyncio.Handle, "_run", None))
        )
        if usable:
            assert ssock is not None
            self._ready = ready
            poller = select.poll()
            poller.register(rfd, select.POLLIN)
            poller.register(ssock.fileno(), select.POLLIN)
            self._poll = poller
        self.path: Path = "shortcuts" if usable else "public"
        chosen = self.path

    def step_now(self, task: asyncio.Task[Any]) -> None:
        """Run ``task``'s first step now if it is the *only* thing queued, so running it early
        reorders nothing (a ``$/cancel`` earlier in the same read has queued the cancelled
        task's wake-up, and a request after it must not run before the cancellation reached
        the plugin's code). It is the task's own step: ``current_task()``, its context,
        cancellation and ``asyncio.timeout`` behave as on the next pass. Only from a plain
        callback (inside a task asyncio refuses to enter a second one)."""
        ready = self._ready
        if ready is not None and len(ready) == 1:
            handle = ready[0]
            if getattr(handle._callback, "__self__", None) is task:
                ready.pop()
                handle._run()

    def idle_poll(self) -> bool:
        """Wait here for the next request, if nothing but it could need the loop (the caller
        checks its own state first). True: a request is waiting. False: back to the loop,
        as when the self-pipe wakes (a signal, ``call_soon_threadsafe`` from a plugin's
        thread); always on the public path."""
        poller = self._poll
        if poller is None:
            return False
        loop = self._loop
        if self._ready or loop._scheduled or len(loop._selector.get_map()) != 2:
            return False
        return poller.poll() == self._only_ours
