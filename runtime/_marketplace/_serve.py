"""``cordon registry serve``: the app under uvicorn, on a socket bound here.

Binding the socket ourselves (rather than letting uvicorn bind it) means ``--port 0`` works and
the bound URL is printed once the socket is listening: a connection made after the line
appears waits in the listen backlog until the server accepts it, so a script (or a test) can
use the line as its readiness signal without polling.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ._publish import MAX_PACKAGE_BYTES

__all__ = ["serve"]

#: Connections waiting to be accepted; a burst beyond this is refused by the kernel.
_BACKLOG: Final = 512
#: On SIGTERM, in-flight requests get this long to finish.
_GRACEFUL_SECONDS: Final = 5
#: Open connections served at once; more get a 503 rather than exhausting fds.
_MAX_CONNECTIONS: Final = 1000
#: An idle keep-alive connection is closed after this (a slowloris holds nothing long).
_KEEP_ALIVE_SECONDS: Final = 5


def serve(
    data_dir: Path,
    host: str,
    port: int,
    *,
    max_package_bytes: int = MAX_PACKAGE_BYTES,
    on_ready: Callable[[str], None] = print,
) -> None:
    import uvicorn

    from ._app import create_app

    app = create_app(data_dir, max_package_bytes=max_package_bytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
    # Accepted sockets inherit TCP_NODELAY from the listener (Linux). asyncio sets it only on
    # sockets whose proto is IPPROTO_TCP, which create_server's (proto 0) are not: without it,
    # a keep-alive response written as headers then body waits out the peer's delayed ACK
    # (~40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        loop="asyncio",
        timeout_graceful_shutdown=_GRACEFUL_SECONDS,
        limit_concurrency=_MAX_CONNECTIONS,
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        server_header=False,
    )
    server = uvicorn.Server(config)
    on_ready(f"http://{shown}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
