"""The ``ctx`` object a plugin's functions receive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._hostapi import ConfigAPI, EventsAPI, LogAPI, StorageAPI
    from ._http import HttpAPI, SecretRef

__all__ = ["Context"]

RequestFn = Callable[[str, Any], Awaitable[Any]]
NotifyFn = Callable[[str, Any], None]
T = TypeVar("T")
RunFn = Callable[[Any, Awaitable[Any]], Any]


class Context:
    """Per-call context: who the plugin is, progress reporting, and the host APIs.

    Everything that reaches outside the sandbox is a request to the host, which checks the
    plugin's permissions; nothing here is trusted by the host.
    """

    __slots__ = ("__dict__", "_notify", "_request", "_run", "call_id", "plugin_id", "scratch_dir")

    def __init__(
        self,
        *,
        plugin_id: str,
        scratch_dir: str,
        call_id: int | str | None,
        request: RequestFn,
        notify: NotifyFn,
        run: RunFn | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.scratch_dir = scratch_dir
        self.call_id = call_id
        self._request = request
        self._notify = notify
        self._run = run

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress of the current call to whoever is waiting on it."""
        from cordon.protocol import PROGRESS

        params: dict[str, Any] = {"id": self.call_id, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self._notify(PROGRESS, params)

    async def request(self, method: str, params: Any = None) -> Any:
        """Send a raw request to the host. Prefer the typed APIs below."""
        return await self._request(method, params)

    def run(self, aw: Awaitable[T], /) -> T:
        """Wait for a host API from a plain ``def`` tool (or any thread but the worker's
        loop): ``ctx.run(ctx.storage.get("k"))``. The awaitable runs on the worker's event
        loop; its result, or the same typed error async code would get, comes back here.
        A cancelled or timed-out call makes a waiting ``ctx.run`` raise
        :class:`CallCancelled`. Called from async code (the loop's own thread) it raises
        ``RuntimeError`` instead of deadlocking: there, ``await`` it."""
        if self._run is None:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise RuntimeError("this context has no event loop to run host APIs on")
        result: T = self._run(self.call_id, aw)
        return result

    @cached_property
    def log(self) -> LogAPI:
        from ._hostapi import LogAPI

        return LogAPI(self._notify)

    @cached_property
    def storage(self) -> StorageAPI:
        from ._hostapi import StorageAPI

        return StorageAPI(self._request)

    @cached_property
    def config(self) -> ConfigAPI:
        from ._hostapi import ConfigAPI

        return ConfigAPI(self._request)

    @cached_property
    def events(self) -> EventsAPI:
        from ._hostapi import EventsAPI

        return EventsAPI(self._request)

    @cached_property
    def http(self) -> HttpAPI:
        """HTTP requests the host makes (needs ``http:<origin>``; see ``_http``)."""
        from ._http import HttpAPI

        return HttpAPI(self._request, self._notify)

    def secret(self, name: str) -> SecretRef:
        """A reference to the operator-configured secret ``name``, usable as (part of) a
        header value in ``ctx.http``; its text is ``<secret NAME>``, never the value."""
        from ._http import secret_ref

        return secret_ref(name)

    async def exec(
        self, argv: list[str], *, input: str | bytes | None = None, timeout: float | None = None
    ) -> Any:
        """Run an allowlisted command on the host side (needs ``exec:<argv[0]>``); ``input``
        is fed to its stdin (needs the operator's ``input = true`` for the command)."""
        from ._hostapi import exec_command

        return await exec_command(self._request, argv, input=input, timeout=timeout)
