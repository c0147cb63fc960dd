"""Newline-delimited framing with a hard upper bound on frame size.

One JSON text per line. The splitter never buffers more than ``max_frame`` bytes of a partial
frame: past that it drops what it has, reports :data:`OVERSIZE` in its place, and skips input
up to the next newline, so a peer cannot make the reader hang or grow without bound.

With ``max_values`` set (the host's reader sets it; the worker does not) a frame is also
refused for what decoding it would cost: its structural bytes (``[``, ``{``, ``,``, ``:``)
are counted as it arrives, and past ``max_values`` it is dropped, reported as a
:class:`Refused` that keeps its first bytes (to name the call it answers), and the rest of it
skipped, never decoded. Decoding costs per value, not per byte (15 MiB of ``[[],…]`` held the
host's loop for a second, a 15 MiB string for 5 ms), and every JSON value but the document's
first is preceded by one of those bytes or is a container opened by one, so the count bounds
the values from above (one inside a string counts too: stricter, never looser).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_MAX_FRAME",
    "GATHER",
    "OVERSIZE",
    "REFUSED_HEAD",
    "SMALL_PIECE",
    "SPARSE_EVERY",
    "SPARSE_FROM",
    "FrameSplitter",
    "Refused",
    "structural_count",
]

#: 16 MiB: comfortably above any sane tool result, far below what would hurt the host.
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024


class _Oversize:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERSIZE"


#: Stands in the output of :meth:`FrameSplitter.feed` where a frame was too large.
OVERSIZE: Final = _Oversize()


#: Bytes of a refused frame kept, to read the id (and method) off its envelope.
REFUSED_HEAD: Final = 256
#: What :func:`structural_count` counts. ``bytes.translate`` deletes them in one C pass
#: (0.57 ms per MiB here, whatever the bytes; four ``bytes.count`` calls took 1.2).
_STRUCTURAL: Final = b",:[{"
#: The same bytes as ``bytes.find`` takes them.
_STRUCTURAL_BYTES: Final = tuple(_STRUCTURAL)
#: From this size on the bytes are first looked for with ``bytes.find`` (memchr, vector
#: instructions: ~14 us per MiB and byte), one call per hit: a large frame is mostly text
#: with few structural bytes (a 1 MiB string counted in 45 us against 570), and below this
#: ``translate`` costs little anyway (18 us).
SPARSE_FROM: Final = 32 * 1024
#: Looked up one by one, at most one hit per this many bytes (all four bytes together); past
#: that the range is counted by ``translate`` after all. A find call costs up to ~0.25 us,
#: so the worst a frame can make of it (at the limit, then dense) is four memchr passes and
#: ~0.06 ns a byte on top of ``translate``'s ~0.5 (measured, 32 KiB to 1 MiB: +3-23 %).
SPARSE_EVERY: Final = 4096


def structural_count(data: bytes, start: int = 0, end: int | None = None) -> int:
    """The ``[``, ``{``, ``,`` and ``:`` bytes in ``data[start:end]`` (no copy of it is
    made unless they are dense): at least its JSON values less one. Exact, whichever way
    it counts: every byte of the range is looked at."""
    stop = len(data) if end is None else end
    if stop - start >= SPARSE_FROM:
        find = data.find
        left = (stop - start) // SPARSE_EVERY
        for byte in _STRUCTURAL_BYTES:
            at = find(byte, start, stop)
            while at >= 0 and left >= 0:
                left -= 1
                at = find(byte, at + 1, stop)
            if left < 0:
                break  # dense: counted by translate below
        else:
            return (stop - start) // SPARSE_EVERY - left
    part = data if start == 0 and stop == len(data) else data[start:stop]
    return len(part) - len(part.translate(None, _STRUCTURAL))


class Refused(_Oversize):
    """Stands in the output of :meth:`FrameSplitter.feed` where a frame had more than
    ``max_values`` structural bytes: ``head`` is its first bytes, ``values`` what was counted
    when it was refused (more than the limit; the rest was never counted). Only a splitter
    given ``max_values`` makes one; it is an oversize frame of another kind."""

    __slots__ = ("head", "values")

    def __init__(self, head: bytes, values: int) -> None:
        self.head = head
        self.values = values

    def __repr__(self) -> str:
        return f"Refused(values={self.values}, head={self.head[:40]!r})"


#: A piece shorter than this is gathered into one ``bytearray`` with its neighbours rather
#: than kept as its own ``bytes`` object: a peer dribbling one byte per write must cost about
#: a byte per byte held, not a ~40-byte object each (16 MiB of frame would be 700 MB).
SMALL_PIECE: Final = 4096
#: Gathered small pieces move to the list as one piece once this many bytes are gathered, so
#: the ``bytearray`` never grows large (appending to a large one reallocates and copies it).
GATHER: Final = 64 * 1024


class FrameSplitter:
    """Split a byte stream into frames. ``feed`` returns complete frames in order.

    Linear in its input: a partial frame is kept as the list of pieces that arrived (small
    ones gathered, see :data:`SMALL_PIECE`), only the new bytes are scanned for a newline,
    and the frame is joined once, in one allocation, when its newline arrives. So each byte
    is scanned once and copied at most three times (gathered, moved, joined), whatever the
    frame's size or how it was cut. (Re-joining and rescanning the whole partial frame on
    every read made one 16 MiB frame cost ~0.3 s of host CPU: quadratic. One growing
    ``bytearray`` was linear but slow: extending a large one reallocates and copies it, 1.1 ms
    per MiB at 64 KiB reads against 25 us for one join.)
    """

    __slots__ = (
        "_discarding",
        "_gathered",
        "_head",
        "_held",
        "_pieces",
        "_values",
        "max_frame",
        "max_values",
        "oversize_count",
        "refused_count",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_values: int | None = None) -> None:
        if max_frame < 2:
            raise ValueError("max_frame must be at least 2 bytes")
        self.max_frame = max_frame
        #: Refuse a frame with more structural bytes than this (``None``: no such limit).
        self.max_values = max_values
        self._pieces: list[bytes] = []
        self._gathered = bytearray()
        self._held = 0
        #: Structural bytes of the held pieces (counted only with ``max_values``), and the
        #: first bytes of the frame they begin.
        self._values = 0
        self._head = b""
        self._discarding = False
        self.oversize_count = 0
        self.refused_count = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held right now."""
        return self._held

    def _oversize(self, out: list[bytes | _Oversize]) -> None:
        self.oversize_count += 1
        out.append(OVERSIZE)

    def _refused(self, out: list[bytes | _Oversize], head: bytes, values: int) -> None:
        self.refused_count += 1
        out.append(Refused(bytes(head[:REFUSED_HEAD]), values))

    def _complete(self, out: list[bytes | _Oversize], frame: bytes) -> None:
        """A whole frame (not blank, within max_frame): out as itself, or refused."""
        cap = self.max_values
        # A frame no longer than the cap cannot have more structural bytes: not counted.
        if cap is not None and len(frame) > cap:
            values = structural_count(frame)
            if values > cap:
                self._refused(out, frame, values)
                return
        out.append(frame)

    def _hold(self, piece: bytes, out: list[bytes | _Oversize]) -> None:
        cap = self.max_values
        if cap is not None:
            # Counted as it arrives, so no one read costs more than counting that read, and a
            # frame over the cap is dropped at once rather than held to its end.
            if len(self._head) < REFUSED_HEAD:  # however finely the frame's start was cut
                self._head += piece[: REFUSED_HEAD - len(self._head)]
            self._values += structural_count(piece)
            if self._values > cap:
                head, values = self._head, self._values
                self._drop()
                self._refused(out, head, values)
                self._discarding = True
                return
        self._held += len(piece)
        gathered = self._gathered
        if len(piece) < SMALL_PIECE:
            gathered += piece
            if len(gathered) >= GATHER:
                self._pieces.append(bytes(gathered))
                gathered.clear()
            return
        if gathered:
            self._pieces.append(bytes(gathered))
            gathered.clear()
        self._pieces.append(piece)

    def _take(self, last: bytes | memoryview = b"") -> bytes:
        """The held pieces and ``last`` as one frame, and nothing held any more."""
        pieces = self._pieces
        gathered = self._gathered
        frame = b"".join([*pieces, gathered, last]) if pieces else bytes(gathered) + last
        self._drop()
        return frame

    def _drop(self) -> None:
        self._pieces = []
        self._gathered.clear()  # clear() frees the storage, unlike del buf[:]
        self._held = 0
        self._values = 0
        self._head = b""

    def feed(self, data: bytes) -> list[bytes | _Oversize]:
        held = self._held
        if not held and not self._discarding:
            # One whole frame, the usual read of a sequential caller: no loop.
            nl = data.find(b"\n")
            cap = self.max_values
            if (
                0 < nl == len(data) - 1
                and nl <= self.max_frame
                and (cap is None or nl <= cap)
                and not data[:1].isspace()
            ):
                return [data[:nl]]
        out: list[bytes | _Oversize] = []
        limit = self.max_frame
        start = 0
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            start = nl + 1
            self._discarding = False
        elif held:
            # Only the new bytes are scanned: the held ones are known to have no newline.
            nl = data.find(b"\n")
            if nl < 0:
                if held + len(data) > limit:
                    self._drop()
                    self._oversize(out)
                    self._discarding = True
                else:
                    self._hold(data, out)
                return out
            cap = self.max_values
            values = self._values + structural_count(data, 0, nl) if cap is not None else 0
            if held + nl > limit:
                self._drop()
                self._oversize(out)
            elif cap is not None and values > cap:
                head = self._head + data[: REFUSED_HEAD - len(self._head)]
                self._drop()
                self._refused(out, head, values)
            else:
                frame = self._take(memoryview(data)[:nl])
                if not frame.isspace():
                    out.append(frame)
            start = nl + 1
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if nl - start > limit:
                self._oversize(out)
            elif nl > start and not data[start:nl].isspace():
                self._complete(out, data[start:nl])
            start = nl + 1
        rest = len(data) - start
        if rest > limit:
            self._oversize(out)
            self._discarding = True
        elif rest:
            self._hold(data[start:] if start else data, out)
        return out

    def feed_eof(self) -> list[bytes | _Oversize]:
        """The stream ended: a final frame without newline is still a frame."""
        discarding = self._discarding
        rest = self._take()
        out: list[bytes | _Oversize] = []
        if not discarding and rest and not rest.isspace():
            self._complete(out, rest)
        return out
