"""cordon's demo: an application embedding untrusted plugins under operator quotas.

    python3 .ci/dev.py demo          # = .venv/bin/python examples/demo_host.py

It loads the example plugins under ``examples/cordon.toml``, calls a tool, shows the sandbox
each worker runs in, crashes a worker on purpose (with calls in flight) and shows the crash
contained as a typed error and the plugin recovered, then prints per-plugin stats.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from cordon.runtime import CordonError, Runtime, WorkerCrashed, configure_logging

HERE = Path(__file__).resolve().parent


def say(text: str = "") -> None:
    print(text, flush=True)


async def demo(config: Path) -> int:
    async with Runtime(config) as rt:
        say(f"cordon demo — config {config}")
        plugin_dirs = [Path(d) for d in rt.config.runtime.plugin_dirs]
        for d in plugin_dirs:
            for plugin_dir in sorted(p for p in d.iterdir() if (p / "plugin.toml").exists()):
                try:
                    handle = await rt.load(plugin_dir)
                except CordonError as exc:
                    say(f"  ! {plugin_dir.name}: {type(exc).__name__}: {exc.message}")
                    continue
                say(
                    f"  loaded {handle.id:12} {handle.manifest.version:8} "
                    f"{handle.manifest.description}"
                )

        hello = rt.get("hello")
        say()
        say("1. A call through the sandbox:")
        with anyio.fail_after(30):
            answer = await hello.call("greet", {"name": "Ada", "excited": True})
        say(f"   hello.greet(name='Ada', excited=True) -> {answer!r}")
        applied = sorted(k for k, v in hello.sandbox.items() if v == "applied")
        missing = {k: v for k, v in hello.sandbox.items() if v != "applied"}
        say(f"   worker pid {hello.stats().pid}, layers applied: {', '.join(applied)}")
        if missing:
            say(f"   layers not applied here: {missing}")
        say(f"   cgroup: {hello.cgroup}")

        say()
        say("2. Bad input is a typed error naming the field, before plugin code runs:")
        try:
            await hello.call("greet", {"name": 42})
        except CordonError as exc:
            say(f"   {type(exc).__name__}: {exc.message}")

        crashy = rt.get("crashy")
        say()
        say("3. A worker dies (os._exit) while two other calls are in flight:")
        await crashy.call("ok")
        first_pid = crashy.stats().pid
        results: list[Any] = []
        started = anyio.Event()
        count = 0

        def progress(_: object) -> None:
            nonlocal count
            count += 1
            if count == 2:
                started.set()

        async def in_flight() -> None:
            try:
                results.append(await crashy.call("wait", {"seconds": 30}, on_progress=progress))
            except WorkerCrashed as exc:
                results.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                tg.start_soon(in_flight)
                await started.wait()
                try:
                    await crashy.call("exit_now", {"code": 3})
                except WorkerCrashed as exc:
                    say(f"   the crashing call: {type(exc).__name__}: {exc.message}")
        for r in results:
            say(
                f"   an in-flight call:  {type(r).__name__} (reason={r.reason}, "
                f"exit code {r.returncode})"
            )
        say("   the host is fine; the next call gets a fresh worker:")
        with anyio.fail_after(30):
            say(
                f"   crashy.ok() -> {await crashy.call('ok')!r}  "
                f"(pid {first_pid} -> {crashy.stats().pid})"
            )

        say()
        say("4. A call that ignores its timeout is cut off and the worker recycled:")
        try:
            await crashy.call("spin", timeout=0.5)
        except CordonError as exc:
            say(f"   {type(exc).__name__}: {exc.message}")
        with anyio.fail_after(30):
            say(f"   crashy.ok() -> {await crashy.call('ok')!r}")

        say()
        say("5. Stats:")
        for s in rt.stats().values():
            p50 = f"{s.latency_p50_ms:.2f} ms" if s.latency_p50_ms is not None else "-"
            say(
                f"   {s.plugin:12} state={s.state:10} calls={s.calls:3} restarts={s.restarts} "
                f"errors={s.errors or {}} p50={p50} last_exit={s.last_exit_reason}"
            )
    say()
    say("every worker stopped; nothing left running.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "cordon.toml")
    parser.add_argument(
        "--log-level", help="debug|info|warning|error (default: $CORDON_LOG_LEVEL, else warning)"
    )
    parser.add_argument("--log-format", default="console", help="console|json")
    args = parser.parse_args()
    level = args.log_level or os.environ.get("CORDON_LOG_LEVEL") or "warning"
    # Host logs (lifecycle events, redacted plugin output) go to stderr; the demo's story
    # goes to stdout.
    try:
        configure_logging(level.lower(), args.log_format.lower())
    except ValueError as exc:
        parser.error(f"--log-level/--log-format (or CORDON_LOG_LEVEL): {exc}")  # exit 2
    return anyio.run(demo, args.config)


if __name__ == "__main__":
    sys.exit(main())
