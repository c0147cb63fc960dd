"""Name resolution for ``ctx.http``: the host resolves a granted name itself, in a bounded
way, and hands back one address it checked (see :mod:`._http`, which connects to exactly
that address)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from cordon.protocol import HttpError, PermissionDenied

from ._http_policy import Target, address_problem

__all__ = ["DNS_TIMEOUT", "Resolver"]

#: How long a name may take to resolve, within the request's own deadline: a resolver
#: that hangs must not hold the request (and a concurrency slot) for all of it.
DNS_TIMEOUT: Final = 5.0


class Resolver:
    """One plugin's lookups. ``lookups``: resolver threads running for it (given up on or
    not); at most ``max_lookups``."""

    def __init__(self, plugin: str, max_lookups: int) -> None:
        self.plugin = plugin
        self.max_lookups = max_lookups
        self.lookups = 0
        self._ended: anyio.Event | None = None

    async def lookup(self, host: str, port: int) -> list[Any]:
        """``getaddrinfo`` on a worker thread, at most ``concurrency`` of them per plugin
        *counted until each thread returns*: a lookup given up at its deadline (a resolver
        that does not answer) keeps its thread until the C library gives up, and a plugin
        must not fill the host's threads with those. Past the bound, the next lookup waits
        (inside its request's deadline) for one of them to end."""
        while self.lookups >= self.max_lookups:
            if self._ended is None:
                self._ended = anyio.Event()
            await self._ended.wait()
        self.lookups += 1
        token = anyio.lowlevel.current_token()

        def ended() -> None:
            self.lookups -= 1
            event, self._ended = self._ended, None
            if event is not None:
                event.set()

        def resolve() -> list[Any]:
            try:
                return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            finally:
                try:
                    anyio.from_thread.run_sync(ended, token=token)
                except RuntimeError:
                    pass  # the host's loop is gone: nothing left to count for

        return await anyio.to_thread.run_sync(resolve, abandon_on_cancel=True)

    async def address(self, target: Target) -> str:
        """The address to connect to: the granted IP literal itself, or the first address
        the name resolves to when every one of them is allowed."""
        host = target.host
        if host.kind != "name":
            # Only a grant naming this literal let the request this far (wildcards never
            # cover IPs), which is the operator's say-so for this very address.
            return host.bare
        try:
            with anyio.fail_after(DNS_TIMEOUT):
                infos = await self.lookup(host.bare, target.port)
        except TimeoutError:
            raise HttpError(
                f"http: resolving {host.text} took over {DNS_TIMEOUT} s",
                url=target.url(),
                reason="dns",
                plugin=self.plugin,
            ) from None
        except OSError as exc:
            raise HttpError(
                f"http: cannot resolve {host.text} ({exc.strerror or type(exc).__name__})",
                url=target.url(),
                reason="dns",
                plugin=self.plugin,
            ) from None
        addresses = list(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))
        if not addresses:
            raise HttpError(
                f"http: {host.text} has no address",
                url=target.url(),
                reason="dns",
                plugin=self.plugin,
            )
        for text in addresses:
            why = address_problem(ipaddress.ip_address(text))
            if why is not None:
                # Every address, not only the one we would use: a name that resolves to
                # an internal address at all is pointed there on purpose (DNS rebinding).
                raise PermissionDenied(
                    f"http: {host.text} resolves to {text}, {why}; only a grant naming that "
                    "IP literal reaches it",
                    permission=target.permission,
                    plugin=self.plugin,
                )
        return addresses[0]
