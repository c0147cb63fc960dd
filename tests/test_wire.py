"""Garbage and oversize frames in both directions, and a peer that speaks another version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.protocol import (
    PROTOCOL_VERSION,
    IncompatibleProtocol,
    InitializeParams,
    WorkerCrashed,
)
from cordon.runtime._supervise._worker import WorkerProcess

pytestmark = pytest.mark.anyio


class RawWorker:
    """A real ``python -I -m cordon.worker`` driven by hand, frame by frame."""

    def __init__(self, plugin_dir: Path, scratch: Path, max_frame: int = 4096) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CORDON_HOST_PID": str(os.getpid())}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "cordon.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=scratch,
            start_new_session=True,
        )
        hello = self.read()
        assert hello["method"] == "$/hello"
        assert PROTOCOL_VERSION in hello["params"]["protocols"]
        init = InitializeParams(
            protocol=PROTOCOL_VERSION,
            plugin_id="probe",
            plugin_dir=str(plugin_dir),
            entry="probe_plugin:plugin",
            scratch_dir=str(scratch),
            max_frame=max_frame,
        )
        import msgspec

        self.write(
            b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":'
            + msgspec.json.encode(init)
            + b"}\n"
        )
        # The launch reports its layers before it imports the plugin, then answers.
        report = self.read()
        assert report["method"] == "$/lockedDown" and "fds" in report["params"]["sandbox"]
        assert "contributions" in self.read()["result"]

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def close(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        return code


@pytest.fixture
def raw_worker(probe_dir: Path, tmp_path: Path) -> Any:
    w = RawWorker(probe_dir, tmp_path)
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        for f in (w.proc.stdin, w.proc.stdout):
            if f is not None and not f.closed:
                f.close()


def _call(ident: Any, tool: str, args: Any) -> bytes:
    msg = {
        "jsonrpc": "2.0",
        "id": ident,
        "method": "invoke",
        "params": {"name": tool, "arguments": args},
    }
    return json.dumps(msg).encode() + b"\n"


def test_the_worker_answers_garbage_with_a_parse_error_and_keeps_serving(
    raw_worker: RawWorker,
) -> None:
    raw_worker.write(b"this is not json\n")
    err = raw_worker.read()
    assert (err["id"], err["error"]["code"]) == (None, -32700)
    raw_worker.write(_call(1, "add", {"a": 1, "b": 2}))
    assert raw_worker.read() == {"jsonrpc": "2.0", "id": 1, "result": 3}
    assert raw_worker.close() == 0


def test_the_worker_refuses_an_oversize_frame_without_buffering_it(raw_worker: RawWorker) -> None:
    raw_worker.write(
        b'{"jsonrpc":"2.0","id":9,"method":"x","params":["' + b"a" * 100_000 + b'"]}\n'
    )
    err = raw_worker.read()
    assert err["error"]["code"] == -32008
    assert err["error"]["data"]["limit"] == 4096
    raw_worker.write(_call(2, "add", [5, 5]))
    assert raw_worker.read()["result"] == 10
    assert raw_worker.close() == 0


def test_the_worker_answers_a_batch_with_one_array_and_skips_notifications(
    raw_worker: RawWorker,
) -> None:
    batch = (
        b"[" + _call(1, "add", [1, 1]).strip() + b","
        b'{"jsonrpc":"2.0","method":"$/unknown-notification"},'
        b'{"foo":"boo"},' + _call("x", "add", [2, 2]).strip() + b","
        b'{"jsonrpc":"2.0","id":3,"method":"no.such.method"}]\n'
    )
    raw_worker.write(batch)
    answers = raw_worker.read()
    assert isinstance(answers, list)
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["result"] == 2
    assert by_id["x"]["result"] == 4
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600
    assert len(answers) == 4


def test_the_worker_sends_nothing_for_a_batch_of_notifications(raw_worker: RawWorker) -> None:
    raw_worker.write(b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"}]\n')
    raw_worker.write(_call(7, "add", [1, 2]))
    assert raw_worker.read() == {"jsonrpc": "2.0", "id": 7, "result": 3}


def test_the_worker_rejects_an_unknown_tool_with_method_not_found(raw_worker: RawWorker) -> None:
    raw_worker.write(_call(4, "missing", {}))
    assert raw_worker.read()["error"]["code"] == -32601


def _fake_worker(script: str, tmp_path: Path) -> WorkerProcess:
    params = InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id="fake",
        plugin_dir=str(tmp_path),
        entry="x:plugin",
        scratch_dir=str(tmp_path),
        max_frame=1024,
    )
    return WorkerProcess(
        plugin_id="fake",
        params=params,
        argv=[sys.executable, "-c", textwrap.dedent(script)],
    )


async def test_a_worker_speaking_only_another_version_is_incompatible(tmp_path: Path) -> None:
    worker = _fake_worker(
        """
        import sys, time
        sys.stdout.write('{"jsonrpc":"2.0","method":"$/hello","params":'
                         '{"protocols":[99],"pid":1,"cordon":"9.0"}}\\n')
        sys.stdout.flush()
        time.sleep(60)
        """,
        tmp_path,
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with pytest.raises(IncompatibleProtocol) as info:
                await tg.start(worker.run)
    assert info.value.theirs == [99]
    assert worker.exit is not None


async def test_a_worker_that_never_says_hello_is_reported_not_awaited_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cordon.runtime._supervise import _worker_life

    monkeypatch.setattr(_worker_life, "HELLO_TIMEOUT", 0.5)
    worker = _fake_worker("import time; time.sleep(60)", tmp_path)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with pytest.raises(WorkerCrashed) as info:
                await tg.start(worker.run)
    assert "no hello" in (info.value.detail or "")


async def test_an_oversize_frame_from_the_worker_is_a_protocol_violation(tmp_path: Path) -> None:
    worker = _fake_worker(
        """
        import sys, time
        sys.stdout.write('{"jsonrpc":"2.0","method":"$/hello","params":'
                         '{"protocols":[1],"pid":1,"cordon":"0.1"}}\\n')
        sys.stdout.write("x" * 100000)
        sys.stdout.flush()
        time.sleep(60)
        """,
        tmp_path,
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with pytest.raises(WorkerCrashed) as info:
                await tg.start(worker.run)
    assert info.value.reason in ("protocol-violation", "handshake")
    assert worker.exit is not None
    assert worker.exit.reason == "protocol-violation"
