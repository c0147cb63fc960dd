"""What ``ctx.http`` may reach and carry: a URL taken apart into one unambiguous target, the
address classes a granted *name* must never resolve to, and the methods and headers a plugin
may send. Pure functions (no I/O).

A URL is parsed once, here, into ``(scheme, canonical host, port, path and query)``; the
request the host sends is rebuilt from those parts (see ``_http``), so no second parser
ever gets a say. Refused as ambiguous (:class:`PermissionDenied` naming the URL): any
control character, whitespace or backslash anywhere, userinfo (``a@b``), a
percent-encoded or otherwise non-canonicalisable host (``_settings._http_keys``), a scheme
other than http/https, a port outside 1-65535, an over-long URL.

Address classes (:func:`address_problem`): a name a grant admits is still refused when any
address it resolves to is loopback, private (RFC 1918), link-local, shared/CGNAT
(100.64/10), unique-local (fc00::/7), multicast, unspecified, reserved or documentation
space, a cloud metadata address (169.254.169.254, fd00:ec2::254, 100.100.100.200), or an
IPv6 form that embeds an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``) whose
embedded address is any of those, or Teredo (2001::/32, whose client address is hidden).
Only a grant naming the IP literal itself reaches such an address, and only by that
literal: DNS cannot be pointed at it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal
from urllib.parse import urlsplit

import msgspec

from cordon.protocol import InvalidParams, PermissionDenied

from .._settings._http_keys import DEFAULT_PORTS, Host, canonical_host, parse_port, split_host_port

__all__ = [
    "CREDENTIAL_HEADERS",
    "HOST_HEADERS",
    "MAX_URL",
    "METHODS",
    "Target",
    "address_problem",
    "check_headers",
    "check_method",
    "parse_url",
]

#: A URL longer than this is an upload in disguise (and no API needs it).
MAX_URL: Final = 8192

#: The standard methods. CONNECT (a tunnel) and TRACE (echoes credentials) are not.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Set by the host on every hop (framing, routing, connection management): a plugin-set
#: one could smuggle a second request or reach another virtual host than the one granted.
HOST_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "http2-settings",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
#: Dropped on a hop to another origin unless a secret in them may go there.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_VALUE: Final = re.compile(r"[\t\x20-\x7e]*")
#: Headers per request and bytes of them: an API call's, far below a server's limits.
MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_CGNAT: Final = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")
_V4_COMPAT: Final = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")


class Target(msgspec.Struct, frozen=True):
    """One request's destination, canonical. ``origin`` is what grants are checked against."""

    scheme: Literal["http", "https"]
    host: Host
    port: int
    #: Path and query as sent (``/`` when empty); the fragment is never sent.
    path: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host.text}:{self.port}"

    @property
    def permission(self) -> str:
        return f"http:{self.origin}"

    @property
    def host_header(self) -> str:
        default = DEFAULT_PORTS[self.scheme] == self.port
        return self.host.text if default else f"{self.host.text}:{self.port}"

    def url(self) -> str:
        """The URL as the plugin may see it (canonical host, no userinfo, no fragment)."""
        default = DEFAULT_PORTS[self.scheme] == self.port
        port = "" if default else f":{self.port}"
        return f"{self.scheme}://{self.host.text}{port}{self.path}"


def _refuse(url: str, why: str, plugin: str | None) -> PermissionDenied:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return PermissionDenied(
        f"http: refused {shown!r}: {why}", permission=f"http:{shown}", plugin=plugin
    )


def parse_url(url: str, *, plugin: str | None = None) -> Target:
    """``url`` as a :class:`Target`, or :class:`PermissionDenied` saying why it is refused."""
    if len(url) > MAX_URL:
        raise _refuse(url, f"longer than {MAX_URL} characters", plugin)
    if not url.isprintable() or any(c.isspace() for c in url):
        # urlsplit silently drops tabs and newlines (WHATWG); a browser and a server might
        # not agree on what is left. Refused rather than guessed.
        raise _refuse(url, "control characters or whitespace", plugin)
    if "\\" in url:
        raise _refuse(url, "a backslash (some parsers read it as '/')", plugin)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _refuse(url, f"not a URL ({exc})", plugin) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(url, "only http and https URLs", plugin)
    if not url[len(parts.scheme) :].startswith("://"):
        raise _refuse(url, "expected scheme://host", plugin)
    netloc = parts.netloc
    if "@" in netloc:
        raise _refuse(url, "credentials in the URL (user@host) are refused", plugin)
    try:
        host_text, port_text = split_host_port(netloc)
        host = canonical_host(host_text)
        port = DEFAULT_PORTS[scheme] if port_text in (None, "") else parse_port(port_text)
    except ValueError as exc:
        raise _refuse(url, str(exc), plugin) from None
    path = parts.path or "/"
    if not path.startswith("/"):
        raise _refuse(url, "the path must start with '/'", plugin)
    if parts.query:
        path += "?" + parts.query
    return Target("http" if scheme == "http" else "https", host, port, path)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _V4_COMPAT:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why a name may not resolve to ``ip`` (``None``: a public unicast address)."""
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_loopback or ip.is_unspecified:
            return "the IPv6 loopback address" if ip.is_loopback else "the unspecified address"
        if ip in _TEREDO:
            return "a Teredo address (its IPv4 client is hidden)"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        v4 = _embedded_v4(ip)
        if v4 is not None:
            why = address_problem(v4)
            if why is not None:
                return f"an IPv6 form of {v4} ({why})"
            if ip in _V4_COMPAT:
                return "a deprecated IPv4-compatible IPv6 address"
            return None
        if ip.scope_id:
            return "an IPv6 address with a zone"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


# -- what a request may carry ---------------------------------------------------------------


def check_method(method: str) -> str:
    m = method.upper()
    if m not in METHODS:
        raise InvalidParams(
            f"method {method[:20]!r} is not one of {', '.join(sorted(METHODS))}", field="method"
        )
    return m


def check_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plugin's headers if every one is well-formed and its own to set."""
    if len(headers) > MAX_HEADERS:
        raise InvalidParams(f"more than {MAX_HEADERS} headers", field="headers")
    total = 0
    for i, (name, value) in enumerate(headers):
        where = f"headers[{i}]"
        if not _TOKEN.fullmatch(name):
            raise InvalidParams(f"{where}: {name[:60]!r} is not a header name", field=where)
        if name.lower() in HOST_HEADERS:
            raise InvalidParams(f"{where}: {name} is set by the host, not the plugin", field=where)
        if not _VALUE.fullmatch(value):
            # Never the value in the message: it may be a credential.
            raise InvalidParams(
                f"{where} ({name}): the value has control or non-ASCII characters", field=where
            )
        total += len(name) + len(value) + 4
    if total > MAX_HEADER_BYTES:
        raise InvalidParams(f"headers are over {MAX_HEADER_BYTES} bytes", field="headers")
    return headers
