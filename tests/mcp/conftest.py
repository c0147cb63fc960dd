"""The bridge as MCP clients meet it: ``cordon mcp serve`` as a real subprocess (the console
script), driven by the official ``mcp`` client over stdio or streamable HTTP."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

CORDON: Final = str(Path(sys.executable).parent / "cordon")
PLUGINS: Final = Path(__file__).resolve().parent / "plugins"
#: The most a test may take: a bridge start (a Python process, then one sandboxed worker per
#: plugin) and a few calls, on a loaded 2-CPU machine.
DEADLINE: Final = 60
#: The bridge stops its workers and exits this fast after SIGTERM (or its client leaving).
EXIT_DEADLINE: Final = 15
#: How long a cancellation may take to reach a plugin's task: well under mcpdemo's call
#: timeout (50 s), so only the cancellation, never the timeout, can end a held call in time.
CANCEL_DEADLINE: Final = 20

pytestmark = pytest.mark.anyio

#: A legacy-era client's first request, written by hand (a raw stdio client, or a page's
#: script posting to the HTTP transport).
INITIALIZE: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def write_config(tmp_path: Path) -> Path:
    """Both test plugins; mcpother's call timeout and memory are small (its ``slow`` and
    ``hoard`` tools run into them),
    mcpdemo's is long (a cancellation must not be mistaken for a timeout: see
    CANCEL_DEADLINE)."""
    config = tmp_path / "cordon.toml"
    config.write_text(
        f"""
[runtime]
plugin-dirs = [{str(PLUGINS)!r}]
state-dir = {str(tmp_path / "state")!r}
warm-workers = 0
entry-points = false

[defaults]
call-timeout = "50 s"
max-call-timeout = "60 s"

[plugins.mcpother]
call-timeout = "1 s"
memory = "96 MiB"
"""
    )
    return config


@pytest.fixture
def bridge_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@contextlib.asynccontextmanager
async def stdio_bridge(
    config: Path, *args: str, mode: str = "auto", log: Path | None = None, **options: Any
) -> AsyncIterator[Client]:
    """A connected client (``options``: more of :class:`Client`'s) of ``cordon mcp serve
    --config config *args`` over stdio; the bridge's stderr goes to ``log`` (default: next to
    the config)."""
    log = log or config.parent / "bridge.log"
    params = StdioServerParameters(
        command=CORDON, args=["mcp", "serve", "--config", str(config), *args]
    )
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, **options) as client:
            yield client


@contextlib.asynccontextmanager
async def http_bridge(
    config: Path, *args: str, shown_host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """``cordon mcp serve --transport http --port 0``: yields the URL it printed once ready
    (on ``shown_host``); stopped with SIGTERM, which must make it exit (workers stopped)
    within the deadline."""
    log = config.parent / "bridge-http.log"
    command = [CORDON, "mcp", "serve", "--config", str(config), "--transport", "http"]
    with log.open("w") as errlog:
        process = await anyio.open_process(
            [*command, "--port", "0", *args], stdin=None, stderr=errlog
        )
        async with process:
            try:
                url = await _ready_url(process, log, shown_host)
                yield url
            finally:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with anyio.fail_after(EXIT_DEADLINE):
                    code = await process.wait()
            assert code == 0, f"the bridge exited {code}: {log.read_text()}"


async def _ready_url(process: anyio.abc.Process, log: Path, shown_host: str) -> str:
    assert process.stdout is not None
    line = b""
    with anyio.fail_after(DEADLINE):
        while not line.endswith(b"\n"):
            try:
                line += await process.stdout.receive(1)
            except anyio.EndOfStream:
                raise AssertionError(f"the bridge exited: {log.read_text()}") from None
    text = line.decode().strip()
    assert text.startswith(f"cordon mcp serving on http://{shown_host}:"), text
    return text.rsplit(" ", 1)[1]


def gone(pid: int) -> bool:
    """Whether process ``pid`` exits within the deadline: a worker of a bridge that has exited
    is no descendant of the test's (the leak check cannot see it), so it is asked for by pid."""
    try:
        psutil.Process(pid).wait(timeout=EXIT_DEADLINE)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        psutil.Process(pid).kill()
        return False
    return True


def text_of(result: object) -> str:
    content = getattr(result, "content", [])
    assert len(content) == 1, content
    return str(content[0].text)
