"""Newline-delimited framing with a hard upper bound on frame size.

One JSON text per line. The splitter never buffers more than ``max_frame`` bytes of a partial
frame: past that it drops what it has, reports :data:`OVERSIZE` in its place, and skips input
up to the next newline, so a peer cannot make the reader hang or grow without bound.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_FRAME", "OVERSIZE", "FrameSplitter"]

#: 16 MiB: comfortably above any sane tool result, far below what would hurt the host.
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024


class _Oversize:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERSIZE"


#: Stands in the output of :meth:`FrameSplitter.feed` where a frame was too large.
OVERSIZE: Final = _Oversize()


class FrameSplitter:
    """Split a byte stream into frames. ``feed`` returns complete frames in order."""

    __slots__ = ("_buf", "_discarding", "max_frame", "oversize_count")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 2:
            raise ValueError("max_frame must be at least 2 bytes")
        self.max_frame = max_frame
        self._buf = b""
        self._discarding = False
        self.oversize_count = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held right now."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | _Oversize]:
        if not self._buf and not self._discarding:
            # One whole frame, the usual read of a sequential caller: no loop.
            nl = data.find(b"\n")
            if 0 < nl == len(data) - 1 and nl <= self.max_frame and not data[:1].isspace():
                return [data[:nl]]
        out: list[bytes | _Oversize] = []
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            data = data[nl + 1 :]
            self._discarding = False
        if self._buf:
            data = self._buf + data
            self._buf = b""
        limit = self.max_frame
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if nl - start > limit:
                self.oversize_count += 1
                out.append(OVERSIZE)
            elif nl > start and not data[start:nl].isspace():
                out.append(data[start:nl])
            start = nl + 1
        rest = len(data) - start
        if rest > limit:
            self.oversize_count += 1
            out.append(OVERSIZE)
            self._discarding = True
        elif rest:
            self._buf = data[start:]
        return out

    def feed_eof(self) -> list[bytes | _Oversize]:
        """The stream ended: a final frame without newline is still a frame."""
        rest, self._buf = self._buf, b""
        if self._discarding or not rest or rest.isspace():
            return []
        return [rest]
