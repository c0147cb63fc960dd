"""The host APIs a plugin sees on ``ctx``: thin, typed clients of worker → host requests.

Nothing here is a security boundary: each method only marshals arguments into one request
(see ``cordon.runtime._hostapi`` for the wire table) and the host decides. A plugin that
skips these classes and sends raw requests gets exactly the same checks.

All methods are coroutines (``await ctx.log.info("started", n=3)``); they raise the typed
error the host answered with: :class:`PermissionDenied` when the operator did not grant the
permission, :class:`QuotaExceeded` for storage, :class:`InvalidParams` for bad arguments,
:class:`CallTimeout` for an exec past its timeout, :class:`CommandNotFound` for an exec of a
command the host does not have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from cordon.protocol import CommandNotFound, InvalidParams

__all__ = [
    "CommandNotFound",
    "ConfigAPI",
    "EventsAPI",
    "ExecResult",
    "LogAPI",
    "StorageAPI",
    "exec_command",
]

RequestFn = Callable[[str, Any], Awaitable[Any]]

_encoder = msgspec.json.Encoder()


def _json(value: Any, field: str) -> msgspec.Raw:
    """Encode once here: a value that is not JSON fails in the plugin's own frame with a
    clear error, not deep in the transport; the request then carries the bytes as they are."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise InvalidParams(f"{field} is not JSON-encodable: {exc}", field=field) from None


class LogAPI:
    """``await ctx.log.info("event", key=value, ...)``: structured logs in the host's log,
    tagged with this plugin's id. Needs ``log``. Secrets are redacted host-side; lines over
    the plugin's rate are dropped (and counted) — the methods then return ``False``."""

    __slots__ = ("_request",)

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    async def log(self, level: str, event: str, /, **fields: Any) -> bool:
        # Field values the host cannot take as JSON (objects, exceptions) are sent as their
        # repr rather than failing the plugin's log call.
        clean = msgspec.to_builtins(fields, enc_hook=repr, str_keys=True)
        return bool(
            await self._request("host/log", {"level": level, "event": str(event), "fields": clean})
        )

    async def debug(self, event: str, /, **fields: Any) -> bool:
        return await self.log("debug", event, **fields)

    async def info(self, event: str, /, **fields: Any) -> bool:
        return await self.log("info", event, **fields)

    async def warning(self, event: str, /, **fields: Any) -> bool:
        return await self.log("warning", event, **fields)

    async def error(self, event: str, /, **fields: Any) -> bool:
        return await self.log("error", event, **fields)


class StorageAPI:
    """Key-value storage kept by the host. Keys are non-empty strings (≤ 512 UTF-8 bytes, no
    NUL); values anything JSON. Needs ``storage``; ``shared=True`` uses the namespace shared
    by all plugins and needs ``storage:shared``."""

    __slots__ = ("_request",)

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    async def get(self, key: str, default: Any = None, *, shared: bool = False) -> Any:
        reply = await self._request("host/storage.get", {"key": key, "shared": shared})
        if isinstance(reply, dict) and reply.get("found"):
            return reply.get("value")
        return default

    async def set(self, key: str, value: Any, *, shared: bool = False) -> None:
        """Store ``value``; durable on the host once this returns."""
        params = {"key": key, "value": _json(value, "value"), "shared": shared}
        await self._request("host/storage.set", params)

    async def delete(self, key: str, *, shared: bool = False) -> bool:
        """Remove ``key``; ``True`` when it existed."""
        return bool(await self._request("host/storage.delete", {"key": key, "shared": shared}))

    async def list(
        self, prefix: str = "", *, limit: int = 100, after: str | None = None, shared: bool = False
    ) -> list[str]:
        """Keys starting with ``prefix`` in order; page with ``after=<last key seen>``."""
        params = {"prefix": prefix, "limit": limit, "after": after, "shared": shared}
        return list(await self._request("host/storage.list", params))

    async def usage(self, *, shared: bool = False) -> dict[str, int]:
        """``{"bytes": ..., "keys": ..., "quota": ...}`` for the namespace."""
        return dict(await self._request("host/storage.usage", {"shared": shared}))


class ConfigAPI:
    """The plugin's settings from the operator's config (read-only). Needs ``config``."""

    __slots__ = ("_request",)

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    async def get(self, key: str | None = None, default: Any = None) -> Any:
        """The setting ``key`` (or ``default``); with no key, all settings as a dict."""
        return await self._request("host/config.get", {"key": key, "default": default})


class EventsAPI:
    """Emit events on the host's bus. Needs ``events:emit:<topic>``. (Receiving is declared
    with ``@plugin.on_event(glob)`` and needs ``events:subscribe:<topic>``.)"""

    __slots__ = ("_request",)

    def __init__(self, request: RequestFn) -> None:
        self._request = request

    async def emit(self, topic: str, payload: Any = None) -> None:
        params = {"topic": topic, "payload": _json(payload, "payload")}
        await self._request("host/events.emit", params)


class ExecResult(msgspec.Struct, frozen=True):
    returncode: int
    stdout: str
    stderr: str
    truncated: bool


async def exec_command(
    request: RequestFn, argv: list[str], *, timeout: float | None = None
) -> ExecResult:
    """Run ``argv`` on the host (argv[0] a bare command name; needs ``exec:<argv[0]>``).
    No shell, stdin empty, output capped (``truncated``), killed after ``timeout``."""
    reply = await request("host/exec", {"argv": list(argv), "timeout": timeout})
    return msgspec.convert(reply, ExecResult)
