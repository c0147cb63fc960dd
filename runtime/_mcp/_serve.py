"""The bridge's transports: stdio (the MCP client starts ``cordon mcp serve`` and owns its
stdin/stdout) and streamable HTTP (on loopback unless the operator says otherwise).

Both serve whichever protocol era the client speaks, as the SDK decides per connection: a
client that opens with ``initialize`` gets the handshake revisions (2024-11-05 to 2025-11-25),
one whose first request carries the 2026-07-28 ``_meta`` envelope (``server/discover``, or any
request) gets the stateless revision with no handshake.

**stdio.** stdout carries MCP and nothing else: fd 1 points at stderr while the bridge serves
(the protocol writes to a private duplicate), so a stray ``print`` in cordon (or in anything it
imports) lands on stderr, and cordon's own log lines go to stderr anyway. Both ends are driven
by the event loop (:mod:`._stdio`), so SIGTERM or SIGINT stops the bridge, and every worker,
even while the client keeps stdin open or stops reading stdout. EOF on stdin (the client
left) stops it too.

**HTTP.** No authentication: anyone who can reach the port can run every exposed tool. So it
binds loopback by default and refuses any other address unless ``allow_remote`` is set, and on
loopback the SDK's DNS-rebinding check (``Host``/``Origin`` must be loopback) is on, so a web
page in the operator's browser cannot drive it either.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Any, Final, cast

import anyio
import structlog

from .._core._runtime import Runtime
from .._settings._config import Config
from ._bridge import Bridge
from ._stdio import claimed_stdio

__all__ = ["DEFAULT_PORT", "RemoteBindRefused", "is_loopback", "serve_http", "serve_stdio"]

log = structlog.get_logger("cordon")

DEFAULT_PORT: Final = 8471
#: Connections waiting to be accepted on the HTTP listener.
_BACKLOG: Final = 128
#: On SIGTERM, HTTP requests in flight get this long before the runtime stops the workers.
_GRACEFUL_SECONDS: Final = 3
#: Open HTTP connections served at once (each client holds one or two, an SSE stream among
#: them); more get a 503 rather than exhausting fds.
_MAX_CONNECTIONS: Final = 256


class RemoteBindRefused(ValueError):
    """``--host`` is not a loopback address and remote serving was not allowed."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it could resolve anywhere


@contextlib.asynccontextmanager
async def _running_bridge(
    config: Config, plugins: Collection[str] | None, separator: str
) -> AsyncIterator[Bridge]:
    async with Runtime(config) as rt:
        report = await rt.load_all(entry_points=config.runtime.entry_points)
        for failure in report.failed:
            log.error(
                "plugin.load_failed",
                plugin=failure.plugin,
                path=failure.path,
                reason=failure.reason,
            )
        bridge = Bridge(rt, plugins, separator)
        bridge.check_plugins()
        await bridge.start_workers()
        log.info("mcp.ready", tools=[t.name for t in bridge.tools()])
        yield bridge


async def _stop_on_signal(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.warning("mcp.stopping", signal=signal.Signals(signum).name)
            stop()
            return


async def serve_stdio(
    config: Config, plugins: Collection[str] | None = None, separator: str = "."
) -> int:
    """Serve MCP on this process's stdin/stdout until EOF or SIGTERM/SIGINT."""
    from mcp.server.stdio import stdio_server

    # Claimed before any plugin loads: from here on fd 1 is stderr for everyone else.
    with claimed_stdio() as (stdin, stdout), anyio.CancelScope() as stopping:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, stopping.cancel)
            async with (
                stdio_server(stdin=cast(Any, stdin), stdout=cast(Any, stdout)) as (read, write),
                _running_bridge(config, plugins, separator) as bridge,
            ):
                server = bridge.server()
                await server.run(read, write, server.create_initialization_options())
            tg.cancel_scope.cancel()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host, family = "127.0.0.1", socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=_BACKLOG)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _security(host: str) -> Any:
    from mcp.server.transport_security import TransportSecuritySettings

    if not is_loopback(host):
        # Served remotely on purpose: the operator chose who can reach it.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    names = sorted({shown, "127.0.0.1", "localhost", "[::1]"})
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:*" for n in names],
        allowed_origins=[f"http://{n}:*" for n in names],
    )


@contextlib.contextmanager
def _no_signal_capture() -> Iterator[None]:
    yield


async def serve_http(
    config: Config,
    plugins: Collection[str] | None = None,
    separator: str = ".",
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    on_ready: Callable[[str], None] = print,
) -> int:
    """Serve MCP over streamable HTTP at ``http://host:port/mcp`` until SIGTERM/SIGINT;
    ``on_ready`` gets the URL once every exposed worker is up and the socket listens (a
    connection made after it waits in the backlog, so it is a readiness signal)."""
    if not (allow_remote or is_loopback(host)):
        raise RemoteBindRefused(
            f"--host {host} is not a loopback address: the MCP bridge has no authentication, "
            "so anyone who can reach it could run every exposed tool; pass --allow-remote to "
            "serve it there anyway (behind your own authentication)"
        )
    import uvicorn

    sock = _bind(host, port)
    try:
        bound = sock.getsockname()[1]
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        async with _running_bridge(config, plugins, separator) as bridge:
            server = bridge.server()
            app = server.streamable_http_app(host=host, transport_security=_security(host))
            uv = uvicorn.Server(
                uvicorn.Config(
                    app,
                    log_level="warning",
                    access_log=False,
                    lifespan="off",
                    http="h11",
                    loop="asyncio",
                    timeout_graceful_shutdown=_GRACEFUL_SECONDS,
                    limit_concurrency=_MAX_CONNECTIONS,
                    server_header=False,
                )
            )
            # uvicorn would take SIGTERM/SIGINT itself and re-raise them once it stops,
            # killing the process before the runtime stops its workers; cordon handles them.
            uv.capture_signals = _no_signal_capture  # type: ignore[method-assign]

            def stop() -> None:
                uv.should_exit = True

            async with anyio.create_task_group() as tg, server.session_manager.run():
                tg.start_soon(_stop_on_signal, stop)
                on_ready(f"http://{shown}:{bound}/mcp")
                await uv.serve(sockets=[sock])
                tg.cancel_scope.cancel()
    finally:
        sock.close()
    return 0
