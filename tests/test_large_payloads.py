"""Large frames: reassembly that costs O(size) however the frame is cut, large results
through a real worker intact in both directions, and a large result decoded in its caller's
task in pieces rather than in one hold of the host's loop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from cordon.protocol import OVERSIZE, FrameSplitter


class _Chunk(bytes):
    """A read as the splitter is handed it, counting the bytes each of its scans covers."""

    scanned = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        lo = 0 if start is None else start
        hi = len(self) if end is None else end
        _Chunk.scanned += max(0, hi - lo)
        return super().find(sub, lo, hi)


@contextmanager
def _counting_work() -> Iterator[dict[str, int]]:
    """Count, while active, the bytes every scan of a read covers and the length of every
    bytes-like object a C method is called on (a rescan or re-join of held bytes), so an
    implementation that goes back over what it holds shows up as work, not as time."""
    work = {"calls": 0}
    _Chunk.scanned = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, bytes | bytearray | memoryview):
                work["calls"] += len(owner)

    sys.setprofile(profile)
    try:
        yield work
    finally:
        sys.setprofile(None)
        work["scanned"] = _Chunk.scanned


def _work_for(size: int, piece: int) -> tuple[int, list[Any]]:
    frame = b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * (size - 37) + b'"}\n'
    chunks = [_Chunk(frame[i : i + piece]) for i in range(0, len(frame), piece)]
    splitter = FrameSplitter(max_frame=64 * 1024 * 1024)
    out: list[Any] = []
    with _counting_work() as work:
        for chunk in chunks:
            out += splitter.feed(chunk)
    assert out == [frame[:-1]]
    assert splitter.pending == 0
    return work["scanned"] + work["calls"], out


@pytest.mark.parametrize("piece", [1, 7, 4096, 64 * 1024])
def test_a_frame_in_many_pieces_costs_work_linear_in_its_size(piece: int) -> None:
    size = max(64 * 1024, 16 * piece)  # many pieces at every piece size
    small, _ = _work_for(size, piece)
    large, _ = _work_for(4 * size, piece)
    # Four times the bytes, about four times the work (a rescan from the start on every
    # piece would be ~16x at any piece size, and millions of times more at one byte).
    assert large <= 4.5 * small
    # And a few passes over each byte at most (a scan counts here twice: the read's own
    # count and the C call it makes).
    assert large <= 5 * 4 * size


def test_held_bytes_of_a_dribbled_frame_are_gathered_not_kept_one_object_each() -> None:
    splitter = FrameSplitter(max_frame=1024 * 1024)
    for _ in range(512 * 1024):
        splitter.feed(b"x")
    assert splitter.pending == 512 * 1024
    # Dribbled bytes are gathered into pieces of tens of KiB, not 512k one-byte objects.
    assert len(splitter._pieces) <= 16
    assert splitter.feed(b"y\n") == [b"x" * 512 * 1024 + b"y"]


def test_a_frame_cut_anywhere_splits_the_same_as_whole() -> None:
    stream = b'{"a":1}\n  \n{"b":"' + b"z" * 70_000 + b'"}\n{"c":3}\n' + b"w" * 5000
    whole = FrameSplitter(max_frame=1 << 20)
    expected = whole.feed(stream) + whole.feed_eof()
    for piece in (1, 2, 3, 4095, 4096, 4097, 65536):
        cut = FrameSplitter(max_frame=1 << 20)
        got: list[Any] = []
        for i in range(0, len(stream), piece):
            got += cut.feed(stream[i : i + piece])
        assert got + cut.feed_eof() == expected


def test_an_oversize_frame_in_pieces_is_dropped_and_the_next_frame_still_arrives() -> None:
    splitter = FrameSplitter(max_frame=10_000)
    got: list[Any] = []
    for _ in range(100):
        got += splitter.feed(b"q" * 999)
    assert splitter.pending == 0  # nothing held past the limit
    got += splitter.feed(b"tail\n{}\n")
    assert got == [OVERSIZE, b"{}"]
