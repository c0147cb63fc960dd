"""What ``ctx.http`` costs per request, against a server on a loopback port.

    .venv/bin/python benchmarks/bench_http.py [--runs N]

Prints medians (ms per request) of:

* a bare httpx2 client (one client; the server closes each connection, so every request
  opens a fresh one, as the host's do): the floor,
* the host's policy alone (URL parse, checks, the pinned fresh connection, audit off),
* the full stack: a plugin in a strict worker calling ``ctx.http.get`` in a loop (wire both
  ways, base64 bodies, grant check, audit),

for an empty answer and a 256 KiB one. Machines here are small and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import anyio
import anyio.abc
import httpx2

from cordon.runtime import Runtime
from cordon.runtime._hostapi._http import HttpParams, HttpPolicy
from cordon.runtime._settings._http_keys import HttpLimits

BIG = 256 * 1024

PLUGIN = textwrap.dedent(
    """
    import time
    from cordon.worker import Context, Plugin

    plugin = Plugin()


    @plugin.tool
    async def loop(ctx: Context, url: str, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await ctx.http.get(url)
            out.append(time.perf_counter() - t)
        return out
    """
)


async def _serve(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                buf += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
        body = b"x" * BIG if b"GET /big" in buf else b""
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        try:
            await stream.send(head.encode() + body)
        except (anyio.BrokenResourceError, OSError):
            pass


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:7.2f} ms"


async def _bench(runs: int) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _serve)
        policy = HttpPolicy("bench", HttpLimits(rate=1e6, burst=10**6, max_response=1 << 20))
        with tempfile.TemporaryDirectory() as tmp:
            plugin = Path(tmp) / "bench"
            plugin.mkdir()
            (plugin / "bench_plugin.py").write_text(PLUGIN)
            grant = f"http:http://127.0.0.1:{port}"
            (plugin / "plugin.toml").write_text(
                '[plugin]\nid = "bench"\nname = "b"\nversion = "1.0.0"\n'
                'entry = "bench_plugin:plugin"\nrequires-cordon = ">=0.1"\n'
                f'permissions = ["{grant}"]\n'
            )
            config = {
                "runtime": {"state-dir": str(Path(tmp) / "state"), "warm-workers": 0},
                "plugins": {
                    "bench": {
                        "grant": [grant],
                        "http": {"rate": 1e6, "burst": 1024, "max-response": "1 MiB"},
                    }
                },
            }
            async with Runtime(config) as rt:
                handle = await rt.load(plugin)
                for path in ("/empty", "/big"):
                    url = f"http://127.0.0.1:{port}{path}"
                    floor = []
                    # One client; the server closes every connection, so each request opens
                    # a fresh one, as the host's do.
                    async with httpx2.AsyncClient(trust_env=False) as client:
                        for _ in range(runs):
                            t = time.perf_counter()
                            await client.get(url)
                            floor.append(time.perf_counter() - t)
                    host = []
                    for _ in range(runs):
                        t = time.perf_counter()
                        await policy.request(
                            HttpParams(method="GET", url=url), allows=lambda _p: True
                        )
                        host.append(time.perf_counter() - t)
                    stack = await handle.call("loop", {"url": url, "n": runs}, timeout=60)
                    print(
                        f"{path:7} httpx2 floor {_ms(floor)}   host policy {_ms(host)}   "
                        f"full stack {_ms(stack)}"
                    )
            shutil.rmtree(plugin, ignore_errors=True)
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    anyio.run(_bench, args.runs)


if __name__ == "__main__":
    main()
