"""What one plugin's frames may cost the host's loop: a frame over ``max-frame-values`` is
refused undecoded on every path a plugin's bytes reach a decode (answers, progress and log
notifications, worker → host requests), and a plugin flooding frames within the cap is
paused by its decode budget while a bystander's calls go on.

The hostile plugin (``tests/sandbox/hostile/costly_frames``) sends the shape that costs the
host the most per value (lists ten deep); frames are aimed just under and just over the cap
by their structural bytes, which the tests compute the way the host does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
import pytest

from cordon.protocol import (
    FrameSplitter,
    FrameTooLarge,
    WorkerCrashed,
    encode_result,
    error_from_wire,
    error_to_wire,
)
from cordon.protocol._framing import (
    REFUSED_HEAD,
    SPARSE_EVERY,
    SPARSE_FROM,
    Refused,
    structural_count,
)
from cordon.runtime import PluginHandle, Runtime
from cordon.runtime._errors import ConfigError
from cordon.runtime._settings._config import parse_config
from cordon.runtime._settings._config_show import settings_to_dict
from cordon.runtime._supervise._decode_budget import DecodeBudget, refused_envelope
from cordon.runtime._supervise._worker import WorkerProcess
from cordon.runtime._supervise._worker_reader import DEFAULT_MAX_FRAME_VALUES
from tests.conftest import EXAMPLES, base_config

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
COSTLY = HERE / "sandbox" / "hostile" / "costly_frames"

#: The hostile plugin's cap in these tests (the least allowed: small frames, quick tests).
CAP: Final = 10_000
#: Structural bytes of one "nested" unit and its comma.
PER_UNIT: Final = 11
#: More than any envelope's structural bytes (answer 6, progress 12, log 9, storage ~10).
ENVELOPE: Final = 40
UNDER: Final = (CAP - ENVELOPE) // PER_UNIT
OVER: Final = CAP // PER_UNIT + 1
#: Deadline of each test's whole run (worker starts under a loaded CI machine included).
DEADLINE: Final = 60.0
#: Frames of the flood, each within the cap: enough decoding to spend the budget several
#: times over (each costs ~0.1 ms of host CPU here; the burst is 50 ms).
FLOOD_FRAMES: Final = 4000
#: The longest single hold of the loop for one worker (thread CPU time) allowed under the
#: flood: a frame at this cap costs ~1 ms, a read's slice no more; generous for a slow CI
#: machine and a garbage collection landing in it.
HOLD_MAX: Final = 0.2


def _nested(n: int) -> list[Any]:
    unit: Any = []
    for _ in range(9):
        unit = [unit]
    return [unit] * n


def _config(tmp_path: Path, cap: int | None = CAP) -> dict[str, Any]:
    config = base_config(tmp_path)
    plugin: dict[str, Any] = {"grant": ["storage", "log"]}
    if cap is not None:
        plugin["max-frame-values"] = cap
    config["plugins"] = {"costly_frames": plugin}
    return config


def test_the_aimed_frames_straddle_the_cap() -> None:
    # The answer frames the plugin's worker writes, counted as the host counts them.
    assert structural_count(encode_result(1, _nested(UNDER))) <= CAP - PER_UNIT
    assert structural_count(encode_result(1, _nested(OVER))) > CAP
    assert OVER - UNDER <= 5  # "just" under and over


# -- the splitter -----------------------------------------------------------------------------


def _frames(cap: int) -> list[bytes]:
    at_cap = b"[" + b",".join([b"1"] * cap) + b"]"  # exactly cap structural bytes
    assert structural_count(at_cap) == cap
    return [
        b'{"a":1}',
        b'{"jsonrpc":"2.0","id":7,"result":[' + b"[]," * cap + b"[]]}",
        at_cap,
        b'{"b":2}',
    ]


@pytest.mark.parametrize("piece", [1, 7, 4096, 64 * 1024, 10**9])
def test_a_frame_over_max_values_is_refused_however_it_is_cut_and_the_next_still_arrives(
    piece: int,
) -> None:
    cap = 20_000
    frames = _frames(cap)
    stream = b"\n".join(frames) + b"\n"
    splitter = FrameSplitter(max_frame=1 << 24, max_values=cap)
    out: list[Any] = []
    for i in range(0, len(stream), piece):
        out += splitter.feed(stream[i : i + piece])
    out += splitter.feed_eof()
    assert [type(f) for f in out] == [bytes, Refused, bytes, bytes]
    assert out[0] == frames[0] and out[2] == frames[2] and out[3] == frames[3]
    refused = out[1]
    assert refused.values > cap
    assert refused.head == frames[1][: len(refused.head)]
    assert len(refused.head) >= min(piece, REFUSED_HEAD, len(frames[1]))
    assert splitter.refused_count == 1 and splitter.pending == 0


def test_a_refused_frame_is_not_held_to_its_end() -> None:
    splitter = FrameSplitter(max_frame=1 << 26, max_values=10_000)
    assert splitter.feed(b'{"jsonrpc":"2.0","id":1,"result":[') == []
    out = splitter.feed(b"[]," * 20_000)
    assert len(out) == 1 and isinstance(out[0], Refused)
    # The rest of it is skipped as it comes, nothing kept, up to its newline.
    assert splitter.feed(b"[]," * 1_000_000) == [] and splitter.pending == 0
    assert splitter.feed(b"[]]}\n" + b'{"x":1}\n') == [b'{"x":1}']


def test_a_final_frame_without_newline_is_refused_too() -> None:
    splitter = FrameSplitter(max_values=10_000)
    out = splitter.feed(b"[" + b"[]," * 6000)
    assert len(out) == 1 and isinstance(out[0], Refused)  # refused while held
    assert splitter.feed_eof() == []  # and its rest skipped
    splitter = FrameSplitter(max_values=10_000)
    data = b"[" + b"1," * 4000 + b"1]"  # within the cap: the final frame it always was
    assert splitter.feed(data[:100]) + splitter.feed(data[100:]) + splitter.feed_eof() == [data]


def test_a_splitter_without_max_values_passes_any_frame_as_before() -> None:
    frame = b"[" + b"[]," * 100_000 + b"[]]"
    assert FrameSplitter().feed(frame + b"\n") == [frame]


@pytest.mark.parametrize(
    "value",
    [
        [[[]], {}, {"a": [1, {"b": None}]}, "x,y:[z{"],
        {"k" + str(i): [i, "v", True, {"d": [[]]}] for i in range(50)},
        [[[[[[[[[[]]]]]]]]]] * 30,
        "plain text",
        12,
    ],
)
def test_structural_bytes_bound_the_values_from_above(value: Any) -> None:
    def values(v: Any) -> int:  # keys cost as values do
        if isinstance(v, list):
            return 1 + sum(values(x) for x in v)
        if isinstance(v, dict):
            return 1 + sum(1 + values(x) for x in v.values())
        return 1

    assert values(value) <= structural_count(json.dumps(value).encode()) + 1


def _reference_count(data: bytes) -> int:
    return sum(data.count(bytes([b])) for b in b",:[{")


#: Texts where the count switches between looking bytes up one by one (sparse) and deleting
#: them all in one pass (dense): exactly at the sparse limit (one hit per SPARSE_EVERY
#: bytes, all four bytes together) and one past it, the last byte looked for the one that
#: goes over, dense bytes hidden after a long string, spread thin, below the size where
#: looking up starts.
_PAD = b'"' + b"x" * (2 * SPARSE_FROM) + b'"'
_LIMIT = (len(_PAD) + 4 * 16) // SPARSE_EVERY


def _padded(tail: bytes) -> bytes:
    return _PAD + tail + b"x" * (4 * 16 - len(tail))  # every shape the same size


_COUNT_SHAPES = {
    "string": b'{"jsonrpc":"2.0","id":1,"result":' + _PAD + b"}",
    "dense tail": _PAD + b"[[]," * 5000,
    "at the limit": _padded(b"," * (_LIMIT - 3) + b":[{"),
    "last byte one past": _padded(b"," * (_LIMIT - 3) + b":[{{"),
    "first byte one past": _padded(b"," * (_LIMIT + 1)),
    "spread thin, at the limit": (b"x" * (SPARSE_EVERY - 1) + b",") * 200,
    "small": b'{"a":[1,2,{"b":3}]}' * 10,
    "empty": b"",
}


@pytest.mark.parametrize("shape", list(_COUNT_SHAPES))
def test_structural_count_is_exact_whichever_way_it_counts(shape: str) -> None:
    data = _COUNT_SHAPES[shape]
    assert structural_count(data) == _reference_count(data)
    # A range of it counts that range alone (the splitter counts up to a newline in place).
    for start, end in ((0, len(data) // 2), (len(data) // 3, len(data)), (7, len(data) - 7)):
        if 0 <= start <= end:
            assert structural_count(data, start, end) == _reference_count(data[start:end])


@pytest.mark.parametrize("piece", [4096, 8191, 64 * 1024, 10**9])
def test_values_hidden_after_a_long_string_are_counted_and_the_frame_refused(piece: int) -> None:
    cap = 20_000
    head = b'{"jsonrpc":"2.0","id":7,"result":["' + b"x" * (1 << 20) + b'",'
    over = head + b"[]," * cap + b"[]]}"
    under = head + b"[]," * (cap // 4) + b"[]]}"  # two structural bytes a unit
    stream = over + b"\n" + under + b"\n"
    splitter = FrameSplitter(max_frame=1 << 24, max_values=cap)
    out: list[Any] = []
    for i in range(0, len(stream), piece):
        out += splitter.feed(stream[i : i + piece])
    assert [type(f) for f in out] == [Refused, bytes]
    assert out[1] == under and splitter.pending == 0


def test_frame_too_large_of_values_crosses_the_wire_typed_with_its_fields() -> None:
    exc = FrameTooLarge(limit=CAP, size=CAP + 7, kind="values", plugin="p")
    back = error_from_wire(
        msgspec.json.decode(msgspec.json.encode(error_to_wire(exc)), type=type(error_to_wire(exc)))
    )
    assert type(back) is FrameTooLarge
    assert back.fields() == {"limit": CAP, "size": CAP + 7, "kind": "values", "plugin": "p"}
    assert "max-frame-values" in back.message and "'p'" in back.message


@pytest.mark.parametrize(
    ("head", "concerns"),
    [
        (b'{"jsonrpc":"2.0","id":12,"result":[[', ("answer", 12)),
        (b'{"jsonrpc":"2.0","id":0,"error":{"code"', ("answer", 0)),
        (b'{"jsonrpc":"2.0","id":5,"method":"host/storage.set","par', ("request", 5)),
        (b'{"jsonrpc":"2.0","id":"a-1","method":"host/x"', ("request", "a-1")),
        (b'{"jsonrpc":"2.0","method":"$/progress","params":{', None),
        (b'{"jsonrpc":"2.0","id":12', None),  # no envelope to go by
        (b'[{"jsonrpc":"2.0","id":1,"result":', None),  # a batch
        (b' {"jsonrpc":"2.0","id":1,"result":', None),
    ],
)
def test_a_refused_frame_concerns_the_call_or_request_its_envelope_names(
    head: bytes, concerns: Any
) -> None:
    assert refused_envelope(head) == concerns


# -- the budget -------------------------------------------------------------------------------


def test_the_decode_budget_refills_at_its_share_and_says_how_long_to_pause() -> None:
    now = [0.0]
    budget = DecodeBudget(share=0.25, burst=0.05, clock=lambda: now[0])
    assert budget.charge(0.04) == 0.0  # within the burst
    wait = budget.charge(0.03)  # 0.02 over
    assert wait == pytest.approx(0.02 / 0.25)
    now[0] += wait
    assert budget.charge(0.0) == 0.0  # refilled exactly to zero
    now[0] += 100.0
    assert budget.charge(0.05) == 0.0 and budget.left == pytest.approx(0.0)  # burst caps it
    assert budget.paused == 1 and budget.longest == pytest.approx(0.05)


# -- the config key ---------------------------------------------------------------------------


def test_max_frame_values_is_a_validated_plugin_key_shown_by_config_show() -> None:
    cfg = parse_config({"plugins": {"p": {"max-frame-values": 50_000}}})
    assert cfg.for_plugin("p").max_frame_values == 50_000
    assert settings_to_dict(cfg.for_plugin("q"))["max-frame-values"] == DEFAULT_MAX_FRAME_VALUES
    for bad, message in ((5, "at least"), ("many", "expected an integer")):
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"p": {"max-frame-values": bad}}})
        assert "plugins.p.max-frame-values" in str(info.value) and message in str(info.value)


# -- real workers: every path -----------------------------------------------------------------


@pytest.fixture(params=["callback", "generic"])
def reader_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both readers: asyncio's reader callback, and the task any anyio backend gets."""
    if request.param == "generic":
        monkeypatch.setattr(WorkerProcess, "_asyncio_fast_path", False)
    return str(request.param)


def _refused(exc: BaseException, cap: int = CAP) -> None:
    assert isinstance(exc, FrameTooLarge)
    assert (exc.kind, exc.limit, exc.plugin) == ("values", cap, "costly_frames")
    assert exc.size is not None and exc.size > cap


async def test_an_answer_over_the_cap_fails_its_call_typed_and_the_same_worker_serves_on(
    tmp_path: Path, reader_path: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path)) as rt:
            costly = await rt.load(COSTLY)
            assert len(await costly.call("answer", {"n": UNDER})) == UNDER
            assert costly.worker is not None
            pid = costly.worker.pid
            with pytest.raises(FrameTooLarge) as info:
                await costly.call("answer", {"n": OVER})
            _refused(info.value)
            assert await costly.call("answer", {"n": 3}) == _nested(3)
            assert costly.worker.pid == pid and costly.worker._splitter.refused_count == 1


@pytest.mark.parametrize("pad", [256 * 1024, 1 << 20])
async def test_values_hidden_behind_a_long_string_are_counted_in_a_real_answer(
    tmp_path: Path, reader_path: str, pad: int
) -> None:
    # The host looks sparse structural bytes up one by one and counts dense ones in one
    # pass: a long stretch with none, then the costly values, is counted whole either way
    # (the values in the same large read as the stretch's end, or in a read of their own).
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path)) as rt:
            costly = await rt.load(COSTLY)
            got = await costly.call("answer", {"n": UNDER - 1, "pad": pad})
            assert len(got) == UNDER and len(got[0]) == pad
            with pytest.raises(FrameTooLarge) as info:
                await costly.call("answer", {"n": OVER, "pad": pad})
            _refused(info.value)


async def test_the_same_answer_is_delivered_when_the_operator_raises_the_cap(
    tmp_path: Path,
) -> None:
    # The control: nothing but the cap refused it.
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, cap=10 * CAP)) as rt:
            costly = await rt.load(COSTLY)
            assert await costly.call("answer", {"n": OVER}) == _nested(OVER)


async def test_the_default_cap_applies_to_a_plugin_that_sets_none(tmp_path: Path) -> None:
    over = DEFAULT_MAX_FRAME_VALUES // PER_UNIT + 1
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, cap=None)) as rt:
            costly = await rt.load(COSTLY)
            with pytest.raises(FrameTooLarge) as info:
                await costly.call("answer", {"n": over})
            _refused(info.value, DEFAULT_MAX_FRAME_VALUES)
            assert len(await costly.call("answer", {"n": over - 10})) == over - 10


async def test_a_host_request_over_the_cap_is_answered_with_the_typed_error(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path)) as rt:
            costly = await rt.load(COSTLY)
            assert await costly.call("store", {"n": UNDER}) == {"stored": True}
            got = await costly.call("store", {"n": OVER})
            assert got["error"] == "FrameTooLarge"
            assert (got["kind"], got["limit"], got["plugin"]) == ("values", CAP, "costly_frames")
            assert await costly.call("store", {"n": 1}) == {"stored": True}


@pytest.mark.parametrize("tool", ["progress", "log"])
async def test_a_notification_over_the_cap_is_a_protocol_violation_and_others_serve_on(
    tmp_path: Path, tool: str
) -> None:
    progress: list[Any] = []
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path)) as rt:
            costly = await rt.load(COSTLY)
            hello = await rt.load(EXAMPLES / "hello")
            assert await costly.call(tool, {"n": UNDER}, on_progress=progress.append) == "sent"
            if tool == "progress":  # within the cap it was decoded and delivered
                assert [p.progress for p in progress] == [1]
            with pytest.raises(WorkerCrashed) as info:
                await costly.call(tool, {"n": OVER})
            assert info.value.reason == "protocol-violation"
            assert "max-frame-values" in (info.value.detail or "")
            assert await hello.call("greet", {"name": "b"}) == "Hello b"
            assert await costly.call("answer", {"n": 1}) == _nested(1)  # a fresh worker


async def test_a_flood_within_the_cap_pauses_only_its_plugin_while_a_bystander_is_served(
    tmp_path: Path, reader_path: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path)) as rt:
            costly = await rt.load(COSTLY)
            hello = await rt.load(EXAMPLES / "hello")
            await hello.call("greet", {"name": "warm"})
            await costly.call("answer", {"n": 1})
            # The default share lets a worker slowed by a loaded machine flood no faster
            # than its budget refills (then it is never paused, rightly): the hostile one
            # gets a share small enough that its flood outruns it on a loaded machine too.
            _budget(costly).share = FLOOD_SHARE
            done = anyio.Event()
            served = 0

            async def bystander() -> None:
                nonlocal served
                while not done.is_set():
                    assert await hello.call("greet", {"name": "b"}) == "Hello b"
                    served += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(bystander)
                written = await costly.call(
                    "flood", {"frames": FLOOD_FRAMES, "n": UNDER}, timeout=DEADLINE
                )
                done.set()
            one = len(b'{"jsonrpc":"2.0","id":1000000000000,"result":}\n') + len(
                json.dumps(_nested(UNDER), separators=(",", ":"))
            )
            assert written == FLOOD_FRAMES * one  # every byte was read: paused, not dropped
            assert costly.worker is not None
            assert (costly.worker.loop_path == "generic") == (reader_path == "generic")
            hostile, calm = _budget(costly), _budget(hello)
            assert hostile.paused > 0 and calm.paused == 0
            # What an operator sees: the flooding plugin's pauses, none for the other.
            shown = rt.stats()
            assert shown[costly.id].decode_pauses == hostile.paused
            assert shown["hello"].decode_pauses == 0
            assert shown[costly.id].decode_cpu_seconds >= hostile.burst
            assert 0 < shown[costly.id].decode_longest_ms < HOLD_MAX * 1000
            assert hostile.charged > hostile.burst  # it was charged for the flood
            assert hostile.longest < HOLD_MAX
            assert served > 0
            assert await costly.call("answer", {"n": 2}) == _nested(2)


#: The flood test's budget for its hostile plugin, in CPUs: a fifth of the default, so a
#: worker slowed by a loaded machine still floods faster than it refills (its flood costs the
#: host 0.3-0.5 s of decoding: 6-10 s at this share, inside DEADLINE).
FLOOD_SHARE = 0.05


def _budget(handle: PluginHandle) -> DecodeBudget:
    assert handle.worker is not None
    return handle.worker.decode_budget
