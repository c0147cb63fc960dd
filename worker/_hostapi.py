"""The host APIs a plugin sees on ``ctx``: thin, typed clients of worker → host requests.

Nothing here is a security boundary: each method only marshals arguments into one request
(see ``cordon.runtime._hostapi._api`` for the wire table) and the host decides. A plugin that
skips these classes and sends raw requests gets exactly the same checks.

``ctx.log.*`` are plain calls (one notification each, see :class:`LogAPI`). All the other
methods are coroutines (``await ctx.storage.get("k")``; from a sync tool,
``ctx.run(ctx.storage.get("k"))``); they raise the typed error the host answered with:
:class:`PermissionDenied` when the operator did not grant the permission,
:class:`QuotaExceeded` for storage, :class:`InvalidParams` for bad arguments,
:class:`CallTimeout` for an exec past its timeout, :class:`CommandNotFound` for an exec of
a command the host does not have.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

import msgspec

from cordon.protocol import CommandNotFound, InvalidParams

__all__ = [
    "CommandNotFound",
    "ConfigAPI",
    "EventsAPI",
    "ExecResult",
    "LogAPI",
    "Logged",
    "StorageAPI",
    "exec_command",
]

RequestFn = Callable[[str, Any], Awaitable[Any]]
NotifyFn = Callable[[str, Any], None]

#: The host API method a log record is sent as (a notification: no id, no answer).
LOG: Final = "host/log"
LEVELS: Final = ("debug", "info", "warning", "error")
#: Bounds on one record as sent. The host's sink cuts events at 256 characters and fields
#: at 16 KiB; these only keep a runaway record far below the frame limit.
MAX_LOG_EVENT: Final = 64 * 1024
MAX_LOG_FIELDS: Final = 256 * 1024

_encoder = msgspec.json.Encoder()


def _json(value: Any, field: str) -> msgspec.Raw:
    """Encode once here: a value that is not JSON fails in the plugin's own frame with a
    clear error, not deep in the transport; the request then carries the bytes as they are."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise InvalidParams(f"{field} is not JSON-encodable: {exc}", field=field) from None


class Logged:
    """What a ``ctx.log`` call returns: the record has already been sent. Awaiting it is
    harmless and gives ``None``, so ``await ctx.log.info(...)`` in older plugins still
    works; nothing needs to await it."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once: awaiting it never suspends

    def __repr__(self) -> str:
        return "<ctx.log record sent>"


LOGGED: Final = Logged()


class LogAPI:
    """``ctx.log.info("event", key=value, ...)``: structured records in the host's log,
    tagged with this plugin's id. Plain calls, like any Python logger's: each sends one
    ``host/log`` notification and returns at once (no round trip, nothing to await), from
    async code or a sync tool's thread alike. A record logged before a call returns reaches
    the host's log before the caller sees the call's result.

    The host checks ``log``, redacts secrets and applies the plugin's rate limit; lines over
    the rate are dropped and counted there. Without ``log``, debug and info records are
    dropped and warnings and errors are written as the plugin's stderr would be (see the
    README). Field values that are not JSON (objects, exceptions) are sent as their repr.
    """

    __slots__ = ("_notify",)

    def __init__(self, notify: NotifyFn) -> None:
        self._notify = notify

    def log(self, level: str, event: str, /, **fields: Any) -> Logged:
        if level not in LEVELS:
            raise InvalidParams(
                f"log level {level!r} is not one of {', '.join(LEVELS)}", field="level"
            )
        self._notify(LOG, log_params(level, event, fields))
        return LOGGED

    def debug(self, event: str, /, **fields: Any) -> Logged:
        return self.log("debug", event, **fields)

    def info(self, event: str, /, **fields: Any) -> Logged:
        return self.log("info", event, **fields)

    def warning(self, event: str, /, **fields: Any) -> Logged:
        return self.log("warning", event, **fields)

    def error(self, event: str, /, **fields: Any) -> Logged:
        return self.log("error", event, **fields)


def log_params(level: str, event: object, fields: dict[str, Any]) -> dict[str, Any]:
    """A ``host/log`` notification's params, bounded so that no record can make a frame
    the host would refuse (and kill the worker for): the host cuts far shorter anyway."""
    text = str(event)
    if len(text) > MAX_LOG_EVENT:
        text = f"{text[:MAX_LOG_EVENT]}…[truncated {len(text) - MAX_LOG_EVENT} chars]"
    try:
        clean = msgspec.to_builtins(fields, enc_hook=repr, str_keys=True)
        size = len(_encoder.encode(clean))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        clean, size = {"_unencodable": f"{type(exc).__name__}: {exc}"[:MAX_LOG_EVENT]}, 0
    if size > MAX_LOG_FIELDS:
        clean = {"_truncated": f"{size} bytes of fields (limit {MAX_LOG_FIELDS})"}
    return {"level": level, "event": text, "fields": clean}


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
    request: RequestFn,
    argv: list[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = None,
) -> ExecResult:
    """Run ``argv`` on the host (argv[0] a bare command name; needs ``exec:<argv[0]>``).
    No shell, output capped (``truncated``), killed after ``timeout``. stdin is empty, or
    ``input`` (at most 1 MiB) where the operator set ``input = true`` for the command."""
    params: dict[str, Any] = {"argv": list(argv), "timeout": timeout}
    if isinstance(input, str):
        params["input"] = input
    elif isinstance(input, bytes | bytearray | memoryview):
        params["input"] = base64.b64encode(input).decode("ascii")
        params["input_encoding"] = "base64"
    elif input is not None:
        raise InvalidParams("input must be str, bytes or None", field="input")
    reply = await request("host/exec", params)
    return msgspec.convert(reply, ExecResult)
