"""The operator's control socket, through real processes: ``cordon run`` as a subprocess on a
temp config and state-dir, reached by the ``cordon`` client commands and by raw JSON-RPC on
its unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.anyio

CORDON = str(Path(sys.executable).parent / "cordon")

#: A host's start: interpreter, imports, manifests; generous for a CI box running other suites.
HOST_START_TIMEOUT = 60.0
#: A host's stop after SIGTERM: each worker's escalating stop is bounded far below this.
HOST_STOP_TIMEOUT = 30.0
#: One request through the socket: at most a worker cold start (~0.1 s) plus margin.
REQUEST_TIMEOUT = 30.0
#: One `cordon` client command: interpreter start-up plus one request.
CLI_TIMEOUT = 60.0
#: --watch: the watcher's debounce (0.4 s) plus a reload (a new worker's start).
WATCH_TIMEOUT = 60.0
#: Polling intervals: how often a condition is re-checked, never a synchronisation by itself.
POLL = 0.05
#: The watcher may still be arming when the first edit lands: re-write the file this often
#: until the change is observed.
RETOUCH_EVERY = 1.0
#: Any line a client reads from the host fits in this.
MAX_LINE = 1 << 20


@dataclass
class Setup:
    root: Path
    config: Path
    state: Path
    plugin: Path

    @property
    def socket(self) -> Path:
        return self.state / "cordon.sock"

    def args(self, *more: str) -> list[str]:
        return [*more, "--config", str(self.config)]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    plugins = tmp_path / "plugins"
    shutil.copytree(
        EXAMPLES / "hello", plugins / "hello", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = tmp_path / "cordon.toml"
    config.write_text(
        '[runtime]\nplugin-dirs = ["plugins"]\nstate-dir = "state"\n'
        '[plugins.hello]\ngrant = ["log"]\n'
    )
    return Setup(tmp_path, config, tmp_path / "state", plugins / "hello")


# -- helpers ----------------------------------------------------------------------------------


async def rpc(path: Path, method: str, params: Any = None, *, raw: bytes | None = None) -> Any:
    """One request on a fresh connection; returns the whole response frame."""
    with anyio.fail_after(REQUEST_TIMEOUT):
        async with await anyio.connect_unix(path) as stream:
            frame = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
            await stream.send(raw if raw is not None else json.dumps(frame).encode() + b"\n")
            line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_LINE)
            return json.loads(line)


async def call_greet(s: Setup, name: str = "Ada") -> Any:
    return await rpc(
        s.socket, "call", {"plugin": "hello", "name": "greet", "arguments": {"name": name}}
    )


async def cordon(s: Setup, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(CLI_TIMEOUT):
        return await anyio.run_process([CORDON, *args], cwd=s.root, check=False)


async def cordon_json(s: Setup, *args: str) -> Any:
    r = await cordon(s, *s.args(*args, "--json"))
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


async def _wait_ready(s: Setup, proc: anyio.abc.Process, log: Path) -> None:
    with anyio.fail_after(HOST_START_TIMEOUT):
        while True:
            if proc.returncode is not None:
                pytest.fail(f"host exited {proc.returncode}: {log.read_text()}")
            try:
                answer = await rpc(s.socket, "plugins")
            except (FileNotFoundError, ConnectionRefusedError):
                await anyio.sleep(POLL)
                continue
            assert "result" in answer, answer
            return


async def stop_host(proc: anyio.abc.Process) -> None:
    """SIGTERM, then wait (bounded); a host that does not stop in time is killed and the
    test fails. Runs shielded, so a failing or cancelled test still reaps it."""
    with anyio.CancelScope(shield=True):
        try:
            if proc.returncode is None:
                proc.terminate()
            try:
                with anyio.fail_after(HOST_STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                # Kill the whole group: the host's workers are in it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with anyio.fail_after(HOST_STOP_TIMEOUT):
                    await proc.wait()
                raise
        finally:
            await proc.aclose()


@contextlib.asynccontextmanager
async def running_host(s: Setup, *extra: str) -> AsyncIterator[anyio.abc.Process]:
    """``cordon run --no-stdin`` on ``s``, ready to serve; stopped (SIGTERM, exit 0) after."""
    log = s.root / "host.log"
    with log.open("ab") as out:
        proc = await anyio.open_process(
            [CORDON, *s.args("run", "--no-stdin", *extra)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=s.root,
            start_new_session=True,
        )
        try:
            await _wait_ready(s, proc, log)
            yield proc
        finally:
            await stop_host(proc)
    assert proc.returncode == 0, log.read_text()


def set_version(s: Setup, version: str) -> None:
    toml = s.plugin / "plugin.toml"
    text = toml.read_text()
    current = next(ln for ln in text.splitlines() if ln.startswith("version = "))
    toml.write_text(text.replace(current, f'version = "{version}"'))


async def live_plugin(s: Setup) -> dict[str, Any]:
    answer = await rpc(s.socket, "plugins")
    (hello,) = [p for p in answer["result"] if p["id"] == "hello"]
    result: dict[str, Any] = hello
    return result


# -- enable / disable -------------------------------------------------------------------------


async def test_a_plugin_disabled_through_the_cli_is_refused_over_the_socket_until_enabled(
    setup: Setup,
) -> None:
    async with running_host(setup):
        assert (await call_greet(setup))["result"] == "Hello Ada"

        r = await cordon(setup, *setup.args("plugin", "disable", "hello"))
        assert r.returncode == 0, r.stderr.decode()
        refused = await call_greet(setup)
        assert refused["error"]["data"]["type"] == "PluginUnavailable"
        assert refused["error"]["data"]["reason"] == "disabled"
        assert (await live_plugin(setup))["state"] == "disabled"

        assert await cordon_json(setup, "plugin", "enable", "hello") == {
            "plugin": "hello",
            "state": "stopped",
            "live": True,
        }
        assert (await call_greet(setup))["result"] == "Hello Ada"


async def test_a_disable_survives_a_host_restart(setup: Setup) -> None:
    async with running_host(setup):
        r = await cordon(setup, *setup.args("plugin", "disable", "hello"))
        assert r.returncode == 0, r.stderr.decode()
    overrides = json.loads((setup.state / "plugin-overrides.json").read_text())
    assert overrides == {"version": 1, "plugins": {"hello": {"enabled": False}}}
    async with running_host(setup):
        assert (await live_plugin(setup))["state"] == "disabled"
        assert (await call_greet(setup))["error"]["data"]["reason"] == "disabled"


async def test_a_disable_without_a_host_is_persisted_and_the_next_host_starts_it_disabled(
    setup: Setup,
) -> None:
    r = await cordon(setup, *setup.args("plugin", "disable", "hello"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"no running host" in r.stdout
    (row,) = await cordon_json(setup, "plugin", "list")
    assert (row["state"], row["override"], row["live"]) == ("disabled", "disabled", False)

    async with running_host(setup):
        assert (await call_greet(setup))["error"]["data"]["reason"] == "disabled"
        (row,) = await cordon_json(setup, "plugin", "list")
        assert (row["state"], row["live"]) == ("disabled", True)
        assert (await cordon_json(setup, "plugin", "enable", "hello"))["live"] is True
        assert (await call_greet(setup))["result"] == "Hello Ada"


async def test_disabling_an_unknown_plugin_without_a_host_writes_nothing(setup: Setup) -> None:
    r = await cordon(setup, *setup.args("plugin", "disable", "nope"))
    assert r.returncode == 10
    assert b"PluginUnavailable" in r.stderr
    assert not (setup.state / "plugin-overrides.json").exists()


# -- reload, stats, list ----------------------------------------------------------------------


async def test_reload_through_the_cli_lists_the_new_version(setup: Setup) -> None:
    async with running_host(setup):
        set_version(setup, "1.1.0")
        (before,) = await cordon_json(setup, "plugin", "list")
        assert (before["version"], before["version_on_disk"]) == ("1.0.0", "1.1.0")

        reloaded = await cordon_json(setup, "plugin", "reload", "hello")
        assert reloaded == {"plugin": "hello", "state": "active", "version": "1.1.0"}
        (row,) = await cordon_json(setup, "plugin", "list")
        assert (row["version"], row["state"], row["live"]) == ("1.1.0", "active", True)
        assert "version_on_disk" not in row


async def test_a_reload_refused_by_the_host_exits_with_the_code_of_its_error(
    setup: Setup,
) -> None:
    async with running_host(setup):
        toml = setup.plugin / "plugin.toml"
        toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "not a version"'))
        r = await cordon(setup, *setup.args("plugin", "reload", "hello"))
        assert r.returncode == 3, r.stderr.decode()
        assert r.stderr.decode().startswith("cordon: ManifestError: ")
        # The old version keeps serving, and the listing shows both sides.
        assert (await call_greet(setup))["result"] == "Hello Ada"
        (row,) = await cordon_json(setup, "plugin", "list")
        assert row["state"] == "broken"
        assert row["running"]["version"] == "1.0.0"


async def test_reload_without_a_running_host_is_its_own_exit_code(setup: Setup) -> None:
    r = await cordon(setup, *setup.args("plugin", "reload", "hello"))
    assert r.returncode == 15
    assert r.stdout == b""
    assert r.stderr.decode().startswith("cordon: HostNotRunning: no cordon host is running on ")


async def test_stats_json_shows_the_live_call_count(setup: Setup) -> None:
    async with running_host(setup):
        for _ in range(3):
            assert (await call_greet(setup))["result"] == "Hello Ada"
        stats = await cordon_json(setup, "stats")
        assert stats["hello"]["calls"] == 3
        assert stats["hello"]["pid"] is not None
        info = await cordon_json(setup, "plugin", "info", "hello")
        assert (info["live"], info["state"], info["stats"]["calls"]) == (True, "active", 3)


# -- one host per socket; the socket file ----------------------------------------------------


async def test_a_second_host_on_the_same_socket_is_refused_and_the_first_keeps_serving(
    setup: Setup,
) -> None:
    async with running_host(setup):
        second = await cordon(setup, *setup.args("run", "--no-stdin"))
        assert second.returncode == 14
        assert b"HostAlreadyRunning" in second.stderr
        assert (await call_greet(setup))["result"] == "Hello Ada"


async def test_the_socket_is_0600_and_removed_when_the_host_exits(setup: Setup) -> None:
    async with running_host(setup):
        mode = setup.socket.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    assert not setup.socket.exists()
    assert not setup.socket.with_name("cordon.sock.lock").exists()


async def test_a_stale_socket_file_is_replaced(setup: Setup) -> None:
    setup.state.mkdir(mode=0o700)
    # A host killed without cleaning up leaves a bound socket nobody listens on.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(setup.socket))
    stale.close()
    async with running_host(setup):
        assert (await call_greet(setup))["result"] == "Hello Ada"


async def test_a_socket_in_a_world_writable_directory_is_refused(setup: Setup) -> None:
    public = setup.root / "public"
    public.mkdir()
    public.chmod(0o777)
    r = await cordon(setup, *setup.args("run", "--no-stdin", "--socket", str(public / "c.sock")))
    assert r.returncode == 16
    assert b"world-writable" in r.stderr
    assert not (public / "c.sock").exists()


async def test_an_explicit_socket_path_is_served_and_found_by_the_clients(setup: Setup) -> None:
    other = setup.root / "ctl"
    other.mkdir(mode=0o700)
    path = other / "host.sock"
    log = setup.root / "host.log"
    with log.open("ab") as out:
        proc = await anyio.open_process(
            [CORDON, *setup.args("run", "--no-stdin", "--socket", str(path))],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=setup.root,
            start_new_session=True,
        )
        try:
            with anyio.fail_after(HOST_START_TIMEOUT):
                while not path.exists():
                    assert proc.returncode is None, log.read_text()
                    await anyio.sleep(POLL)
            stats = await cordon_json(setup, "stats", "--socket", str(path))
            assert stats["hello"]["calls"] == 0
            assert not setup.socket.exists()
        finally:
            await stop_host(proc)
    assert proc.returncode == 0
    assert not path.exists()


# -- hostile and sloppy clients ---------------------------------------------------------------


async def test_garbage_on_the_socket_gets_a_parse_error_and_the_host_keeps_serving(
    setup: Setup,
) -> None:
    async with running_host(setup):
        answer = await rpc(setup.socket, "", raw=b"this is not json\n")
        assert answer["error"]["code"] == -32700
        assert answer["id"] is None
        # Half a frame, then gone; and a client that leaves with a call in flight.
        with anyio.fail_after(REQUEST_TIMEOUT):
            async with await anyio.connect_unix(setup.socket) as sloppy:
                await sloppy.send(b'{"jsonrpc": "2.0", "id": 1, "meth')
            async with await anyio.connect_unix(setup.socket) as leaver:
                slow = {"plugin": "hello", "name": "slow_count", "arguments": {"n": 20}}
                frame = {"jsonrpc": "2.0", "id": 7, "method": "call", "params": slow}
                await leaver.send(json.dumps(frame).encode() + b"\n")
        assert (await call_greet(setup, "Bob"))["result"] == "Hello Bob"


async def test_concurrent_clients_each_get_their_own_answers(setup: Setup) -> None:
    async with running_host(setup):
        results: dict[str, Any] = {}

        async def client(name: str) -> None:
            results[name] = (await call_greet(setup, name))["result"]

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(client, f"n{i}")
        assert results == {f"n{i}": f"Hello n{i}" for i in range(8)}


FOREIGN_CLIENT = textwrap.dedent(
    """
    import ctypes, os, socket, sys

    os.setegid(65534)
    os.seteuid(65534)
    # File access stays root's (the socket is 0600 root's, in 0700 dirs): only the peer
    # credentials the host sees differ, which is what this checks.
    ctypes.CDLL(None, use_errno=True).setfsuid(0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "plugins"}\\n')
    except BrokenPipeError:
        pass  # refused at once: the refusal is still there to read
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # the host closed with our request unread: the refusal came first
    sys.stdout.write(data.decode())
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
async def test_a_peer_with_another_uid_is_refused(setup: Setup) -> None:
    async with running_host(setup):
        with anyio.fail_after(REQUEST_TIMEOUT):
            r = await anyio.run_process(
                [sys.executable, "-c", FOREIGN_CLIENT, str(setup.socket)], check=False
            )
        assert r.returncode == 0, r.stderr.decode()
        (frame,) = [json.loads(line) for line in r.stdout.splitlines()]
        assert frame["error"]["data"]["type"] == "PermissionDenied"
        assert frame["error"]["data"]["permission"] == "control-socket"
        assert "uid 65534" in frame["error"]["message"]
        assert "result" not in frame
        assert (await call_greet(setup))["result"] == "Hello Ada"


FOREIGN_LISTENER = textwrap.dedent(
    """
    import ctypes, os, socket, sys

    os.setegid(65534)
    os.seteuid(65534)
    ctypes.CDLL(None, use_errno=True).setfsuid(0)  # may create the file in root's 0700 dir
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[1])
    s.listen(8)
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        try:
            conn.sendall(b'{"jsonrpc": "2.0", "id": 1, "result": "state: hijacked"}\\n')
        except OSError:
            pass  # the client hung up on us: what the test expects
        conn.close()
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
async def test_the_cli_will_not_talk_to_a_listener_another_user_put_on_the_socket(
    setup: Setup,
) -> None:
    setup.state.mkdir(mode=0o700)
    async with await anyio.open_process(
        [sys.executable, "-c", FOREIGN_LISTENER, str(setup.socket)]
    ) as impostor:
        try:
            assert impostor.stdout is not None
            with anyio.fail_after(REQUEST_TIMEOUT):
                ready = await BufferedByteReceiveStream(impostor.stdout).receive_until(
                    b"\n", MAX_LINE
                )
            assert ready == b"listening"
            r = await cordon(setup, *setup.args("plugin", "disable", "hello"))
            assert r.returncode == 16, r.stderr.decode()
            assert b"uid 65534" in r.stderr and b"hijacked" not in r.stdout
        finally:
            with contextlib.suppress(ProcessLookupError):
                impostor.kill()
            with anyio.fail_after(REQUEST_TIMEOUT), anyio.CancelScope(shield=True):
                await impostor.wait()


# -- --watch ----------------------------------------------------------------------------------


async def test_watch_picks_up_an_edited_plugin_as_seen_through_the_socket(setup: Setup) -> None:
    code = setup.plugin / "hello_plugin.py"
    original = code.read_text()
    edited = original.replace('f"Hello {name}"', 'f"Howdy {name}"')
    assert edited != original
    async with running_host(setup, "--watch"):
        assert (await call_greet(setup))["result"] == "Hello Ada"
        set_version(setup, "2.0.0")
        code.write_text(edited)
        with anyio.fail_after(WATCH_TIMEOUT):
            last_write = anyio.current_time()
            while (await call_greet(setup))["result"] != "Howdy Ada":
                if anyio.current_time() - last_write > RETOUCH_EVERY:
                    code.write_text(edited)
                    last_write = anyio.current_time()
                await anyio.sleep(POLL)
        assert (await live_plugin(setup))["version"] == "2.0.0"


# -- stdin and the socket together ------------------------------------------------------------


@contextlib.asynccontextmanager
async def stdin_host(
    s: Setup,
) -> AsyncIterator[tuple[anyio.abc.Process, BufferedByteReceiveStream]]:
    """``cordon run`` serving both stdin/stdout and the socket; reaped (SIGTERM) after."""
    proc = await anyio.open_process(
        [CORDON, *s.args("run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=s.root,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        out = BufferedByteReceiveStream(proc.stdout)
        with anyio.fail_after(HOST_START_TIMEOUT):
            ready = json.loads(await out.receive_until(b"\n", MAX_LINE))
        assert ready == {"jsonrpc": "2.0", "method": "ready", "params": ["hello"]}
        yield proc, out
    finally:
        await stop_host(proc)


async def test_stdin_and_the_socket_serve_the_same_host_together(setup: Setup) -> None:
    async with stdin_host(setup) as (proc, out):
        assert proc.stdin is not None
        request = {"jsonrpc": "2.0", "id": 5, "method": "call"}
        request["params"] = {"plugin": "hello", "name": "greet", "arguments": {"name": "In"}}
        await proc.stdin.send(json.dumps(request).encode() + b"\n")
        with anyio.fail_after(REQUEST_TIMEOUT):
            answer = json.loads(await out.receive_until(b"\n", MAX_LINE))
        assert answer == {"jsonrpc": "2.0", "id": 5, "result": "Hello In"}
        # Both channels reach one runtime: the socket sees the call made on stdin.
        stats = await rpc(setup.socket, "stats")
        assert stats["result"]["hello"]["calls"] == 1


async def test_sigterm_stops_a_host_cleanly_while_its_stdin_is_still_open(setup: Setup) -> None:
    async with stdin_host(setup) as (proc, _out):
        assert (await call_greet(setup))["result"] == "Hello Ada"
        worker = (await rpc(setup.socket, "stats"))["result"]["hello"]["pid"]
        proc.terminate()
        with anyio.fail_after(HOST_STOP_TIMEOUT):
            await proc.wait()
    assert proc.returncode == 0
    assert not setup.socket.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


async def test_eof_on_stdin_stops_a_host_that_also_serves_the_socket(setup: Setup) -> None:
    async with stdin_host(setup) as (proc, _out):
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with anyio.fail_after(HOST_STOP_TIMEOUT):
            await proc.wait()
    assert proc.returncode == 0
    assert not setup.socket.exists()
