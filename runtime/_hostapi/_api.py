"""The host side of the worker → host API: one :class:`HostAPI` per plugin.

Identity is the ``plugin_id`` this object was built with, i.e. which worker's channel the
request arrived on. Nothing in a request can change it: every params struct forbids unknown
fields, so a ``"plugin": "other"`` in params is an :class:`InvalidParams`, not a hint.

Every call is decoded against its struct, checked against the plugin's
:class:`~cordon.runtime._settings._permissions.PermissionSet` here on the host, carried out, and
recorded in the audit trail with the decision and the outcome.

Wire methods and params (all params are JSON objects; unknown members are rejected):

===========================  ============================================  ===================
method                       params                                        result
===========================  ============================================  ===================
``host/log``                 ``{level?: "debug"|"info"|"warning"|          ``true``, or
                             "error" = "info", event: str,                 ``false`` when
                             fields?: object}``; the worker sends it as    rate-limited;
                             a notification (no id, see :meth:`notify`)    none as a
                                                                           notification
``host/storage.get``         ``{key: str, shared?: bool}``                 ``{found: bool,
                                                                           value: any}``
``host/storage.set``         ``{key: str, value: any, shared?: bool}``     ``null``
``host/storage.delete``      ``{key: str, shared?: bool}``                 ``bool`` (existed)
``host/storage.list``        ``{prefix?: str, limit?: int = 100,           ``[str]``
                             after?: str|null, shared?: bool}``
``host/storage.usage``       ``{shared?: bool}``                           ``{bytes, keys,
                                                                           quota}``
``host/config.get``          ``{key?: str|null, default?: any}``           the value (all
                                                                           settings when
                                                                           ``key`` is null)
``host/events.emit``         ``{topic: str, payload?: any}``               ``null``
``host/exec``                ``{argv: [str], timeout?: float|null,         ``{returncode,
                             input?: str|null, input_encoding?:            stdout, stderr,
                             "utf-8"|"base64" = "utf-8"}``                 truncated}``
``host/http.request``        ``{method: str, url: str, headers?:           ``{status, headers:
                             [[name, value]], content?: base64|null,       [[name, value]],
                             timeout?: float|null}``                       content: base64,
                                                                           url}``
===========================  ============================================  ===================

Permissions: ``log``; ``storage`` (own namespace) or ``storage:shared`` (``shared: true``);
``config``; ``events:emit:<topic>``; ``exec:<argv[0]>`` (and, for ``input``, the operator's
``input = true`` for that command); ``http:<scheme>://<host>:<port>`` (matched against
``http:<pattern>`` grants by origin, see ``_settings._http_keys``; redirect hops re-checked).
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, Literal

import msgspec
import structlog

from cordon.protocol import CordonError, InvalidParams, MethodNotFound, PermissionDenied

from .._settings._permissions import PermissionSet
from ._audit import AuditTrail
from ._events import LIFECYCLE_PREFIX, Deliver, EventBus, Subscription, check_topic
from ._exec import MAX_INPUT, ExecPolicy, check_argv, check_input
from ._http import HttpParams, HttpPolicy
from ._http_policy import check_method, parse_url
from ._logsink import LogSink
from ._storage import Storage

__all__ = [
    "CONFIG_GET",
    "EVENTS_EMIT",
    "EXEC",
    "HTTP_REQUEST",
    "LOG",
    "METHODS",
    "STORAGE_DELETE",
    "STORAGE_GET",
    "STORAGE_LIST",
    "STORAGE_SET",
    "STORAGE_USAGE",
    "HostAPI",
]

log = structlog.get_logger("cordon")

LOG: Final = "host/log"
STORAGE_GET: Final = "host/storage.get"
STORAGE_SET: Final = "host/storage.set"
STORAGE_DELETE: Final = "host/storage.delete"
STORAGE_LIST: Final = "host/storage.list"
STORAGE_USAGE: Final = "host/storage.usage"
CONFIG_GET: Final = "host/config.get"
EVENTS_EMIT: Final = "host/events.emit"
EXEC: Final = "host/exec"
HTTP_REQUEST: Final = "host/http.request"
#: A notification: the worker stopped waiting for a request (see ``_http.HttpPolicy.cancel``).
HTTP_CANCEL: Final = "host/http.cancel"

METHODS: Final = (
    LOG,
    STORAGE_GET,
    STORAGE_SET,
    STORAGE_DELETE,
    STORAGE_LIST,
    STORAGE_USAGE,
    CONFIG_GET,
    EVENTS_EMIT,
    EXEC,
    HTTP_REQUEST,
)

#: An event payload is a message, not a file transfer.
MAX_PAYLOAD: Final = 64 * 1024


# -- params ------------------------------------------------------------------------------
# forbid_unknown_fields everywhere: a "plugin" member (or any other) is an error, so no
# request can even appear to choose whose data it touches.


class _P(msgspec.Struct, forbid_unknown_fields=True):
    pass


class LogParams(_P):
    event: str
    level: Literal["debug", "info", "warning", "error"] = "info"
    fields: dict[str, Any] = {}


class KeyParams(_P):
    key: str
    shared: bool = False


class SetParams(_P):
    key: str
    value: msgspec.Raw
    shared: bool = False


class ListParams(_P):
    prefix: str = ""
    limit: int = 100
    after: str | None = None
    shared: bool = False


class UsageParams(_P):
    shared: bool = False


class ConfigParams(_P):
    key: str | None = None
    default: Any = None


class EmitParams(_P):
    topic: str
    payload: msgspec.Raw = msgspec.Raw(b"null")


class ExecParams(_P):
    argv: list[str]
    timeout: float | None = None
    #: The command's stdin: text, or bytes as base64 (``input_encoding``); ``None``: empty.
    input: str | None = None
    input_encoding: Literal["utf-8", "base64"] = "utf-8"


def _exec_input(p: ExecParams) -> bytes | None:
    """The bytes ``p`` feeds stdin, or :class:`InvalidParams` naming ``input``."""
    if p.input is None or p.input_encoding == "utf-8":
        return check_input(p.input)
    # Refuse by length before decoding: base64 is 4 characters per 3 bytes.
    if len(p.input) > (MAX_INPUT + 2) // 3 * 4:
        raise InvalidParams(f"input is over {MAX_INPUT} bytes", field="input")
    try:
        data = base64.b64decode(p.input, validate=True)
    except binascii.Error:
        raise InvalidParams("input is not valid base64", field="input") from None
    return check_input(data)


_UNKNOWN: Final = re.compile(r"unknown field `([^`]*)`")
_MISSING: Final = re.compile(r"missing required field `([^`]*)`")
_AT: Final = re.compile(r" - at `\$\.?([^`]*)`")


def _field_of(message: str) -> str | None:
    at = _AT.search(message)
    prefix = at.group(1) if at else ""
    for pattern in (_UNKNOWN, _MISSING):
        m = pattern.search(message)
        if m:
            return f"{prefix}.{m.group(1)}" if prefix else m.group(1)
    return prefix or None


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _decode(params: Any, typ: type[msgspec.Struct]) -> Any:
    if params is None or (isinstance(params, msgspec.Raw | bytes) and not params):
        raw: bytes | msgspec.Raw = b"{}"
    elif isinstance(params, msgspec.Raw | bytes):
        raw = params
    else:
        # Host-side callers (and tests) may pass decoded objects; one path for both.
        raw = msgspec.json.encode(params)
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ)
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise InvalidParams(f"invalid params: {text}", field=_field_of(text)) from None
    except msgspec.DecodeError as exc:
        raise InvalidParams(f"params are not valid JSON: {exc}", field=None) from None


_Handler = Callable[[Any], Awaitable[Any]]
#: A method's params struct, its (permission, audit summary), its handler.
_Entry = tuple[type[msgspec.Struct], Callable[[Any], tuple[str, str]], _Handler]


class HostAPI:
    """Serves one plugin's worker → host requests. Pass :meth:`handle` to the plugin's
    ``WorkerProcess(on_host_request=...)``."""

    def __init__(
        self,
        plugin_id: str,
        permissions: PermissionSet,
        *,
        storage: Storage,
        audit: AuditTrail,
        log_sink: LogSink,
        settings: Mapping[str, Any] | None = None,
        events: EventBus | None = None,
        exec_policy: ExecPolicy | None = None,
        http: HttpPolicy | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.permissions = permissions
        self.storage = storage
        self.audit = audit
        self.log_sink = log_sink
        self.settings: Mapping[str, Any] = dict(settings or {})
        self.events = events
        self.exec_policy = exec_policy
        self.http = http
        self._subscriptions: list[Subscription] = []
        self._flush_pending = False
        self._log_denied_told = False
        self._methods: dict[str, _Entry] = {
            LOG: (LogParams, self._describe_log, self._log),
            STORAGE_GET: (KeyParams, self._describe_key, self._storage_get),
            STORAGE_SET: (SetParams, self._describe_key, self._storage_set),
            STORAGE_DELETE: (KeyParams, self._describe_key, self._storage_delete),
            STORAGE_LIST: (ListParams, self._describe_list, self._storage_list),
            STORAGE_USAGE: (UsageParams, self._describe_usage, self._storage_usage),
            CONFIG_GET: (ConfigParams, self._describe_config, self._config_get),
            EVENTS_EMIT: (EmitParams, self._describe_emit, self._emit),
            EXEC: (ExecParams, self._describe_exec, self._exec),
            HTTP_REQUEST: (HttpParams, self._describe_http, self._http),
        }

    async def handle(self, method: str, params: Any) -> Any:
        """Serve one request. Raises a typed :class:`CordonError` for the worker to see."""
        entry = self._methods.get(method)
        if entry is None:
            await self.audit.record(
                self.plugin_id, method, "", allowed=False, outcome="MethodNotFound"
            )
            raise MethodNotFound(f"method {method[:100]!r} not found", method=method[:100])
        typ, describe, run = entry
        summary = ""
        allowed = False
        outcome = "InternalError"
        try:
            p = _decode(params, typ)
            permission, summary = describe(p)
            if not self._may(permission, method, p):
                raise PermissionDenied(permission=permission, plugin=self.plugin_id)
            allowed = True
            result = await run(p)
            # A rate-limited log line is allowed but not written; say so in the trail.
            outcome = "dropped" if method == LOG and result is False else "ok"
            return result
        except CordonError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            await self.audit.record(
                self.plugin_id, method, summary, allowed=allowed, outcome=outcome
            )

    def notify(self, method: str, params: Any) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """Serve one worker → host *notification*: ``host/log`` sent without an id, which is
        how ``ctx.log`` and the worker's stdlib logging send records (no answer, so the
        plugin never waits). Synchronous, so a record reaches the sink before any frame the
        worker sent after it is handled (the call's result among them). The same checks as
        a ``host/log`` request: params decoded, ``log`` required, audited; rate limit and
        redaction in the sink. Nothing goes back: a bad or refused record is audited and
        dropped. Without ``log``, the text of warnings and errors is written as the
        plugin's stderr would be (``plugin.output``, redacted, same rate limit): the
        permission decides whether a plugin's records enter the host's log *as records*
        (levels, fields), and stderr is always forwarded.

        Returns the audit flush to run in the background (``None`` when one is already
        pending), which the caller starts: the record is in the trail's batch already.
        """
        if method == HTTP_CANCEL and self.http is not None:
            # The worker stopped waiting for one of its requests: abort it (nothing to audit:
            # the request's own record says how it ended).
            self.http.cancel(params)
            return None
        if method != LOG:
            # JSON-RPC: an unknown notification is ignored; the trail still shows it.
            self.audit.add(self.plugin_id, method[:100], "", allowed=False, outcome="ignored")
            return self._flush_soon()
        try:
            p = _decode(params, LogParams)
        except (InvalidParams, RecursionError):
            # RecursionError: fields nested past msgspec's depth limit (a hostile frame).
            self.audit.add(self.plugin_id, method, "", allowed=False, outcome="InvalidParams")
            return self._flush_soon()
        permission, summary = self._describe_log(p)
        if not self.permissions.allows(permission):
            self.audit.add(
                self.plugin_id, method, summary, allowed=False, outcome="PermissionDenied"
            )
            if not self._log_denied_told:
                self._log_denied_told = True
                log.warning(
                    "plugin.log_denied",
                    plugin=self.plugin_id,
                    hint="the plugin logs without the 'log' permission: its debug and info "
                    "records are dropped, warnings and errors shown as plugin.output",
                )
            if p.level in ("warning", "error"):
                # The text only, as a stdlib handler on stderr would print it: fields are
                # structure, which is what the permission is about.
                logger = p.fields.get("logger")
                where = f"{logger}: " if isinstance(logger, str) else ""
                line = f"{p.level.upper()}: {where}{p.event}"
                self.log_sink.plugin_output(self.plugin_id, line.encode())
            return self._flush_soon()
        written = self.log_sink.log(self.plugin_id, p.level, p.event, p.fields)
        outcome = "ok" if written else "dropped"
        self.audit.add(self.plugin_id, method, summary, allowed=True, outcome=outcome)
        return self._flush_soon()

    def _flush_soon(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        if self._flush_pending:
            return None
        self._flush_pending = True
        return self._flush_audit

    async def _flush_audit(self) -> None:
        # Records added while this flush writes are written by it too (it loops until the
        # batch is empty); one added after it ends schedules the next.
        try:
            await self.audit.flush()
        finally:
            self._flush_pending = False

    def _may(self, permission: str, method: str, p: Any) -> bool:
        if method == EVENTS_EMIT and p.topic.startswith(LIFECYCLE_PREFIX):
            # cordon.* is the host's lifecycle namespace; a plugin's event there would be a
            # forgery of the runtime's own, whatever the operator granted.
            return False
        allowed = self.permissions.allows(permission)
        if allowed and method == EXEC and self.exec_policy is not None:
            # The operator's argument patterns and the argument-path rule are part of the
            # decision: a refusal is recorded as denied, with the reason in its message.
            self.exec_policy.check(p.argv, plugin=self.plugin_id, has_input=p.input is not None)
        return allowed

    async def subscribe(self, topic_glob: str, deliver: Deliver) -> Subscription:
        """Subscribe this plugin to ``topic_glob`` on the bus; each event is delivered only
        if the plugin holds ``events:subscribe:<topic>`` (lifecycle events always)."""
        if self.events is None:
            raise RuntimeError("no event bus was given to this HostAPI")
        try:
            sub = self.events.subscribe(
                self.plugin_id, topic_glob, deliver, permissions=self.permissions
            )
        except CordonError as exc:
            await self.audit.record(
                self.plugin_id,
                "events.subscribe",
                topic_glob,
                allowed=False,
                outcome=type(exc).__name__,
            )
            raise
        self._subscriptions.append(sub)
        await self.audit.record(self.plugin_id, "events.subscribe", topic_glob, allowed=True)
        return sub

    def close(self) -> None:
        """End this plugin's subscriptions (on unload)."""
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions.clear()

    # -- descriptions: (permission needed, audit summary) --------------------------------

    def _describe_log(self, p: LogParams) -> tuple[str, str]:
        return "log", f"{p.level} {p.event[:100]}"

    def _describe_key(self, p: KeyParams | SetParams) -> tuple[str, str]:
        return _storage_perm(p.shared), f"{'shared ' if p.shared else ''}key={p.key[:200]!r}"

    def _describe_list(self, p: ListParams) -> tuple[str, str]:
        return (
            _storage_perm(p.shared),
            f"{'shared ' if p.shared else ''}prefix={p.prefix[:200]!r} limit={p.limit}",
        )

    def _describe_usage(self, p: UsageParams) -> tuple[str, str]:
        return _storage_perm(p.shared), "shared" if p.shared else ""

    def _describe_config(self, p: ConfigParams) -> tuple[str, str]:
        return "config", f"key={p.key!r}"

    def _describe_emit(self, p: EmitParams) -> tuple[str, str]:
        topic = check_topic(p.topic)
        return f"events:emit:{topic}", f"topic={topic}"

    def _describe_exec(self, p: ExecParams) -> tuple[str, str]:
        argv = check_argv(p.argv)
        summary = shlex.join(argv)
        data = _exec_input(p)
        if data is not None:
            # Its size only: the input is the plugin's data (a manifest, maybe secrets).
            summary += f" <stdin: {len(data)} bytes>"
        return f"exec:{argv[0]}", summary

    def _describe_http(self, p: HttpParams) -> tuple[str, str]:
        # The URL parsed (refusing what is ambiguous) before the grant is looked at; the
        # summary names the origin only: paths and queries carry credentials.
        target = parse_url(p.url, plugin=self.plugin_id)
        return target.permission, f"{check_method(p.method)} {target.origin}"

    # -- the calls -----------------------------------------------------------------------

    async def _log(self, p: LogParams) -> Any:
        return self.log_sink.log(self.plugin_id, p.level, p.event, p.fields)

    async def _storage_get(self, p: KeyParams) -> Any:
        found, value = await self.storage.get(self.plugin_id, p.key, shared=p.shared, raw=True)
        return {"found": found, "value": value}

    async def _storage_set(self, p: SetParams) -> Any:
        await self.storage.set(self.plugin_id, p.key, p.value, shared=p.shared)
        return None

    async def _storage_delete(self, p: KeyParams) -> Any:
        return await self.storage.delete(self.plugin_id, p.key, shared=p.shared)

    async def _storage_list(self, p: ListParams) -> Any:
        return await self.storage.list(
            self.plugin_id, p.prefix, p.limit, after=p.after, shared=p.shared
        )

    async def _storage_usage(self, p: UsageParams) -> Any:
        u = await self.storage.usage(self.plugin_id, shared=p.shared)
        return {"bytes": u.bytes, "keys": u.keys, "quota": u.quota}

    async def _config_get(self, p: ConfigParams) -> Any:
        if p.key is None:
            return dict(self.settings)
        return self.settings.get(p.key, p.default)

    async def _emit(self, p: EmitParams) -> Any:
        if self.events is None:
            raise PermissionDenied(
                "this host has no event bus",
                permission=f"events:emit:{p.topic}",
                plugin=self.plugin_id,
            )
        if len(p.payload) > MAX_PAYLOAD:
            raise InvalidParams(
                f"payload is {len(p.payload)} bytes; the limit is {MAX_PAYLOAD}", field="payload"
            )
        payload = msgspec.json.decode(p.payload)
        await self.events.emit(p.topic, payload, source=self.plugin_id)
        return None

    async def _exec(self, p: ExecParams) -> Any:
        if self.exec_policy is None:
            raise PermissionDenied(
                "this host runs no commands for plugins",
                permission=f"exec:{p.argv[0]}",
                plugin=self.plugin_id,
            )
        # _may ran the policy's check (patterns, argument paths) on these very argv.
        result = await self.exec_policy.run(
            p.argv, timeout=p.timeout, plugin=self.plugin_id, checked=True, input=_exec_input(p)
        )
        return msgspec.structs.asdict(result)

    async def _http(self, p: HttpParams) -> Any:
        if self.http is None:
            raise PermissionDenied(
                "this host makes no HTTP requests for plugins",
                permission="http",
                plugin=self.plugin_id,
            )
        return await self.http.request(p, allows=self.permissions.allows)


def _storage_perm(shared: bool) -> str:
    return "storage:shared" if shared else "storage"
