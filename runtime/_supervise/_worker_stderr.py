"""A worker's stderr, which is plugin output: read line by line (each line bounded, the rest
dropped and counted), handed to the host's log, and its last lines kept (redacted when the
worker ends) for the crash report.

Off every call's path: the pump is one of the tasks the process's life (``_worker_life``)
starts, and the tail is read when the worker is reaped.
"""

from __future__ import annotations

import time
from typing import Final

import anyio
import anyio.lowlevel
import structlog

from ._worker_state import _WorkerState

__all__ = ["STDERR_LINE_MAX"]

log = structlog.get_logger("cordon")

#: A single stderr line is cut here; the rest of it is dropped and counted.
STDERR_LINE_MAX: Final = 4096
#: Characters of each line of the stderr tail (STDERR_TAIL_LINES) shown (cleaned lazily,
#: when the worker ends: bounded work once per exit, none per line).
STDERR_TAIL_CHARS: Final = 512
#: The stderr pump lets the event loop run once handling the lines of one read has taken
#: this long, so a read full of costly lines (each is redacted on the loop) holds the loop
#: for at most this plus one line's cleaning, never the whole read's.
STDERR_YIELD_AFTER: Final = 0.002


class _WorkerStderr(_WorkerState):
    """The stderr pump and tail (a mixin of ``WorkerProcess``)."""

    async def _pump_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        stderr = self.process.stderr
        buf = b""
        skipping = False
        try:
            while True:
                try:
                    data = await stderr.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                buf += data
                since = time.perf_counter()
                while True:
                    if time.perf_counter() - since > STDERR_YIELD_AFTER:
                        # Each line is cleaned (redacted) on the loop: let other plugins'
                        # work run between lines rather than after the whole read.
                        await anyio.lowlevel.checkpoint()
                        since = time.perf_counter()
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > STDERR_LINE_MAX:
                            if not skipping:
                                self._line(buf[:STDERR_LINE_MAX] + b" [truncated]")
                            self.stderr_dropped += len(buf) - STDERR_LINE_MAX
                            skipping = True
                            buf = b""
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if skipping:
                        skipping = False
                        continue
                    if len(line) > STDERR_LINE_MAX:
                        self.stderr_dropped += len(line) - STDERR_LINE_MAX
                        line = line[:STDERR_LINE_MAX] + b" [truncated]"
                    self._line(line)
            if buf and not skipping:
                self._line(buf[:STDERR_LINE_MAX])
        finally:
            self._stderr_done.set()

    def _clean_tail(self) -> list[str]:
        return [self.redactor.clean_message(line, STDERR_TAIL_CHARS) for line in self._stderr_tail]

    def _line(self, line: bytes) -> None:
        self._stderr_tail.append(line[: 2 * STDERR_TAIL_CHARS].decode("utf-8", "replace"))
        if self._on_stderr is not None:
            try:
                self._on_stderr(line)
            except Exception:
                log.exception("stderr_handler_failed", plugin=self.plugin_id)
