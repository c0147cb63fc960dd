"""Every use of asyncio's private internals on the host's side, behind one switch.

The host's reader callback resolves a caller's future; asyncio then runs the caller's next
step on the loop's *next* pass. When nothing else follows in that read, running that step at
once (taking the handle ``set_result`` just queued off ``loop._ready`` and calling its
``_run``) saves a loop pass and an ``epoll_wait`` per sequential call: what 3.12's eager
tasks do, which 3.11 lacks. Measured with ``benchmarks/bench_payload.py`` (shortcuts on
against off in one run).

The path is chosen once per worker, when its reader attaches to the loop: the shortcut only
on a loop that has the internals it expects, and only unless ``CORDON_LOOP_SHORTCUTS=0`` is
in the environment; otherwise the public API alone (the step runs on the next pass).
``path`` says which was chosen.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any, Final, Literal

__all__ = ["ENV", "LoopFast", "shortcuts_wanted"]

#: ``CORDON_LOOP_SHORTCUTS=0``: the public asyncio API only (host and its workers; the
#: host passes the variable on to the workers it starts).
ENV: Final = "CORDON_LOOP_SHORTCUTS"

Path = Literal["shortcuts", "public"]


def shortcuts_wanted() -> bool:
    return os.environ.get(ENV, "1").strip() != "0"


class LoopFast:
    """The shortcuts for one loop, or their public stand-ins."""

    __slots__ = ("_ready", "path")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        ready = getattr(loop, "_ready", None) if shortcuts_wanted() else None
        usable = isinstance(ready, deque) and callable(getattr(asyncio.Handle, "_run", None))
        self._ready: deque[Any] | None = ready if usable else None
        self.path: Path = "shortcuts" if usable else "public"

    def step_now(self, fut: asyncio.Future[Any]) -> None:
        """Run now the wake-up ``fut.set_result`` just queued for the task awaiting it, if it
        is the ready queue's last entry. It is the task's own step, so the task runs as it
        would a moment later; only its order relative to callbacks already queued changes.
        Never from inside a task, which asyncio refuses to enter another from (a reader
        callback never is). On the public path: nothing, the loop runs it next pass."""
        ready = self._ready
        if ready:
            handle = ready[-1]
            args = handle._args
            if args and args[0] is fut and asyncio.current_task() is None:
                ready.pop()
                handle._run()
