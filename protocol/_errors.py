"""The rooted exception tree shared by host and worker, and its one mapping to the wire.

Every error that crosses the channel is a JSON-RPC error object ``{code, message, data}``.
``data`` always carries ``"type"`` (the class name) plus the exception's own fields, so a typed
exception raised on one side arrives as the same typed exception, with the same fields, on the
other. :func:`error_to_wire` and :func:`error_from_wire` are the only two places that know this.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "CallCancelled",
    "CallTimeout",
    "CommandNotFound",
    "CordonError",
    "ErrorObject",
    "FrameTooLarge",
    "HttpError",
    "IncompatibleProtocol",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "ParseError",
    "PermissionDenied",
    "PluginError",
    "PluginUnavailable",
    "ProtocolError",
    "QuotaExceeded",
    "RemoteError",
    "SandboxUnavailable",
    "WorkerCrashed",
    "error_from_wire",
    "error_to_wire",
]


class ErrorObject(msgspec.Struct, omit_defaults=True):
    """A JSON-RPC 2.0 error object."""

    code: int
    message: str
    data: Any = None


#: Wire code → the class it decodes to: the first of cordon's classes to declare the code.
_BY_CODE: dict[int, type[CordonError]] = {}
#: Class name → class, for classes that share a code (``data.type`` picks the exact one).
_BY_NAME: dict[str, type[CordonError]] = {}


class CordonError(Exception):
    """Root of every error cordon raises on purpose.

    Subclasses name their structured fields in ``_fields``; those fields are keyword arguments,
    attributes, and the keys of the wire ``data`` object. A subclass in a ``cordon.*`` module
    that declares its own ``code`` is decodable from the wire (see :func:`error_from_wire`) as
    soon as its module is imported: the host's own errors (config, dependencies, registry,
    control socket) round-trip exactly like the protocol's, without a table to keep in step.
    """

    code: ClassVar[int] = -32603
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only cordon's own classes: never a plugin's subclass (it runs in the worker, and a
        # name must not be claimable by code we do not ship).
        if "code" in cls.__dict__ and cls.__module__.partition(".")[0] == "cordon":
            _BY_CODE.setdefault(cls.code, cls)
            _BY_NAME.setdefault(cls.__name__, cls)

    def __init__(self, message: str = "", **fields: Any) -> None:
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown fields {sorted(unknown)}")
        for name in self._fields:
            setattr(self, name, fields.get(name))
        self.message = message or self._default_message()
        super().__init__(self.message)

    def _default_message(self) -> str:
        return type(self).__name__

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields()))


def _rebuild(cls: type[CordonError], message: str, fields: dict[str, Any]) -> CordonError:
    return cls(message, **fields)


# -- JSON-RPC 2.0's own errors ----------------------------------------------------------------


class ProtocolError(CordonError):
    """The peer broke the wire protocol (framing, JSON, or JSON-RPC shape)."""

    code = -32600


class ParseError(ProtocolError):
    code = -32700


class InvalidRequest(ProtocolError):
    code = -32600


# A bare -32600 from a peer that sends no ``data.type`` is the spec's "Invalid Request".
_BY_CODE[InvalidRequest.code] = InvalidRequest


class MethodNotFound(CordonError):
    method: str | None
    code = -32601
    _fields = ("method",)


class InvalidParams(CordonError):
    """Parameters did not match the callee's signature; ``field`` names the offending path."""

    field: str | None
    code = -32602
    _fields = ("field",)


class InternalError(CordonError):
    code = -32603


# -- cordon's own errors (-32000..-32099) -----------------------------------------------------


class PluginError(CordonError):
    """The plugin's own code raised. ``exc_type``/``exc_message`` are the original's; the
    traceback is data for a human, never re-raised or parsed."""

    exc_type: str | None
    exc_message: str | None
    traceback: str | None
    plugin: str | None
    code = -32000
    _fields = ("exc_type", "exc_message", "traceback", "plugin")

    def _default_message(self) -> str:
        return f"{self.exc_type}: {self.exc_message}"


class PermissionDenied(CordonError):
    permission: str | None
    plugin: str | None
    code = -32001
    _fields = ("permission", "plugin")

    def _default_message(self) -> str:
        return f"plugin {self.plugin!r} lacks permission {self.permission!r}"


class QuotaExceeded(CordonError):
    """A resource limit was hit. ``kind`` is one of memory, cpu, storage, files, file-size,
    processes, message-size, log-rate."""

    kind: str | None
    limit: Any
    plugin: str | None
    code = -32002
    _fields = ("kind", "limit", "plugin")

    def _default_message(self) -> str:
        return f"plugin {self.plugin!r} exceeded its {self.kind} quota ({self.limit})"


class CallTimeout(CordonError):
    timeout: float | None
    method: str | None
    plugin: str | None
    code = -32003
    _fields = ("timeout", "method", "plugin")

    def _default_message(self) -> str:
        return f"call {self.method!r} to plugin {self.plugin!r} timed out after {self.timeout} s"


class CallCancelled(CordonError):
    method: str | None
    code = -32004
    _fields = ("method",)


class WorkerCrashed(CordonError):
    """The worker process ended (or was ended) while calls were in flight.

    ``reason`` is the classified exit reason (``exited``, ``signal``, ``protocol-violation``,
    ``memory``, ``cpu``, ``timeout``, ``unresponsive``, ``shutdown``); ``returncode`` is the
    process's exit status (negative for a signal); ``stderr_tail`` is the last lines it wrote.
    """

    plugin: str | None
    reason: str | None
    returncode: int | None
    signal: int | None
    stderr_tail: list[str] | None
    detail: str | None
    code = -32005
    _fields = ("plugin", "reason", "returncode", "signal", "stderr_tail", "detail")

    def _default_message(self) -> str:
        how = f"signal {self.signal}" if self.signal else f"exit code {self.returncode}"
        extra = f": {self.detail}" if self.detail else ""
        return f"worker for plugin {self.plugin!r} died ({self.reason}, {how}){extra}"


class PluginUnavailable(CordonError):
    """The plugin cannot take calls (circuit breaker open, disabled, failed to start)."""

    plugin: str | None
    reason: str | None
    last_exit_reasons: list[str] | None
    retry_after: float | None
    code = -32006
    _fields = ("plugin", "reason", "last_exit_reasons", "retry_after")


class IncompatibleProtocol(ProtocolError):
    ours: list[int] | None
    theirs: list[int] | None
    code = -32007
    _fields = ("ours", "theirs")

    def _default_message(self) -> str:
        return f"no common protocol version: host speaks {self.ours}, worker speaks {self.theirs}"


class FrameTooLarge(ProtocolError):
    """A frame over a limit, refused before it was decoded. ``kind`` is ``bytes`` (or
    ``None``: ``max-message``) or ``values`` (its JSON values, counted by their structural
    bytes: ``max-frame-values``, what decoding it would cost); ``size`` is what was counted
    (for ``values``, as far as the count went: more than ``limit``)."""

    limit: int | None
    size: int | None
    kind: str | None
    plugin: str | None
    code = -32008
    _fields = ("limit", "size", "kind", "plugin")

    def _default_message(self) -> str:
        if self.kind == "values":
            return (
                f"frame from plugin {self.plugin!r} has more than {self.limit} JSON values "
                f"({self.size} counted), over its max-frame-values: refused, not decoded"
            )
        return f"frame of {self.size} bytes exceeds the {self.limit}-byte limit"


class SandboxUnavailable(CordonError):
    """``sandbox = "strict"`` and a layer cannot be applied on this machine; ``missing`` names
    each layer with the reason."""

    plugin: str | None
    missing: list[str] | None
    code = -32009
    _fields = ("plugin", "missing")

    def _default_message(self) -> str:
        return (
            f"strict sandbox refused to start plugin {self.plugin!r}: "
            f"unavailable layer(s): {', '.join(self.missing or [])}"
        )


class CommandNotFound(CordonError):
    """An exec asked for ``command``, which is not an executable on the host's PATH. Raised by
    the host, re-raised as itself in the plugin (shared here so both sides decode it)."""

    code = -32020
    _fields = ("command", "plugin")
    command: str | None
    plugin: str | None

    def _default_message(self) -> str:
        return f"command {self.command!r} not found on the host's PATH"


class HttpError(CordonError):
    """A ``ctx.http`` request the host made failed on the way (name not found, connection
    refused or reset, TLS verification, a malformed answer, too many redirects). ``url`` is
    the URL without credentials; ``reason`` a short class (``dns``, ``connect``, ``tls``,
    ``protocol``, ``redirects``). Refusals are :class:`PermissionDenied`, bounds
    :class:`QuotaExceeded`, deadlines :class:`CallTimeout`."""

    code = -32021
    _fields = ("url", "reason", "plugin")
    url: str | None
    reason: str | None
    plugin: str | None

    def _default_message(self) -> str:
        return f"http request to {self.url!r} failed ({self.reason})"


class RemoteError(CordonError):
    """An error object whose code this version of cordon does not know; kept verbatim."""

    remote_code: int | None
    remote_data: Any
    _fields = ("remote_code", "remote_data")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def error_to_wire(exc: BaseException) -> ErrorObject:
    """Map any exception to a JSON-RPC error object.

    A :class:`CordonError` keeps its code and fields; anything else becomes an internal error
    (the caller wraps plugin exceptions in :class:`PluginError` first, so only cordon's own bugs
    land here).
    """
    if isinstance(exc, RemoteError):
        return ErrorObject(
            code=int(exc.remote_code or InternalError.code),
            message=exc.message,
            data=exc.remote_data,
        )
    if isinstance(exc, CordonError):
        data = {"type": type(exc).__name__}
        data.update({k: _jsonable(v) for k, v in exc.fields().items() if v is not None})
        return ErrorObject(code=exc.code, message=exc.message, data=data)
    return ErrorObject(
        code=InternalError.code,
        message=f"internal error: {type(exc).__name__}: {exc}",
        data={"type": "InternalError"},
    )


def error_from_wire(error: ErrorObject) -> CordonError:
    """Map a JSON-RPC error object back to the typed exception it stands for: the class named
    by ``data.type`` when it has this code (several classes may share one), else the code's."""
    data = error.data if isinstance(error.data, dict) else {}
    type_name = data.get("type")
    named = _BY_NAME.get(type_name) if isinstance(type_name, str) else None
    cls = named if named is not None and named.code == error.code else _BY_CODE.get(error.code)
    if cls is None:
        return RemoteError(error.message, remote_code=error.code, remote_data=error.data)
    fields = {k: data[k] for k in cls._fields if k in data}
    try:
        return cls(error.message, **fields)
    except Exception:
        # The peer's fields do not fit the class (a list where a constructor wants one, a
        # number where it joins strings): keep the error verbatim rather than fail decoding.
        return RemoteError(error.message, remote_code=error.code, remote_data=error.data)
