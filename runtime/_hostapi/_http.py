"""``ctx.http``: HTTP requests the host makes for a plugin (the worker has no network).

One :class:`HttpPolicy` per plugin. For each request (``host/http.request``):

1. The URL is parsed once into a canonical target (:mod:`._http_policy`); the permission
   ``http:<scheme>://<host>:<port>`` is checked by HostAPI against the plugin's grants.
2. Method, headers and body are checked: standard methods only; header names are tokens,
   values printable ASCII (no CR/LF/NUL), and the headers that frame or route the message
   (``Host``, ``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Upgrade``, ...)
   are the host's to set; bodies up to ``max-request``.
3. Rate (a token bucket per plugin, ``rate``/``burst``) and concurrency (``concurrency``
   in flight, the rest wait inside their deadline).
4. The host resolves the name itself (:mod:`._http_resolve`: ``getaddrinfo`` on a worker
   thread, inside the request's deadline, a bounded number of threads per plugin) and
   refuses the request if *any* address is in a denied class;
   an IP literal the grant names is taken as it is. It then connects to the checked
   address (the URL it hands the transport carries the IP: nothing resolves again), with
   the ``Host`` header and the TLS server name (SNI, certificate verification) set to the
   name. No proxy or netrc from the environment, no cookie jar, one fresh connection per
   request (a pooled connection verified for one name must not carry another's request).
5. Redirects (301/302/303/307/308) are followed by the host, at most
   :data:`MAX_REDIRECTS`, each hop parsed, granted, resolved and checked as in 1-4. A hop
   to another origin drops ``Authorization``, ``Cookie`` and ``Proxy-Authorization``, and a
   header carrying a secret goes only where that secret may go (:mod:`._secrets`).
6. The response body is read as raw bytes (never decompressed here: ``Accept-Encoding:
   identity`` is sent unless the plugin asks otherwise, and a compressed body is the
   plugin's to inflate inside its own memory limit) and cut off past ``max-response``
   (connection closed, :class:`QuotaExceeded`). Secret values the server echoes back are
   replaced by their placeholder before the answer leaves the host; on a request carrying a
   secret the plugin's ``Accept-Encoding``, ``Range``, ``If-Range`` and ``Accept-Charset``
   are dropped (a compressed, cut or re-encoded echo would slip past that exact match), and
   an answer still encoded or partial is withheld (:class:`HttpError`, reason ``secret``).
7. One audit record per hop: method, origin, status, bytes out and in, elapsed. Never a
   header value, a path or a query (they carry credentials as often as not).

Errors are typed: :class:`PermissionDenied` (grant, address class, secret), ``InvalidParams``
(method, header, body), ``QuotaExceeded`` (``http-rate``, ``http-request-body``,
``http-response-body``), ``HttpTimeout`` (a :class:`CallTimeout`), :class:`HttpError`.
Every message is passed through the secret store's scrub first.
"""

from __future__ import annotations

import base64
import binascii
import math
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import msgspec

from cordon.protocol import (
    CallCancelled,
    CallTimeout,
    CordonError,
    HttpError,
    InvalidParams,
    PermissionDenied,
    QuotaExceeded,
)

from .._settings._http_keys import Grant, HttpLimits
from ._http_policy import (
    CREDENTIAL_HEADERS,
    Target,
    check_headers,
    check_method,
    parse_url,
)
from ._http_resolve import Resolver
from ._secrets import PLACEHOLDER, SecretStore, load_secrets

if TYPE_CHECKING:
    from .._settings._config import PluginSettings
    from ._audit import AuditTrail

__all__ = [
    "MAX_REDIRECTS",
    "HttpParams",
    "HttpPolicy",
    "HttpTimeout",
    "http_for_plugin",
]

#: Redirects followed per request: APIs use one or two; a chain is a loop or a probe.
MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
#: Request headers that have a server compress, cut or re-encode its answer. On a request
#: carrying a secret they are the host's: a value echoed in a gzip body, split over byte
#: ranges or spelled in UTF-16 would pass the exact-match scrub and be rebuilt in the plugin.
_RESHAPING: Final = frozenset({"accept-encoding", "range", "if-range", "accept-charset"})
#: Cancellations remembered for requests not started yet (still queued behind the
#: channel's bound): enough for every request a worker can have waiting.
MAX_EARLY_CANCELS: Final = 4096


class HttpParams(msgspec.Struct, forbid_unknown_fields=True):
    """``host/http.request`` params. ``content``: the body as base64, or ``None``."""

    method: str
    url: str
    headers: list[tuple[str, str]] = []
    content: str | None = None
    timeout: float | None = None
    #: The worker's id for it, so ``host/http.cancel`` can abort it (``None``: not cancellable).
    id: int | None = None


class CancelParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int


_cancel_decoder = msgspec.json.Decoder(CancelParams)


class HttpTimeout(CallTimeout):
    """The request ran past its deadline (the call's ``timeout``, the plugin's ``http``
    timeout, capped by its max-call-timeout); arrives in the plugin as a CallTimeout."""

    timeout: float | None
    method: str | None
    plugin: str | None

    def _default_message(self) -> str:
        return f"{self.method} for plugin {self.plugin!r} timed out after {self.timeout} s"


def _origin_grant(target: Target) -> Grant:
    return Grant(target.scheme, target.host, target.port)


class HttpPolicy:
    """One plugin's ``host/http.request`` calls. ``allows``: the plugin's permission check
    (HostAPI's, for redirect hops); ``max_timeout``: its max-call-timeout."""

    def __init__(
        self,
        plugin: str,
        limits: HttpLimits,
        *,
        secrets: SecretStore | None = None,
        max_timeout: float = 60.0,
        audit: AuditTrail | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.plugin = plugin
        self.limits = limits
        self.secrets = secrets if secrets is not None else SecretStore(plugin, {})
        self.max_timeout = max_timeout
        self.audit = audit
        self._verify = verify
        self._slots = anyio.Semaphore(limits.concurrency)
        self._tokens = float(limits.burst)
        self._refilled = time.monotonic()
        self.in_flight = 0
        #: Running requests by the worker's id, and ids cancelled before they started.
        self._running: dict[int, anyio.CancelScope] = {}
        self._early: dict[int, None] = {}
        #: The highest id started: the host starts a worker's requests in the order they
        #: were sent (and a worker numbers them upwards from a clock, so a restarted worker's
        #: are higher still), so a cancel at or below it is for one that already ended.
        self._max_started = -1
        self._resolver = Resolver(plugin, limits.concurrency)

    def cancel(self, params: Any) -> bool:
        """``host/http.cancel``: the worker stopped waiting for request ``id`` (its call
        timed out or was cancelled); abort it. ``False`` for malformed params."""
        try:
            if isinstance(params, msgspec.Raw | bytes | bytearray | memoryview):
                rid = _cancel_decoder.decode(bytes(params))
            else:
                rid = msgspec.convert(params, CancelParams)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            return False
        scope = self._running.get(rid.id)
        if scope is not None:
            scope.cancel()
        elif rid.id > self._max_started:
            self._early[rid.id] = None
            while len(self._early) > MAX_EARLY_CANCELS:
                del self._early[next(iter(self._early))]
        return True

    # -- checks before anything is sent ----------------------------------------------------

    def target(self, p: HttpParams) -> Target:
        """The request's first target (:class:`PermissionDenied` for a refused URL)."""
        return parse_url(p.url, plugin=self.plugin)

    def timeout_for(self, timeout: float | None) -> float:
        cap = min(self.limits.timeout, self.max_timeout) if timeout is None else self.max_timeout
        if timeout is None:
            return cap
        if not (timeout > 0) or math.isinf(timeout) or math.isnan(timeout):
            raise InvalidParams("timeout must be a positive number", field="timeout")
        # Capped, not refused: the calling tool's own deadline (at most max-call-timeout)
        # ends the wait sooner anyway.
        return min(float(timeout), cap)

    def body(self, content: str | None) -> bytes | None:
        if content is None:
            return None
        limit = self.limits.max_request
        # Refuse by length before decoding: base64 is 4 characters per 3 bytes.
        if len(content) > (limit + 2) // 3 * 4:
            raise self._quota("http-request-body", limit, "the request body")
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            raise InvalidParams("content is not valid base64", field="content") from None
        if len(data) > limit:
            raise self._quota("http-request-body", limit, "the request body")
        return data

    def _quota(self, kind: str, limit: float, what: str) -> QuotaExceeded:
        return QuotaExceeded(
            f"http: {what} is over plugin {self.plugin!r}'s {kind} limit ({limit})",
            kind=kind,
            limit=limit,
            plugin=self.plugin,
        )

    def _take_token(self) -> None:
        now = time.monotonic()
        rate, burst = self.limits.rate, self.limits.burst
        self._tokens = min(float(burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            raise QuotaExceeded(
                f"http: plugin {self.plugin!r} is over its rate of {rate:g} requests/s "
                f"(burst {burst})",
                kind="http-rate",
                limit=rate,
                plugin=self.plugin,
            )
        self._tokens -= 1.0

    # -- the request -----------------------------------------------------------------------

    async def request(
        self, p: HttpParams, *, allows: Callable[[str], bool], first: Target | None = None
    ) -> dict[str, Any]:
        """Carry out one request (its first target already granted by the caller)."""
        target = first if first is not None else self.target(p)
        method = check_method(p.method)
        headers = check_headers(p.headers)
        body = self.body(p.content)
        limit = self.timeout_for(p.timeout)
        if p.id is not None:
            if p.id in self._early:
                # Cancelled while it waited behind the channel's bound: never started.
                del self._early[p.id]
                raise CallCancelled(method=f"http {method} {target.origin}")
            if p.id in self._running:
                raise InvalidParams(f"request id {p.id} is already in flight", field="id")
            self._max_started = max(self._max_started, p.id)
        self._take_token()
        with anyio.CancelScope() as scope:
            if p.id is not None:
                self._running[p.id] = scope
            try:
                with self._scrubbed():
                    with anyio.fail_after(limit):
                        async with self._slots:
                            self.in_flight += 1
                            try:
                                return await self._follow(method, target, headers, body, allows)
                            finally:
                                self.in_flight -= 1
            except TimeoutError:
                raise HttpTimeout(
                    timeout=limit, method=f"http {method} {target.origin}", plugin=self.plugin
                ) from None
            finally:
                if p.id is not None:
                    self._running.pop(p.id, None)
        # Only a host/http.cancel gets here: nobody waits for this answer any more.
        raise CallCancelled(method=f"http {method} {target.origin}")

    @contextmanager
    def _scrubbed(self) -> Iterator[None]:
        """No error leaves with a secret's value in it (its message or any text field: a
        URL a server redirected to may carry what it echoes), whatever raised it."""
        try:
            yield
        except CordonError as exc:
            clean = self.secrets.scrub(exc.message)
            if clean != exc.message:
                exc.message = clean
                exc.args = (clean,)
            for name, value in exc.fields().items():
                if isinstance(value, str):
                    setattr(exc, name, self.secrets.scrub(value))
            raise

    async def _follow(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes | None,
        allows: Callable[[str], bool],
    ) -> dict[str, Any]:
        original = target.origin
        for hop in range(MAX_REDIRECTS + 1):
            if hop and not allows(target.permission):
                raise PermissionDenied(
                    f"http: a redirect to {target.url()!r} leaves the plugin's grant",
                    permission=target.permission,
                    plugin=self.plugin,
                )
            address = await self._resolver.address(target)
            sent = self._hop_headers(
                headers, target, first=hop == 0, cross=target.origin != original
            )
            carries = any(PLACEHOLDER.search(v) for _, v in headers)
            status, raw_headers, content, location = await self._send(
                method, target, address, sent, body, carries=carries
            )
            if status not in _REDIRECTS or location is None:
                return {
                    "status": status,
                    "headers": raw_headers,
                    "content": base64.b64encode(content).decode("ascii"),
                    "url": self.secrets.scrub(target.url()),
                }
            try:
                if not location.isprintable() or any(c.isspace() for c in location):
                    # urljoin drops tabs silently (WHATWG), so parse_url would only see
                    # the guess: the server's own text is refused as a plugin's URL is.
                    shown = location[:200]
                    raise PermissionDenied(
                        f"http: refused {shown!r}: control characters or whitespace",
                        permission=f"http:{shown}",
                        plugin=self.plugin,
                    )
                nxt = parse_url(urljoin(target.url(), location), plugin=self.plugin)
            except PermissionDenied as exc:
                raise PermissionDenied(
                    f"http: refused redirect from {target.origin}: {exc.message}",
                    permission=exc.permission,
                    plugin=self.plugin,
                ) from None
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
                headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
            target = nxt
        raise HttpError(
            f"http: more than {MAX_REDIRECTS} redirects from {original}",
            url=original,
            reason="redirects",
            plugin=self.plugin,
        )

    def _hop_headers(
        self, headers: list[tuple[str, str]], target: Target, *, first: bool, cross: bool
    ) -> list[tuple[str, str]]:
        origin = _origin_grant(target)
        carries = any(PLACEHOLDER.search(v) for _, v in headers)
        out: list[tuple[str, str]] = []
        for name, value in headers:
            if carries and name.lower() in _RESHAPING:
                continue  # the host's own Accept-Encoding: identity goes instead
            if PLACEHOLDER.search(value):
                sub = self.secrets.substitute(value, origin, header=name)
                if sub is None:
                    if first:
                        raise self.secrets.refusal(value, origin)
                    continue  # a redirect hop where its secret may not go: dropped
                out.append((name, sub))
            elif not (cross and name.lower() in CREDENTIAL_HEADERS):
                out.append((name, value))
        if not any(n.lower() == "accept-encoding" for n, _ in out):
            out.append(("Accept-Encoding", "identity"))
        if not any(n.lower() == "user-agent" for n, _ in out):
            out.append(("User-Agent", "cordon"))
        return [("Host", target.host_header), *out]

    def _ssl(self) -> ssl.SSLContext:
        if self._verify is None:
            import httpx2

            self._verify = httpx2.create_ssl_context()
        return self._verify

    async def _send(
        self,
        method: str,
        target: Target,
        address: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        *,
        carries: bool = False,
    ) -> tuple[int, list[list[str]], bytes, str | None]:
        """One hop. ``carries``: the request has a secret in it, so an answer the scrub
        cannot read whole (encoded, or a part of a resource) is withheld."""
        import httpx2

        host = f"[{address}]" if ":" in address else address
        url = httpx2.URL(f"{target.scheme}://{host}:{target.port}{target.path}")
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host.bare
        request = httpx2.Request(method, url, headers=headers, content=body, extensions=extensions)
        transport = httpx2.AsyncHTTPTransport(
            verify=self._ssl() if target.scheme == "https" else False,
            trust_env=False,
            http1=True,
            http2=False,
            retries=0,
        )
        started = time.monotonic()
        status = 0
        received = 0
        outcome = "ok"
        try:
            async with transport:
                try:
                    response = await transport.handle_async_request(request)
                except httpx2.TimeoutException:
                    raise TimeoutError from None
                except (httpx2.HTTPError, OSError, ValueError) as exc:
                    # OSError/ValueError: what a transport lets through unwrapped; typed here
                    # (message scrubbed) rather than logged with its text as a host bug.
                    raise self._failed(target, exc) from None
                status = response.status_code
                try:
                    if status in _REDIRECTS and "location" in response.headers:
                        return status, [], b"", response.headers["location"]
                    if carries:
                        self._check_maskable(target, status, response.headers)
                    content = bytearray()
                    cap = self.limits.max_response
                    try:
                        async for chunk in response.stream:  # type: ignore[union-attr]
                            received += len(chunk)
                            if received > cap:
                                raise self._quota("http-response-body", cap, "the response body")
                            content += chunk
                    except httpx2.TimeoutException:
                        raise TimeoutError from None
                    except (httpx2.HTTPError, OSError, ValueError) as exc:
                        raise self._failed(target, exc) from None
                finally:
                    await response.aclose()
            return status, self._response_headers(response), self._scrub_bytes(content), None
        except CordonError as exc:
            outcome = type(exc).__name__
            raise
        except TimeoutError:
            outcome = "HttpTimeout"
            raise
        finally:
            if self.audit is not None:
                ms = (time.monotonic() - started) * 1000
                self.audit.add(
                    self.plugin,
                    "http.response",
                    f"{method} {target.origin} status={status} out={len(body or b'')} "
                    f"in={received} elapsed={ms:.0f}ms",
                    allowed=True,
                    outcome=outcome,
                )

    def _check_maskable(self, target: Target, status: int, headers: Any) -> None:
        """Refuse an answer to a secret-carrying request whose body the scrub cannot see
        whole: encoded (the server compressed anyway) or partial (206)."""
        coding = str(headers.get("content-encoding", "")).strip().lower()
        if coding in ("", "identity") and status != 206:
            return
        what = f"{coding}-encoded" if coding not in ("", "identity") else "partial (206)"
        raise HttpError(
            f"http: the answer from {target.origin} to a request carrying a secret is {what}: "
            "the host cannot mask the secret in it, so it is withheld",
            url=target.url(),
            reason="secret",
            plugin=self.plugin,
        )

    def _response_headers(self, response: Any) -> list[list[str]]:
        out = []
        for name, value in response.headers.raw:
            text = value.decode("latin-1")
            out.append([name.decode("latin-1").lower(), self.secrets.scrub(text)])
        return out

    def _scrub_bytes(self, content: bytearray) -> bytes:
        data = bytes(content)
        return self.secrets.scrub_bytes(data)

    def _failed(self, target: Target, exc: Exception) -> HttpError:
        import httpx2

        text = str(exc) or type(exc).__name__
        if isinstance(exc, httpx2.ConnectError):
            reason = "tls" if "CERTIFICATE" in text.upper() or "SSL" in text.upper() else "connect"
        elif isinstance(exc, httpx2.ProtocolError):
            reason = "protocol"
        else:
            reason = "transport"
        return HttpError(
            f"http: {target.origin} failed ({reason}): {self.secrets.scrub(text)[:300]}",
            url=target.url(),
            reason=reason,
            plugin=self.plugin,
        )


def http_for_plugin(
    plugin_id: str,
    settings: PluginSettings,
    *,
    audit: AuditTrail | None = None,
    source: str | None = None,
) -> HttpPolicy:
    """The runtime's policy for one plugin: its ``http`` bounds, its secrets read from the
    host's environment now (a missing variable is a ``ConfigError`` naming the plugin, the
    secret and the variable), requests capped by its max-call-timeout."""
    from .._errors import ConfigError

    try:
        secrets = load_secrets(plugin_id, settings.secrets)
    except ConfigError as exc:
        raise ConfigError(source=source, problems=exc.problems) from None
    return HttpPolicy(
        plugin_id,
        settings.http,
        secrets=secrets,
        max_timeout=settings.max_call_timeout,
        audit=audit,
    )
