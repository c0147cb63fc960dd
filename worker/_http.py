"""``ctx.http`` and ``ctx.secret``: HTTP requests made by the host, with secrets the plugin
never holds.

Nothing here touches the network (the worker has none: its network namespace is empty) and
nothing here is a security boundary: :class:`HttpAPI` only marshals a request into one
``host/http.request``, where the host parses the URL, checks the ``http:`` grant, resolves
and checks every address, substitutes secrets and applies the bounds (see
``cordon.runtime._hostapi._http``). No HTTP library is imported in the worker.

A :class:`SecretRef` is a name and nothing else: the value stays on the host. Its text is
the placeholder ``<secret NAME>``, so it works whole or inside a header value
(``{"Authorization": f"Bearer {ref}"}``); the host replaces the placeholder only on requests
to the secret's hosts and refuses the request anywhere else. Printed, logged, returned or
sent in a body, it is the same harmless text.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import msgspec

from cordon.protocol import InvalidParams

__all__ = ["Headers", "HttpAPI", "HttpResponse", "SecretRef", "secret_ref"]

RequestFn = Callable[[str, Any], Awaitable[Any]]
NotifyFn = Callable[[str, Any], None]

HTTP_REQUEST: Final = "host/http.request"
#: Sent when the waiting coroutine is cancelled (the call's deadline, ``$/cancel``): the
#: host aborts the request instead of holding a connection and a slot for its own timeout.
HTTP_CANCEL: Final = "host/http.cancel"
#: Request ids, rising (the host keys in-flight requests by them and takes a cancel for an id
#: it has not started yet as early). Counted from the system's monotonic clock at this
#: process's first request (not at import: workers forked from one zygote share its
#: imports), so a restarted worker's ids are above its predecessor's.
_ids: Iterator[int] | None = None


def _next_id() -> int:
    global _ids
    if _ids is None:
        _ids = itertools.count(time.monotonic_ns())
    return next(_ids)


#: The same grammar as the operator's ``[plugins.<id>.secrets.<NAME>]`` keys.
_SECRET_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_CHARSET: Final = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", re.IGNORECASE)

_encoder = msgspec.json.Encoder()


class SecretRef:
    """A reference to one of this plugin's secrets (``ctx.secret("NAME")``). Its ``str``,
    ``repr`` and format are ``<secret NAME>``: the only thing it holds is the name."""

    __slots__ = ("name",)

    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("a secret reference is read-only")

    def __str__(self) -> str:
        return f"<secret {self.name}>"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("SecretRef", self.name))

    def __reduce__(self) -> tuple[Any, ...]:
        return (SecretRef, (self.name,))


def secret_ref(name: str) -> SecretRef:
    if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name):
        raise InvalidParams(f"{name!r} is not a secret name", field="name")
    return SecretRef(name)


class Headers(Mapping[str, str]):
    """Response headers: names case-insensitive; a repeated header's values joined by
    ``", "`` (``get_list`` keeps them apart, as ``Set-Cookie`` needs)."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = [(k.lower(), v) for k, v in items]

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get_list(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k == key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._items))

    def raw(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class HttpResponse:
    """What ``ctx.http.request`` returns: ``status``, ``headers``, ``content`` (the body as
    received: a ``Content-Encoding`` the server applied is still applied), ``url`` (after
    redirects)."""

    __slots__ = ("content", "headers", "status", "url")

    def __init__(self, status: int, headers: Headers, content: bytes, url: str) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.url = url

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with ``encoding``, else the ``Content-Type`` charset, else
        UTF-8; undecodable bytes become U+FFFD."""
        if encoding is None:
            m = _CHARSET.search(self.headers.get("content-type", ""))
            encoding = m.group(1) if m else "utf-8"
        try:
            return self.content.decode(encoding, "replace")
        except LookupError:
            return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return msgspec.json.decode(self.content)

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.url}>"


def _header_pairs(headers: object) -> list[list[str]]:
    if headers is None:
        return []
    items: Any
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, list | tuple):
        items = list(headers)
    else:
        raise InvalidParams("headers must be a mapping or a list of pairs", field="headers")
    out: list[list[str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise InvalidParams(f"headers[{i}] is not a (name, value) pair", field="headers")
        name, value = item
        if not isinstance(name, str):
            raise InvalidParams(f"headers[{i}]: the name must be a string", field="headers")
        if isinstance(value, SecretRef):
            value = str(value)
        elif not isinstance(value, str):
            raise InvalidParams(
                f"headers[{i}] ({name}): the value must be a string or a secret reference",
                field="headers",
            )
        out.append([name, value])
    return out


#: What ``headers=`` takes: a mapping, or (name, value) pairs for repeated names.
HeadersIn = Mapping[str, "str | SecretRef"] | Sequence[tuple[str, "str | SecretRef"]] | None


class HttpAPI:
    """``ctx.http``: ``await ctx.http.request("GET", url, headers=..., json=...)``; from a
    sync tool ``ctx.run(ctx.http.get(url))``. Needs an ``http:<origin>`` grant."""

    __slots__ = ("_notify", "_request")

    def __init__(self, request: RequestFn, notify: NotifyFn | None = None) -> None:
        self._request = request
        self._notify = notify

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersIn = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        pairs = _header_pairs(headers)
        body: bytes | None = None
        if content is not None and json is not None:
            raise InvalidParams("pass content or json, not both", field="content")
        if json is not None:
            try:
                body = _encoder.encode(json)
            except (TypeError, msgspec.EncodeError, OverflowError) as exc:
                raise InvalidParams(f"json is not JSON-encodable: {exc}", field="json") from None
            if not any(n.lower() == "content-type" for n, _ in pairs):
                pairs.append(["Content-Type", "application/json"])
        elif isinstance(content, str):
            body = content.encode("utf-8")
        elif isinstance(content, bytes | bytearray | memoryview):
            body = bytes(content)
        elif content is not None:
            raise InvalidParams("content must be bytes, str or None", field="content")
        rid = _next_id()
        params: dict[str, Any] = {
            "id": rid,
            "method": method,
            "url": url,
            "headers": pairs,
            "content": None if body is None else base64.b64encode(body).decode("ascii"),
            "timeout": timeout,
        }
        try:
            reply = await self._request(HTTP_REQUEST, params)
        except asyncio.CancelledError:
            if self._notify is not None:
                self._notify(HTTP_CANCEL, {"id": rid})
            raise
        return HttpResponse(
            int(reply["status"]),
            Headers([(str(k), str(v)) for k, v in reply["headers"]]),
            base64.b64decode(reply["content"]),
            str(reply["url"]),
        )

    async def get(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("PUT", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("DELETE", url, **kwargs)
