"""The ``ctx`` object a plugin's functions receive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._hostapi import ConfigAPI, EventsAPI, LogAPI, StorageAPI

__all__ = ["Context"]

RequestFn = Callable[[str, Any], Awaitable[Any]]
NotifyFn = Callable[[str, Any], None]


class Context:
    """Per-call context: who the plugin is, progress reporting, and the host APIs.

    Everything that reaches outside the sandbox is a request to the host, which checks the
    plugin's permissions; nothing here is trusted by the host.
    """

    __slots__ = ("__dict__", "_notify", "_request", "call_id", "plugin_id", "scratch_dir")

    def __init__(
        self,
        *,
        plugin_id: str,
        scratch_dir: str,
        call_id: int | str | None,
        request: RequestFn,
        notify: NotifyFn,
    ) -> None:
        self.plugin_id = plugin_id
        self.scratch_dir = scratch_dir
        self.call_id = call_id
        self._request = request
        self._notify = notify

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

    @cached_property
    def log(self) -> LogAPI:
        from ._hostapi import LogAPI

        return LogAPI(self._request)

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

    async def exec(self, argv: list[str], *, timeout: float | None = None) -> Any:
        """Run an allowlisted command on the host side (needs ``exec:<argv[0]>``)."""
        from ._hostapi import exec_command

        return await exec_command(self._request, argv, timeout=timeout)
