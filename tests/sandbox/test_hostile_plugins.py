"""Hostile plugins through the real runtime: every escape comes back as a typed error with
the kernel's (or the audit hook's) exact refusal, and neither the host nor a sibling plugin
notices anything."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cordon.runtime import PluginError, PluginHandle, Runtime

pytestmark = pytest.mark.anyio

HOSTILE = Path(__file__).resolve().parent / "hostile"
HELLO = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "hello"
SECRET = "cordon-test-secret-do-not-leak"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    monkeypatch.setenv("CORDON_TEST_API_TOKEN", SECRET)
    config = {
        "runtime": {"state-dir": str(tmp_path / "state")},
        "defaults": {"call-timeout": "20 s", "max-call-timeout": "60 s"},
    }
    async with Runtime(config) as runtime:
        yield runtime


@pytest.fixture
async def escaper(rt: Runtime) -> PluginHandle:
    return await rt.load(HOSTILE / "escaper")


@pytest.fixture
def tcp_server() -> Iterator[tuple[str, int]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv.getsockname()
    srv.close()


async def refused(
    plugin: PluginHandle, tool: str, args: dict[str, Any] | None = None
) -> PluginError:
    with pytest.raises(PluginError) as info:
        await plugin.call(tool, args or {})
    return info.value


async def test_the_strict_sandbox_is_fully_applied_in_a_real_worker(escaper: PluginHandle) -> None:
    await escaper.call("scratch_roundtrip", {})
    assert escaper.sandbox and set(escaper.sandbox.values()) == {"applied"}


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/1/environ", "/etc/shadow"])
async def test_reading_host_files_comes_back_as_permission_error_eacces(
    escaper: PluginHandle, path: str
) -> None:
    err = await refused(escaper, "read_file", {"path": path})
    assert err.exc_type == "PermissionError"
    assert err.exc_message == f"[Errno 13] Permission denied: '{path}'"


async def test_the_host_environment_is_out_of_reach(escaper: PluginHandle) -> None:
    env = await escaper.call("environment", {})
    assert SECRET not in env.values()
    assert "CORDON_TEST_API_TOKEN" not in env
    err = await refused(escaper, "read_file", {"path": f"/proc/{os.getpid()}/environ"})
    assert str(err.exc_message).startswith("[Errno 13] Permission denied")


async def test_writing_outside_scratch_comes_back_as_eacces(
    escaper: PluginHandle, tmp_path: Path
) -> None:
    target = tmp_path / "escaped.txt"
    err = await refused(escaper, "write_file", {"path": str(target)})
    assert err.exc_message == f"[Errno 13] Permission denied: '{target}'"
    assert not target.exists()


async def test_the_scratch_dir_is_the_writable_cwd(escaper: PluginHandle) -> None:
    assert await escaper.call("scratch_roundtrip", {}) == "kept"


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("shell", {}, "[Errno 1] cordon sandbox refuses os.system"),
        ("spawn", {}, "[Errno 1] cordon sandbox refuses subprocess.Popen"),
        ("fork", {}, "[Errno 1] cordon sandbox refuses os.fork"),
        ("fork_exec", {}, "[Errno 1] Operation not permitted"),  # seccomp: vfork/clone
        ("resolve", {"host": "localhost"}, "[Errno 1] cordon sandbox refuses socket.getaddrinfo"),
        ("reuse_sandbox_native", {}, "[Errno 1] 272: Operation not permitted"),  # seccomp
        ("raise_limit", {}, "not allowed to raise maximum limit"),
    ],
)
async def test_escapes_come_back_as_typed_errors_with_the_exact_refusal(
    escaper: PluginHandle, tool: str, args: dict[str, Any], message: str
) -> None:
    err = await refused(escaper, tool, args)
    assert err.plugin == "escaper"
    assert err.exc_message == message


async def test_connecting_to_a_host_port_is_refused(
    escaper: PluginHandle, tcp_server: tuple[str, int]
) -> None:
    host, port = tcp_server
    err = await refused(escaper, "connect", {"host": host, "port": port})
    # create_connection resolves first, even a numeric address: the hook stops it there.
    assert err.exc_message == "[Errno 1] cordon sandbox refuses socket.getaddrinfo"


async def test_signalling_the_host_is_refused(escaper: PluginHandle) -> None:
    err = await refused(escaper, "signal_host", {"pid": os.getpid()})
    assert err.exc_message == "[Errno 1] cordon sandbox refuses os.kill"


async def test_ctypes_loads_in_the_sandbox_because_no_guarantee_rests_on_hiding_it(
    escaper: PluginHandle,
) -> None:
    assert (await escaper.call("load_ctypes", {})).startswith("<CDLL")


async def test_an_exec_through_ctypes_at_import_time_meets_seccomp(rt: Runtime) -> None:
    plugin = await rt.load(HOSTILE / "ctypes_at_import")
    assert await plugin.call("import_time_exec", {}) == [-1, errno.EPERM]


async def test_host_and_sibling_stay_healthy_after_every_attempt(
    rt: Runtime, escaper: PluginHandle, tcp_server: tuple[str, int]
) -> None:
    hello = await rt.load(HELLO)
    assert await hello.call("greet", {"name": "before"}) == "Hello before"
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("shell", {}),
        ("fork_exec", {}),
        ("fork", {}),
        ("read_file", {"path": "/etc/shadow"}),
        ("connect", {"host": tcp_server[0], "port": tcp_server[1]}),
        ("signal_host", {"pid": os.getpid()}),
        ("raise_limit", {}),
    ]
    for tool, args in attempts:
        await refused(escaper, tool, args)
    # Same worker throughout: the refusals were errors, not crashes.
    assert escaper.restarts == 0
    assert await escaper.call("scratch_roundtrip", {}) == "kept"
    assert await hello.call("greet", {"name": "after"}) == "Hello after"
