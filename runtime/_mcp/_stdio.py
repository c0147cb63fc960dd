"""The stdio transport's two ends, driven by the event loop instead of threads.

The SDK's ``stdio_server`` reads stdin and writes stdout through ``anyio.wrap_file``: a worker
thread per read, and two per answer (write, flush). A thread blocked in ``read()`` (the client
keeps stdin open) or in ``write()`` (the client stopped reading, the pipe is full) cannot be
cancelled, so a bridge told to stop by SIGTERM would hang there instead of stopping its
workers; and the thread hops cost more than the rest of the bridge per call. So the bridge
hands ``stdio_server`` its own ends: :class:`StdinLines` and :class:`StdoutWriter`, which
wait for the descriptor in the event loop (cancellable) and read or write without blocking.

Handing it ``stdout`` means the SDK no longer moves fd 1 aside; :func:`claimed_stdio` does
it: the protocol gets a private duplicate of fd 1 and fd 1 itself points at stderr while the
bridge serves, so nothing else (a ``print``, a library's warning) can write into the stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Final

import anyio
import structlog

__all__ = ["MAX_LINE", "StdinLines", "StdoutWriter", "claimed_stdio"]

log = structlog.get_logger("cordon")

#: Bytes per read from stdin.
_STDIN_CHUNK: Final = 65536
#: One JSON-RPC message per line; a longer line is dropped (and logged) rather than buffered
#: without end. The same bound as a worker's default max-message.
MAX_LINE: Final = 16 * 1024 * 1024


class StdinLines:
    """stdin's lines, read in the event loop rather than in a thread as the SDK's default
    reader does: a thread blocked in ``read()`` cannot be cancelled, so a signal could not
    stop a bridge whose client keeps stdin open."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._eof = False
        self._skipping = False  # inside a line over MAX_LINE, dropped up to its newline

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                if self._skipping or len(line) > MAX_LINE:
                    self._dropped()
                    self._skipping = False
                    continue
                return line.decode("utf-8", "replace")
            if len(self._buf) > MAX_LINE:
                self._dropped()
                self._skipping = True
            if self._skipping:
                self._buf.clear()  # what is dropped is never held
            if self._eof:
                rest, skipped = bytes(self._buf), self._skipping
                self._buf.clear()
                if rest.strip() and not skipped:
                    return rest.decode("utf-8", "replace")
                raise StopAsyncIteration
            data = await self._read()
            if data:
                self._buf += data
            else:
                self._eof = True

    def _dropped(self) -> None:
        if not self._skipping:  # once per line
            log.warning("mcp.line_dropped", reason=f"a line over {MAX_LINE} bytes")

    async def _read(self) -> bytes:
        while True:
            try:
                await anyio.wait_readable(self._fd)
            except PermissionError:
                pass  # a regular file or /dev/null: epoll refuses them, and reads never block
            except OSError:
                return b""
            try:
                return os.read(self._fd, _STDIN_CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                return b""


class StdoutWriter:
    """Writes the protocol's lines to ``fd`` (non-blocking), waiting in the event loop while
    the pipe is full, so a client that stops reading holds only this writer, cancellably."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    async def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            data = data[written:]

    async def flush(self) -> None:
        """Nothing is buffered: :meth:`write` returns once the kernel has every byte."""


@contextlib.contextmanager
def claimed_stdio() -> Iterator[tuple[StdinLines, StdoutWriter]]:
    """stdin's lines and a writer on a private duplicate of stdout; fd 1 points at stderr
    until the block is left, then back at the client."""
    wire = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        os.dup2(2, 1)
        try:
            yield StdinLines(0), StdoutWriter(wire)
        finally:
            os.dup2(wire, 1)
    finally:
        os.close(wire)
