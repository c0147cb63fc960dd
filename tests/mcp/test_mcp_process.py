"""The stdio bridge as a process: its stdout carries MCP and nothing else, and it leaves no
worker behind however it is stopped (the client leaving mid-call, SIGTERM with stdin open).
Raw JSON-RPC lines, no client library: what is on the wire is the point."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from cordon.runtime._mcp._stdio import MAX_LINE

from .conftest import CORDON, DEADLINE, EXIT_DEADLINE, INITIALIZE, gone

pytestmark = pytest.mark.anyio

INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def _call(ident: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": ident,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


class _Wire:
    """The bridge's stdin and stdout, a line at a time."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buf = b""
        self.lines: list[bytes] = []

    async def send(self, *messages: dict[str, Any] | bytes) -> None:
        for m in messages:
            await self._stdin.send(m if isinstance(m, bytes) else json.dumps(m).encode() + b"\n")

    async def answer(self, ident: int) -> dict[str, Any]:
        """Read lines until the response to ``ident``; every line read is kept."""
        while True:
            while b"\n" not in self._buf:
                self._buf += await self._stdout.receive()
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(line)
            message = json.loads(line)
            if message.get("id") == ident:
                return dict(message)

    async def rest(self) -> None:
        """Everything else the bridge writes until it closes stdout."""
        try:
            while True:
                self._buf += await self._stdout.receive()
        except anyio.EndOfStream:
            pass
        self.lines += [line for line in self._buf.split(b"\n") if line]

    async def close_stdin(self) -> None:
        await self._stdin.aclose()


@contextmanager
def _killed_on_failure(process: anyio.abc.Process) -> Iterator[None]:
    """A bridge the test gives up on is killed, or leaving ``async with process`` (which
    waits for it) would hang the test instead of failing it."""
    try:
        yield
    finally:
        if process.returncode is None:
            process.kill()


@asynccontextmanager
async def _bridge(config: Path, *args: str) -> AsyncIterator[_Wire]:
    log = config.parent / "bridge.log"
    with log.open("w") as errlog:
        command = [CORDON, "mcp", "serve", "--config", str(config), *args]
        async with await anyio.open_process(command, stderr=errlog) as process:
            try:
                yield _Wire(process)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def test_stdout_carries_only_json_rpc_even_with_debug_logs_and_a_printing_plugin(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with _bridge(bridge_config, "--log-level", "debug") as wire:
            await wire.send(INITIALIZE, INITIALIZED, _call(2, "mcpdemo.noisy", {}))
            noisy = await wire.answer(2)
            await wire.send(b"this is not json\n", _call(3, "mcpdemo.greet", {"name": "Ada"}))
            greet = await wire.answer(3)
            await wire.close_stdin()
            await wire.rest()
            with anyio.fail_after(EXIT_DEADLINE):
                assert await wire.process.wait() == 0
    assert noisy["result"]["content"][0]["text"] == "ok"
    assert greet["result"]["content"][0]["text"] == "Hello Ada"
    for line in wire.lines:
        message = json.loads(line)  # nothing but JSON on stdout...
        assert message["jsonrpc"] == "2.0"  # ... and all of it JSON-RPC
        assert message.get("id") != 99, "the plugin's print reached the client"
    log = (bridge_config.parent / "bridge.log").read_text()
    assert "to stderr" in log  # what the plugin printed went to the host's log, on stderr
    assert "worker.started" in log  # and so did cordon's debug records


@pytest.mark.parametrize("past", [1, 2 * MAX_LINE])
async def test_a_line_past_the_limit_is_dropped_and_the_next_request_is_answered(
    bridge_config: Path, past: int
) -> None:
    with anyio.fail_after(DEADLINE):
        async with _bridge(bridge_config) as wire:
            await wire.send(INITIALIZE, INITIALIZED)
            await wire.answer(1)
            # Not buffered whole: dropped up to its newline, then reading goes on.
            await wire.send(
                b'{"jsonrpc": "2.0", "id": 5, "x": "' + b"a" * (MAX_LINE + past) + b'"}\n'
            )
            await wire.send(_call(6, "mcpdemo.greet", {"name": "Ada"}))
            greet = await wire.answer(6)
            await wire.close_stdin()
            await wire.rest()
            with anyio.fail_after(EXIT_DEADLINE):
                assert await wire.process.wait() == 0
    assert greet["result"]["content"][0]["text"] == "Hello Ada"
    assert all(json.loads(line).get("id") != 5 for line in wire.lines)
    assert "mcp.line_dropped" in (bridge_config.parent / "bridge.log").read_text()


async def test_the_client_leaving_mid_call_stops_the_bridge_and_its_worker(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with _bridge(bridge_config) as wire:
            await wire.send(INITIALIZE, INITIALIZED, _call(2, "mcpdemo.pid", {}))
            pid = int((await wire.answer(2))["result"]["content"][0]["text"])
            await wire.send(_call(3, "mcpdemo.hold", {"gate": "left"}))
            await wire.close_stdin()
            await wire.rest()
            with anyio.fail_after(EXIT_DEADLINE):
                assert await wire.process.wait() == 0
    assert await anyio.to_thread.run_sync(gone, pid)


async def test_sigterm_stops_the_bridge_and_its_worker_while_stdin_stays_open(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with _bridge(bridge_config) as wire:
            await wire.send(INITIALIZE, INITIALIZED, _call(2, "mcpdemo.pid", {}))
            pid = int((await wire.answer(2))["result"]["content"][0]["text"])
            wire.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(EXIT_DEADLINE):
                assert await wire.process.wait() == 0
    assert await anyio.to_thread.run_sync(gone, pid)


def test_the_cordon_command_loads_no_mcp_sdk_until_mcp_serve_runs() -> None:
    probe = (
        "import sys\n"
        "from cordon.runtime._cli._main import _parser\n"
        "_parser().parse_args(['mcp', 'serve'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_mcp_sdk_mcp_serve_says_which_extra_to_install(bridge_config: Path) -> None:
    probe = (
        "import sys\n"
        "sys.modules['mcp'] = None  # as if the extra were not installed\n"
        "sys.modules['mcp_types'] = None\n"
        "from cordon.runtime._cli._main import main\n"
        f"sys.exit(main(['mcp', 'serve', '--config', {str(bridge_config)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'cordon[mcp]'" in done.stderr
    assert done.stdout == ""


async def test_sigterm_stops_the_bridge_while_the_client_stops_reading_its_stdout(
    bridge_config: Path,
) -> None:
    """The bridge is stuck writing an answer into a full pipe: a thread blocked in write()
    could not be cancelled; the event loop's wait can."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # an answer fills it many times over
    command = [CORDON, "mcp", "serve", "--config", str(bridge_config), "--plugins", "mcpdemo"]
    try:
        with (bridge_config.parent / "bridge.log").open("w") as errlog:
            process = await anyio.open_process(command, stdout=write_end, stderr=errlog)
            os.close(write_end)
            write_end = -1
            async with process:
                assert process.stdin is not None
                with _killed_on_failure(process), anyio.fail_after(DEADLINE):
                    big = _call(2, "mcpdemo.greet", {"name": "x" * 1_000_000})
                    for message in (INITIALIZE, INITIALIZED, big):
                        await process.stdin.send(json.dumps(message).encode() + b"\n")
                    tail = b""
                    while True:  # until its answer has begun: a write is under way
                        await anyio.wait_readable(read_end)
                        tail += os.read(read_end, 4096)
                        if b'"id":2' in tail:
                            break
                        tail = tail[-16:]
                    process.send_signal(signal.SIGTERM)
                    with anyio.fail_after(EXIT_DEADLINE):
                        assert await process.wait() == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
