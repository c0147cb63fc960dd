"""Large frames: reassembly that costs O(size) however the frame is cut, large results
through a real worker intact in both directions, and a large result decoded in its caller's
task in pieces rather than in one hold of the host's loop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from cordon.protocol import OVERSIZE, FrameSplitter, WorkerCrashed, encode_request, encode_result
from cordon.protocol._messages import decode_success
from cordon.runtime import Runtime
from cordon.runtime._supervise._worker_reader import (
    DECODE_PIECE,
    LARGE_FRAME,
    LARGE_READ_SIZE,
    READ_SIZE,
    decode_answer,
    decode_large,
    large_answer_id,
)
from cordon.worker._server import decode_host_answer
from tests.conftest import TEST_PLUGINS, base_config
from tests.test_perf_paths import FRAMES

HELLO = TEST_PLUGINS.parent.parent / "examples" / "plugins" / "hello"
LOOPPATH = TEST_PLUGINS / "looppath"

pytestmark = pytest.mark.anyio


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


# -- decoding: once, and a large answer in its caller's task, in pieces --------------------


@pytest.mark.parametrize("frame", FRAMES)
def test_the_one_pass_answer_decoder_accepts_exactly_what_decode_success_does(
    frame: bytes,
) -> None:
    ok = decode_success(frame)
    for ans in (decode_answer(frame), decode_host_answer(frame)):  # host's, worker's
        assert (ok is None) == (ans is None)
        if ok is not None and ans is not None:
            assert ans.id == ok.id
            assert ans.result == msgspec.json.decode(ok.result)


#: (body, cut into pieces?): objects of a few dozen bytes are; few long strings and tiny
#: members (where splitting costs what decoding costs) are decoded whole.
BODIES: list[tuple[Any, bool]] = [
    ([{"i": i, "s": "é" * (i % 5), "l": [i, None, 1.5]} for i in range(30_000)], True),
    ({f"k{i}": {"v": i, "w": "ww" * (i % 9), "x": [i]} for i in range(30_000)}, True),
    ([[list(range(1000))] * 40] * 8, False),
    ("x" * 300_000, False),
    ({"a": [{"b": {"c": ["z" * 100_000, [1] * 50_000]}}]}, False),
    ([{"doc": "lorem ipsum " * 500} for _ in range(200)], False),
]


@pytest.mark.parametrize(
    ("body", "cut"), BODIES, ids=["objects", "dict", "nested", "string", "deep", "docs"]
)
async def test_a_large_answer_decodes_in_pieces_to_exactly_the_whole_decode(
    body: Any, cut: bool
) -> None:
    frame = encode_result(7, body).rstrip(b"\n")
    assert len(frame) > LARGE_FRAME and large_answer_id(frame) == 7
    checkpoints = 0

    async def checkpoint() -> None:
        nonlocal checkpoints
        checkpoints += 1

    assert await decode_large(frame, checkpoint) == msgspec.json.decode(frame)["result"]
    if cut:  # the loop got a turn about every piece
        assert checkpoints >= len(frame) // (2 * DECODE_PIECE)
    else:
        assert checkpoints <= 2


@pytest.mark.parametrize(
    "frame",
    [
        b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * 70_000 + b'","error":{}}',
        b'{"jsonrpc":"2.0","id":1,"result":[' + b"1," * 40_000 + b"}",
        b'{"jsonrpc":"2.0","id":1,"result":' + b"[1]" * 30_000 + b"}",
    ],
)
async def test_a_large_frame_with_a_valid_envelope_and_a_bad_body_fails_to_decode(
    frame: bytes,
) -> None:
    assert large_answer_id(frame) == 1
    with pytest.raises(msgspec.DecodeError):
        await decode_large(frame, anyio.lowlevel.checkpoint)


@pytest.mark.parametrize("size", [70_000, 3_000_000])
async def test_large_arguments_and_results_cross_a_real_worker_intact(
    tmp_path: Path, size: int
) -> None:
    config = base_config(tmp_path)
    # 75k objects of four members are ~750k JSON values: past the default max-frame-values
    # (what one frame may hold the host's loop), so the operator raises it for this plugin.
    config["plugins"] = {"looppath": {"max-frame-values": 2_000_000}}
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hello = await rt.load(HELLO)
            value = {"text": "é€" * (size // 5), "list": list(range(size // 100))}
            assert await hello.call("echo", {"value": value}) == value
            plugin = await rt.load(LOOPPATH)
            objs = await plugin.call("objects", {"n": size // 40})
            assert len(objs) == size // 40 and objs[3] == {
                "i": 3,
                "s": "yy",
                "f": 1.5,
                "l": [3, None, True],
            }


@pytest.mark.parametrize("shortcuts", ["1", "0"])
async def test_large_and_small_answers_in_flight_together_each_arrive_whole_and_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shortcuts: str
) -> None:
    # Answers finished in one loop pass share the worker's output: a large one with nothing
    # queued before it is written straight from itself, the others are queued behind what
    # is, a sync tool's arrive from its thread.
    monkeypatch.setenv("CORDON_LOOP_SHORTCUTS", shortcuts)
    sizes = [10, 70_000, 1_100_000, 5, 2_000_000, 300, 1 << 20, 64 * 1024 - 40]
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path)) as rt:
            hello = await rt.load(HELLO)
            for _ in range(3):
                got: dict[int, Any] = {}

                async def echo(i: int, size: int, got: dict[int, Any] = got) -> None:
                    value = chr(ord("a") + i) * size
                    if i % 3 == 2:  # a sync tool: its answer comes from its thread
                        got[i] = await hello.call("shout", {"text": value}) == value.upper()
                    else:
                        got[i] = await hello.call("echo", {"value": value}) == value

                async with anyio.create_task_group() as tg:
                    for i, size in enumerate(sizes):
                        tg.start_soon(echo, i, size)
                assert got == dict.fromkeys(range(len(sizes)), True)


@pytest.mark.parametrize("shortcuts", ["1", "0"])
async def test_answers_at_and_around_each_read_size_arrive_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shortcuts: str
) -> None:
    # Frames just under, at and just over the host's and the worker's read sizes (the
    # envelope's size moves with the id's digits: a run of sizes covers the exact one), so a
    # frame ends exactly at a read's end, or one byte (the newline) spills into the next.
    monkeypatch.setenv("CORDON_LOOP_SHORTCUTS", shortcuts)
    envelope = len(encode_result(10, ""))
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path)) as rt:
            hello = await rt.load(HELLO)
            for edge in (READ_SIZE, 2 * READ_SIZE, LARGE_READ_SIZE, LARGE_READ_SIZE + READ_SIZE):
                for size in range(edge - envelope - 4, edge - envelope + 4):
                    value = "q" * size
                    assert await hello.call("echo", {"value": value}) == value


async def test_a_forged_large_answer_kills_its_worker_and_fails_only_its_call(rt: Runtime) -> None:
    with anyio.fail_after(60):
        plugin = await rt.load(LOOPPATH)
        hello = await rt.load(HELLO)
        with pytest.raises(WorkerCrashed) as info:
            await plugin.call("forge_large", {"size": 200_000})
        assert info.value.reason == "protocol-violation"
        # The next call gets a fresh worker; another plugin never noticed.
        assert await plugin.call("loop_path") in ("shortcuts", "public")
        assert await hello.call("echo", {"value": 1}) == 1


def test_a_large_tool_call_is_decoded_in_one_pass_exactly_as_the_usual_way() -> None:
    import importlib
    import sys

    sys.path.insert(0, str(HELLO))
    try:
        plugin = importlib.import_module("hello_plugin").plugin
    finally:
        sys.path.remove(str(HELLO))
        sys.modules.pop("hello_plugin", None)
    from cordon.worker._large import ONE_PASS_FROM, LargeCalls
    from cordon.worker._server import decode_invoke

    calls = LargeCalls(plugin)
    big = "é" * ONE_PASS_FROM
    good = encode_request(
        3, "invoke", {"name": "echo", "kind": "tool", "arguments": {"value": big}}
    )
    usual = decode_invoke(good.rstrip(b"\n"))
    assert usual is not None
    handler = plugin.handlers[("tool", "echo")]
    one = calls.decode(good.rstrip(b"\n"))
    assert one == (3, handler, handler.decode_arguments(usual.params.arguments))
    # Whatever the one pass does not take exactly goes the usual way (which words errors).
    for other in (
        {"name": "echo", "kind": "tool", "arguments": {"value": big, "extra": 1}},
        {"name": "echo", "kind": "tool", "arguments": {"value": big}, "x": 1},
        {"name": "nope", "kind": "tool", "arguments": {"value": big}},
        {"name": "echo", "kind": "command", "arguments": {"value": big}},
        {"name": "echo", "kind": "tool", "arguments": [big]},
    ):
        assert calls.decode(encode_request(3, "invoke", other).rstrip(b"\n")) is None
    forged = good.rstrip(b"\n")[:-1] + b',"more":1}'
    assert calls.decode(forged) is None
