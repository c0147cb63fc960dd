"""What the MCP bridge costs: a tool call through ``cordon mcp serve`` (the official client,
over stdio and streamable HTTP, both protocol eras) against the same call made in-process with
``handle.call``, and the bridge's start until its tools are listed.

    .venv/bin/python benchmarks/bench_mcp.py [--calls N]

Medians (and p90) of sequential round trips of ``hello.echo`` with a small payload; machines
here are small and noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from cordon.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
CORDON = str(Path(sys.executable).parent / "cordon")
PAYLOAD = {"value": {"id": 7, "tags": ["a", "b"], "text": "x" * 64}}


def _config(folder: Path) -> Path:
    config = folder / "cordon.toml"
    config.write_text(
        f"""
[runtime]
plugin-dirs = [{str(ROOT / "examples" / "plugins")!r}]
state-dir = {str(folder / "state")!r}
entry-points = false

[plugins.hello]
grant = ["log"]
"""
    )
    return config


def _report(label: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[int(len(ms) * 0.9) - 1]
    print(f"{label:44} median {statistics.median(ms):7.3f} ms   p90 {p90:7.3f} ms")


async def _timed(calls: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(min(20, calls)):  # warm up: worker started, caches filled
        await call()
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - began)
    return samples


async def _direct(config: Path, calls: int) -> None:
    async with Runtime(config) as rt:
        hello = await rt.load(ROOT / "examples" / "plugins" / "hello")
        _report("in-process handle.call", await _timed(calls, lambda: hello.call("echo", PAYLOAD)))
        _report(
            "in-process rt.invoke (routed)",
            await _timed(calls, lambda: rt.invoke("hello.echo", PAYLOAD)),
        )


async def _stdio(config: Path, calls: int, mode: str, log: Path) -> None:
    params = StdioServerParameters(
        command=CORDON, args=["mcp", "serve", "--config", str(config), "--plugins", "hello"]
    )
    began = time.perf_counter()
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            await client.list_tools()
            start = time.perf_counter() - began
            samples = await _timed(calls, lambda: client.call_tool("hello.echo", PAYLOAD))
    print(f"{'stdio bridge start to first listing (' + mode + ')':44} {start * 1000:7.0f} ms")
    _report(f"MCP stdio call ({mode})", samples)


async def _raw_stdio(config: Path, calls: int, log: Path) -> None:
    """The bridge alone: JSON lines written and read here, no client library in the way."""
    command = [CORDON, "mcp", "serve", "--config", str(config), "--plugins", "hello"]
    with log.open("w") as errlog:
        async with await anyio.open_process(command, stderr=errlog) as process:
            assert process.stdin is not None and process.stdout is not None
            stdin, stdout = process.stdin, process.stdout
            buf = b""

            async def ask(message: dict[str, Any]) -> None:
                nonlocal buf
                await stdin.send(json.dumps(message).encode() + b"\n")
                while b"\n" not in buf:
                    buf += await stdout.receive()
                _, buf = buf.split(b"\n", 1)

            await ask(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"},
                    },
                }
            )
            await stdin.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
            ids = iter(range(1, 1 << 30))
            samples = await _timed(
                calls,
                lambda: ask(
                    {
                        "jsonrpc": "2.0",
                        "id": next(ids),
                        "method": "tools/call",
                        "params": {"name": "hello.echo", "arguments": PAYLOAD},
                    }
                ),
            )
            await stdin.aclose()
            await process.wait()
    _report("MCP stdio call, raw JSON lines (legacy)", samples)


async def _http(config: Path, calls: int, mode: str, log: Path) -> None:
    command = [CORDON, "mcp", "serve", "--config", str(config), "--plugins", "hello"]
    with log.open("w") as errlog:
        process = await anyio.open_process(
            [*command, "--transport", "http", "--port", "0"], stderr=errlog
        )
        async with process:
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
            url = line.decode().split()[-1]
            try:
                async with Client(url, mode=mode) as client:
                    samples = await _timed(calls, lambda: client.call_tool("hello.echo", PAYLOAD))
            finally:
                process.terminate()
                await process.wait()
    _report(f"MCP streamable HTTP call ({mode})", samples)


async def main(calls: int) -> None:
    # The in-process runtime's info lines would bury the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        folder = Path(tmp)
        config = _config(folder)
        await _direct(config, calls)
        await _raw_stdio(config, calls, folder / "raw.log")
        for mode in ("auto", "legacy"):
            await _stdio(config, calls, mode, folder / "stdio.log")
        for mode in ("auto", "legacy"):
            await _http(config, calls, mode, folder / "http.log")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    anyio.run(main, parser.parse_args().calls)
