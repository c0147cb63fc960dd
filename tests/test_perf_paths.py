"""The hot paths' shortcuts against the general code they stand in for.

* ``decode_success`` / ``decode_request`` (one narrow struct) must agree with ``decode_frame``
  whenever they accept a frame, and decline everything else.
* ``WorkerProcess`` on asyncio resolves callers from a reader callback with bare futures;
  the generic anyio code (what trio would run) is exercised here by turning the shortcut
  off and running the call, crash and cancellation tests through it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from cordon.protocol import FrameSplitter, InvokeParams, Request, Response, decode_frame
from cordon.protocol._messages import decode_request, decode_success
from cordon.runtime import Runtime
from cordon.runtime._supervise._worker import WorkerProcess
from cordon.worker._server import decode_invoke
from tests.conftest import TEST_PLUGINS, base_config
from tests.test_calls import (
    test_a_plugin_exception_arrives_typed_and_the_worker_lives_on as _t_plugin_exception,
)
from tests.test_calls import (
    test_an_awaiting_call_does_not_block_other_calls as _t_awaiting,
)
from tests.test_calls import (
    test_many_concurrent_calls_all_get_their_own_answer as _t_many,
)
from tests.test_calls import (
    test_progress_notifications_reach_the_caller as _t_progress,
)
from tests.test_cancellation import (
    test_a_cancelled_caller_cancels_the_plugin_task as _t_cancelled_caller,
)
from tests.test_cancellation import (
    test_a_cooperative_call_that_times_out_leaves_the_worker_running as _t_timeout,
)
from tests.test_crashes import (
    test_a_call_that_ignores_cancellation_times_out_and_the_worker_is_replaced as _t_ignores,
)
from tests.test_crashes import (
    test_a_dying_worker_fails_every_in_flight_call_with_the_reason as _t_dying,
)
from tests.test_crashes import test_exit_reports_the_tail_of_stderr as _t_stderr_tail

pytestmark = pytest.mark.anyio

FRAMES = [
    b'{"jsonrpc":"2.0","id":1,"result":42}',
    b'  {"jsonrpc":"2.0","id":7,"result":{"a":[1,2]}}',
    b'{"jsonrpc":"2.0","id":1,"result":null}',
    b'{"id":3,"result":"x","jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","id":"s","result":1}',
    b'{"jsonrpc":"2.0","id":null,"result":1}',
    b'{"jsonrpc":"2.0","result":1}',
    b'{"jsonrpc":"1.0","id":1,"result":1}',
    b'{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}',
    b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}}',
    b'{"jsonrpc":"2.0","id":1,"result":1,"method":"x"}',
    b'{"jsonrpc":"2.0","id":1,"result":1,"params":{}}',
    b'{"jsonrpc":"2.0","id":1,"result":1}garbage',
    b'{"jsonrpc":"2.0","id":1.5,"result":1}',
    b'{"jsonrpc":"2.0","id":true,"result":1}',
    b'{"jsonrpc":"2.0","id":1,"method":"invoke","params":{"name":"echo"}}',
    b'{"jsonrpc":"2.0","id":"a","method":"m","params":[1,2]}',
    b'{"jsonrpc":"2.0","id":3,"method":"invoke","params":{"name":"e","kind":"command",'
    b'"arguments":{"v":[1]},"x":1}}',
    b'{"jsonrpc":"2.0","id":3,"method":"invoke","params":{"kind":"tool"}}',
    b'{"jsonrpc":"2.0","id":3,"method":"invoke","params":{"name":"e","kind":"nope"}}',
    b'{"jsonrpc":"2.0","id":3,"method":"invoke","params":[1]}',
    b'{"jsonrpc":"2.0","id":3,"method":"invoke"}',
    b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":2,"method":"m","params":3}',
    b'{"jsonrpc":"2.0","id":2,"method":"m","params":"s"}',
    b'{"jsonrpc":"2.0","id":2,"method":"m","params":null}',
    b'{"jsonrpc":"2.0","id":null,"method":"m"}',
    b'{"jsonrpc":"2.0","method":"$/cancel","params":{"id":1}}',
    b'{"jsonrpc":"2.0","id":2,"method":"m","result":1}',
    b'{"jsonrpc":"2.0","id":2,"method":5}',
    b'{"jsonrpc":"2.0","id":2,"method":"m","extra":1}',
    b'[{"jsonrpc":"2.0","id":1,"result":1}]',
    b"[]",
    b"{",
    b"not json",
    b"42",
]


@pytest.mark.parametrize("frame", FRAMES)
def test_the_narrow_decoders_agree_with_decode_frame_or_decline(frame: bytes) -> None:
    # Declining is always safe (the caller falls back to decode_frame); accepting is not.
    full = decode_frame(frame)
    ok = decode_success(frame)
    if ok is not None:
        assert isinstance(full, Response)
        assert (full.id, bytes(full.result), full.error) == (ok.id, bytes(ok.result), None)
    call = decode_invoke(frame)
    if call is not None:
        assert isinstance(full, Request)
        assert (full.id, full.method) == (call.id, "invoke")
        params = msgspec.json.decode(full.params, type=InvokeParams)
        assert (params.name, params.kind, bytes(params.arguments)) == (
            call.params.name,
            call.params.kind,
            bytes(call.params.arguments),
        )
    req = decode_request(frame)
    if req is not None:
        assert isinstance(full, Request)
        assert (full.id, full.method, bytes(full.params)) == (
            req.id,
            req.method,
            bytes(req.params),
        )


def test_the_narrow_decoders_take_the_frames_the_hot_paths_see() -> None:
    assert all(decode_success(f) is not None for f in FRAMES[:4])
    assert all(decode_request(f) is not None for f in FRAMES[15:18])
    assert decode_invoke(FRAMES[15]) is not None
    assert decode_invoke(FRAMES[17]) is not None


async def test_calls_on_asyncio_take_the_reader_callback_path(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert await hello.call("echo", {"value": 1}) == 1
        worker = hello.worker
        assert worker is not None
        assert worker._loop is not None
        assert worker._reading


async def test_a_caller_resumed_from_its_answers_read_is_still_its_own_task(
    rt: Runtime, hello_dir: Path
) -> None:
    # The host resumes a sequential caller from inside the read that brought its answer;
    # the caller must go on as itself: the same task, under its own cancel scopes.
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        me = asyncio.current_task()
        for i in range(50):
            assert await hello.call("echo", {"value": i}) == i
            assert asyncio.current_task() is me
        with anyio.CancelScope() as scope:
            assert await hello.call("echo", {"value": "x"}) == "x"
            scope.cancel()
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert await hello.call("echo", {"value": 2}) == 2


class _Inbox:
    def __init__(self) -> None:
        self.topics: list[str] = []
        self.got = anyio.Event()

    async def __call__(self, topic: str, payload: Any, source: str) -> None:
        self.topics.append(topic)
        self.got.set()


@pytest.mark.parametrize(
    ("arm", "sig", "topic"),
    [
        ("arm_signal", signal.SIGUSR1, "waker.signal"),
        ("arm_thread", signal.SIGUSR2, "waker.thread"),
    ],
)
async def test_an_idle_worker_still_runs_what_a_signal_or_a_thread_hands_its_loop(
    tmp_path: Path, arm: str, sig: int, topic: str
) -> None:
    # Between a sequential caller's requests the worker waits outside its event loop; an
    # asyncio signal handler, or a plugin thread's call_soon_threadsafe, must still run
    # then, with no request coming to wake it.
    config: dict[str, Any] = base_config(tmp_path)
    config["plugins"] = {"waker": {"grant": ["events:emit:waker.*"]}}
    async with Runtime(config) as rt:
        with anyio.fail_after(30):
            waker = await rt.load(TEST_PLUGINS / "waker")
            inbox = _Inbox()
            assert rt.events is not None
            rt.events.subscribe("test", "waker.*", inbox)
            assert await waker.call(arm) is True
            assert await waker.call("echo", {"value": 1}) == 1  # idle from here on
            assert waker.worker is not None and waker.worker.pid is not None
            os.kill(waker.worker.pid, sig)
            await inbox.got.wait()
            assert inbox.topics == [topic]
            assert await waker.call("echo", {"value": 2}) == 2


READS = [
    b'{"a":1}\n',
    b"x\n",
    b"\n",
    b"  \n",
    b' {"a":1}\n',
    b"\t\n",
    b'{"a":1}\n{"b":2}\n',
    b'{"a":1}',
    b'{"a":1}\n{"b"',
    b"0123456789\n",
    b"01234567890123456789\n",
    b"\n\n",
]


@pytest.mark.parametrize("data", READS)
def test_a_read_splits_the_same_whole_or_in_two_pieces(data: bytes) -> None:
    # A fresh splitter takes a one-frame read without its loop; fed in two pieces, the
    # same bytes go the general way. Both must give the same frames and leftovers.
    whole, pieces = FrameSplitter(16), FrameSplitter(16)
    got_whole = whole.feed(data) + whole.feed_eof()
    got_pieces = pieces.feed(data[:1]) + pieces.feed(data[1:]) + pieces.feed_eof()
    assert got_whole == got_pieces


@pytest.fixture(autouse=True)
def generic_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``test_generic_*``: the shortcut off. (By name: the re-run tests are the originals'
    function objects, so a mark on them would mark the originals too.)"""
    if request.node.name.startswith("test_generic_"):
        monkeypatch.setattr(WorkerProcess, "_asyncio_fast_path", False)


async def test_generic_is_really_the_generic_path(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert await hello.call("echo", {"value": [1, "x"]}) == [1, "x"]
        assert hello.worker is not None
        assert hello.worker._loop is None


# The call, crash and cancellation tests again, on the backend-neutral code.
test_generic_plugin_exception = _t_plugin_exception
test_generic_awaiting = _t_awaiting
test_generic_many = _t_many
test_generic_progress = _t_progress
test_generic_cancelled_caller = _t_cancelled_caller
test_generic_timeout = _t_timeout
test_generic_ignores_cancellation = _t_ignores
test_generic_dying = _t_dying
test_generic_stderr_tail = _t_stderr_tail
