"""What a plugin's log line costs, through a real worker, side by side in one run:

- *plain ``ctx.log.info``*: one ``host/log`` notification per record, nothing awaited;
- *stdlib ``logging``*: the same record from ``logging.getLogger(...).info``;
- *request round trip*: the same record as a ``host/log`` *request*, awaited (what
  ``await ctx.log.info`` was before records became notifications).

Each round is one call logging ``RECORDS`` records; the time is the whole call (every record
is in the host's sink by the time it returns). The host's rate limit is set out of the way,
so the sink takes every record. Prints medians over ``ROUNDS`` rounds, in microseconds per
record, and the host CPU per record.

    python benchmarks/bench_logging.py
"""

from __future__ import annotations

import statistics
import tempfile
import textwrap
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final

import anyio
import psutil
import structlog

from cordon.runtime import Runtime

RECORDS: Final = 2000
ROUNDS: Final = 7

_MANIFEST = """
[plugin]
id = "logbench"
name = "Log bench"
version = "0.1.0"
entry = "logbench:plugin"
requires-cordon = ">=0.1"
permissions = ["log"]
"""

_PLUGIN = textwrap.dedent(
    """
    import logging

    from cordon.worker import Context, Plugin

    plugin = Plugin()
    log = logging.getLogger("logbench")


    @plugin.tool
    async def plain(ctx: Context, n: int) -> int:
        for i in range(n):
            ctx.log.info("line", i=i)
        return n


    @plugin.tool
    async def stdlib(ctx: Context, n: int) -> int:
        for i in range(n):
            log.info("line %d", i)
        return n


    @plugin.tool
    async def roundtrip(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.request("host/log", {"level": "info", "event": "line", "fields": {"i": i}})
        return n
    """
)


def _drop(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    raise structlog.DropEvent


async def main() -> None:
    # Records are taken and dropped unrendered: the rendering is not what is measured.
    structlog.configure(
        processors=[structlog.processors.add_log_level, _drop],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plugin_dir = root / "logbench"
        plugin_dir.mkdir()
        (plugin_dir / "plugin.toml").write_text(_MANIFEST)
        (plugin_dir / "logbench.py").write_text(_PLUGIN)
        config = {
            "runtime": {"state-dir": str(root / "state"), "warm-workers": 0},
            "defaults": {"log-rate": 1_000_000_000, "call-timeout": "60 s"},
            "plugins": {"logbench": {"grant": ["log"]}},
        }
        async with Runtime(config) as rt:
            handle = await rt.load(plugin_dir)
            await handle.call("plain", {"n": 10})
            host = psutil.Process()
            print(f"cordon log records, {RECORDS} per call, median of {ROUNDS} rounds")
            for tool in ("plain", "stdlib", "roundtrip"):
                walls, cpus = [], []
                for _ in range(ROUNDS):
                    cpu0 = sum(host.cpu_times()[:2])
                    t0 = time.perf_counter()
                    await handle.call(tool, {"n": RECORDS})
                    walls.append((time.perf_counter() - t0) / RECORDS * 1e6)
                    cpus.append((sum(host.cpu_times()[:2]) - cpu0) / RECORDS * 1e6)
                print(
                    f"  {tool:<10} {statistics.median(walls):7.1f} us/record wall"
                    f"   host cpu {statistics.median(cpus):6.1f} us/record"
                )


if __name__ == "__main__":
    anyio.run(main)
