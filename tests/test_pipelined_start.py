"""A worker's start without serial round trips: the host sends ``initialize`` (and ``activate``
behind it) as soon as it has started its own worker command, and moves the worker into its
cgroups while it locks down; the worker imports nothing of the plugin before ``$/placed``.

Real workers throughout (forked, or spawned in CI's second pass). The cgroup move is held by
the test (``WorkerCgroup.move_in`` waits for an event), so the gate is shown to hold when the
move is slower than the lock-down, and a control run without the gate shows the plugin would
then run outside its group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from cordon.protocol import (
    ACTIVATE,
    INITIALIZE,
    INVOKE,
    LOCKED_DOWN,
    PROTOCOL_VERSION,
    InitializeParams,
    Notification,
    PluginError,
    PluginUnavailable,
    WorkerCrashed,
)
from cordon.protocol._methods import PLACED
from cordon.runtime import Runtime
from cordon.runtime._supervise._cgroup import CgroupSupport, WorkerCgroup
from cordon.runtime._supervise._worker import WorkerProcess
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

WITNESS = TEST_PLUGINS / "cgroup_witness"
ACTIVATED = TEST_PLUGINS / "activated"
PROBE = TEST_PLUGINS / "probe"
HELLO = EXAMPLES / "hello"
#: Every wait in these tests: a start is milliseconds, a loaded CI box far slower.
DEADLINE = 30


def _support() -> CgroupSupport:
    found = CgroupSupport.detect()
    found.close()
    return found


_HERE = _support()
needs_cgroups = pytest.mark.skipif(
    not _HERE.available, reason=f"this host may not create cgroups: {_HERE.why}"
)


class HeldMove:
    """``WorkerCgroup.move_in`` made to wait for :attr:`release` (set by the test, or by a
    hook below); :attr:`entered` is set once a move waits."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()


@pytest.fixture
def held_move(monkeypatch: pytest.MonkeyPatch) -> HeldMove:
    held = HeldMove()
    move_in = WorkerCgroup.move_in

    async def late_move_in(self: WorkerCgroup, pid: int) -> None:
        held.entered.set()
        await held.release.wait()
        await move_in(self, pid)

    monkeypatch.setattr(WorkerCgroup, "move_in", late_move_in)
    return held


def _on_host(
    monkeypatch: pytest.MonkeyPatch, name: str, after: Callable[[WorkerProcess], None]
) -> None:
    """Call ``after(worker)`` once the host's own ``WorkerProcess.<name>`` has run."""
    original = getattr(WorkerProcess, name)

    async def hooked(self: WorkerProcess, *args: Any) -> Any:
        result = await original(self, *args)
        after(self)
        return result

    monkeypatch.setattr(WorkerProcess, name, hooked)


def _groups_seen(seen: str, rt: Runtime, worker: WorkerProcess | None) -> dict[str, bool]:
    """Per controller: does ``/proc/self/cgroup`` as read by the plugin name the worker's
    own group?"""
    groups = rt._cgroups[worker]  # type: ignore[index]
    found = {}
    for controller, directory in groups.dirs.items():
        relative = "/" + str(directory.relative_to(rt.cgroups.parents[controller].parent))
        found[controller] = any(line.endswith(relative) for line in seen.splitlines())
    return found


@needs_cgroups
async def test_the_plugins_first_line_runs_in_its_groups_when_the_move_ends_after_the_lock_down(
    tmp_path: Path, held_move: HeldMove, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The move is released only once the host holds the worker's lock-down report: the worker
    # is done locking down and would import the plugin now, were it not waiting for $/placed.
    channel_notification = WorkerProcess._on_notification

    def on_notification(self: WorkerProcess, msg: Notification) -> None:
        channel_notification(self, msg)
        if msg.method == LOCKED_DOWN:
            held_move.release.set()

    monkeypatch.setattr(WorkerProcess, "_on_notification", on_notification)
    # Sandbox off only so that plugin code may read /proc/self/cgroup.
    config = base_config(tmp_path, sandbox="off", memory="96 MiB", processes=4)
    with anyio.fail_after(DEADLINE):
        async with Runtime(config) as rt:
            witness = await rt.load(WITNESS)
            seen = await witness.call("at_import")
            assert held_move.release.is_set()
            assert _groups_seen(seen, rt, witness.worker) == {"memory": True, "pids": True}
            # Its groups hold the plugin's limits, so they bound it from that first line.
            groups = rt._cgroups[witness.worker]  # type: ignore[index]
            limit_file = "memory.max" if groups.version == "v2" else "memory.limit_in_bytes"
            assert int((groups.dirs["memory"] / limit_file).read_text()) == 96 * 1024 * 1024
            assert witness.cgroup.startswith("applied")


@needs_cgroups
async def test_without_the_wait_for_placed_the_same_late_move_would_let_the_plugin_run_outside(
    tmp_path: Path, held_move: HeldMove, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control of the test above: the worker is told nothing is being moved (as if the
    # move were done), and the move is released only once initialize is answered, i.e. after
    # the plugin's import. Its first line then sees the host's group, not its own.
    _on_host(monkeypatch, "_initialize_phase", lambda _worker: held_move.release.set())
    send_initialize = WorkerProcess._send_initialize

    def no_wait(self: WorkerProcess, protocol: int) -> None:
        self._placed.set()
        send_initialize(self, protocol)

    monkeypatch.setattr(WorkerProcess, "_send_initialize", no_wait)
    config = base_config(tmp_path, sandbox="off", memory="96 MiB")
    with anyio.fail_after(DEADLINE):
        async with Runtime(config) as rt:
            witness = await rt.load(WITNESS)
            seen = await witness.call("at_import")
            assert _groups_seen(seen, rt, witness.worker) == {"memory": False, "pids": False}


@needs_cgroups
async def test_stopping_a_plugin_whose_worker_waits_for_its_move_ends_the_start_cleanly(
    tmp_path: Path, held_move: HeldMove
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            failed: list[BaseException] = []

            async def call() -> None:
                try:
                    await probe.call("add", {"a": 1})
                except PluginUnavailable as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await held_move.entered.wait()
                await probe.stop()
            assert [type(e) for e in failed] == [PluginUnavailable]
            assert probe.worker is None
            # Released now, a call starts a worker as usual.
            held_move.release.set()
            assert await probe.call("add", {"a": 2}) == 2


async def test_stopping_a_plugin_while_its_pipelined_activate_runs_ends_the_start_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    activating = anyio.Event()
    activate = WorkerProcess.activate
    queued: list[object] = []

    async def entered(self: WorkerProcess) -> None:
        # activate went with initialize, before its answer was awaited.
        queued.append(self._activation)
        activating.set()
        await activate(self)

    monkeypatch.setattr(WorkerProcess, "activate", entered)
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            plugin = await rt.load(ACTIVATED)
            assert rt.state_dir is not None
            hold = rt.state_dir / "scratch" / "activated" / "hold"
            hold.parent.mkdir(parents=True, exist_ok=True)
            hold.touch()
            failed: list[BaseException] = []
            started: list[WorkerProcess] = []
            new_worker = rt._new_worker

            def remember(*args: Any, **kwargs: Any) -> WorkerProcess:
                worker = new_worker(*args, **kwargs)
                started.append(worker)
                return worker

            monkeypatch.setattr(rt, "_new_worker", remember)

            async def call() -> None:
                try:
                    await plugin.call("activations")
                except PluginUnavailable as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await activating.wait()
                (worker,) = started
                assert queued[0] is not None
                await plugin.stop()
            assert [type(e) for e in failed] == [PluginUnavailable]
            assert worker.exit is not None and worker._pending == {}
            hold.unlink()


async def test_a_failed_import_fails_the_start_with_the_plugins_error_and_the_queued_activate_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plugin.toml").write_text(
        '[plugin]\nid = "broken"\nname = "Broken"\nversion = "1.0.0"\n'
        'description = "Fails at import."\nentry = "broken_plugin:plugin"\n'
        'requires-cordon = ">=0.1"\n'
    )
    (broken / "broken_plugin.py").write_text('raise RuntimeError("no import today")\n')
    started: list[WorkerProcess] = []
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            new_worker = rt._new_worker

            def remember(*args: Any, **kwargs: Any) -> WorkerProcess:
                worker = new_worker(*args, **kwargs)
                started.append(worker)
                return worker

            monkeypatch.setattr(rt, "_new_worker", remember)
            handle = await rt.load(broken)
            with pytest.raises(PluginError) as info:
                await handle.call("anything")
            assert "no import today" in info.value.message
            worker = started[0]
            assert worker.exit is not None
            # The activate sent behind initialize was failed with the worker's exit, not
            # left waiting.
            assert worker._activation is not None
            _ident, pending = worker._activation
            assert isinstance(pending.error, WorkerCrashed)
            assert worker._pending == {}


# -- the worker's side, through its real pipes -------------------------------------------


@pytest.fixture
def raw_worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CORDON_HOST_PID": str(os.getpid())}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "cordon.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()


def _frame(ident: int | None, method: str, params: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if ident is not None:
        message["id"] = ident
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


def test_a_worker_serves_initialize_activate_placed_and_a_call_sent_in_one_write_in_order(
    raw_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    init = InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id="probe",
        plugin_dir=str(PROBE),
        entry="probe_plugin:plugin",
        scratch_dir=str(tmp_path),
        await_placed=True,
    )
    call = {"name": "add", "arguments": {"a": 3, "b": 4}}
    burst = (
        _frame(1, INITIALIZE, json.loads(msgspec.json.encode(init)))
        + _frame(2, ACTIVATE)
        + _frame(None, PLACED)
        + _frame(3, INVOKE, call)
    )
    assert raw_worker.stdin is not None and raw_worker.stdout is not None
    raw_worker.stdin.write(burst)
    raw_worker.stdin.flush()
    seen = [json.loads(raw_worker.stdout.readline()) for _ in range(4)]
    assert seen[0]["method"] == "$/hello"
    assert seen[1]["method"] == LOCKED_DOWN
    assert [(m["id"], "result" in m) for m in seen[2:]] == [(1, True), (2, True)]
    assert json.loads(raw_worker.stdout.readline()) == {"jsonrpc": "2.0", "id": 3, "result": 7}


def _withhold_activate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's ``activate`` frames are dropped on their way to the worker (the host
    believes them sent): an activation that never answers."""
    put = WorkerProcess._put

    def put_but_activate(self: WorkerProcess, frame: bytes, *, newline: bool = False) -> bool:
        if b'"method":"activate"' in bytes(frame):
            return True
        return put(self, frame, newline=newline)

    monkeypatch.setattr(WorkerProcess, "_put", put_but_activate)


async def test_a_plugin_without_activate_hooks_is_served_without_waiting_for_activates_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cordon.runtime._supervise import _lifecycle

    # Waiting for the withheld answer would outlast the test's deadline.
    monkeypatch.setattr(_lifecycle, "ACTIVATE_TIMEOUT", DEADLINE * 2)
    _withhold_activate(monkeypatch)
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            hello = await rt.load(HELLO)
            assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
            assert hello.worker is not None
            assert hello.worker.init_result is not None
            assert hello.worker.init_result.activate_hooks == 0


async def test_a_plugin_with_activate_hooks_is_served_only_once_they_have_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counterpart: the same withheld answer, a plugin with a hook. Its start waits for
    # the answer, to ACTIVATE_TIMEOUT, and fails.
    from cordon.runtime._supervise import _lifecycle

    monkeypatch.setattr(_lifecycle, "ACTIVATE_TIMEOUT", 0.5)
    _withhold_activate(monkeypatch)
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            with pytest.raises(WorkerCrashed) as info:
                await probe.call("add", {"a": 1})
            assert "activate took over 0.5 s" in (info.value.detail or "")
