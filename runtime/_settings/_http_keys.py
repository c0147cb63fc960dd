"""``http:<pattern>`` grants, URL hosts in their one canonical form, and the ``http`` and
``secrets`` tables of a plugin's section.

Pure (no I/O, no DNS): the grant grammar is needed where the config is checked (this room)
and where requests are decided (``_hostapi._http_policy``, which imports it).

Grant grammar (``http:`` followed by one origin pattern, never a path):

* ``api.github.com``: ``https`` on port 443 only. A scheme and a port apply only when
  written: ``api.github.com:8443`` is https on 8443, ``http://127.0.0.1:8080`` plain http on
  8080, ``http://example.org`` plain http on 80.
* ``*.slack.com``: any name *below* ``slack.com`` at a label boundary (``a.slack.com``,
  ``a.b.slack.com``), never ``slack.com`` itself (grant both if both are meant) nor
  ``evilslack.com``. At least two labels after ``*.`` (``*.com`` is refused); ``*`` nowhere
  else; no wildcard over IP addresses.
* An IP literal (``10.0.0.5``, ``[fd00::1]``) names exactly that address; it is the only way
  a plugin reaches a loopback, private, link-local or metadata address (see the policy).

Hosts, in grants and in URLs alike, are canonicalised before anything compares them:
UTS #46 mapping (full-width dots and letters, case) and IDNA to ``xn--`` form, lowercase, one
trailing dot dropped, IPv6 brackets and compression, and a host whose last label is a number
parsed as the IPv4 address it is in any spelling the C library and browsers accept
(``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``: all ``127.0.0.1``). Anything that
does not canonicalise cleanly (percent-encoding, a zone id, a label past 63 characters, an
ends-in-a-number host that is no IPv4 address, control characters) is refused.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import msgspec

from ._units import parse_duration, parse_size
from ._validate import Checker, Invalid, join, show

__all__ = [
    "HTTP_PREFIX",
    "Grant",
    "HttpLimits",
    "SecretSpec",
    "canonical_host",
    "check_http_scope",
    "grant_covers",
    "parse_grant",
    "parse_http_table",
    "parse_secrets",
]

HTTP_PREFIX: Final = "http:"
DEFAULT_PORTS: Final = {"https": 443, "http": 80}
#: DNS: 253 characters in text form, 63 per label.
MAX_HOST: Final = 253
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: WHATWG URL: a host whose last label is a number is an IPv4 address (decimal, 0x hex, or
#: octal with a leading 0), however many parts it has.
_NUMERIC_LABEL: Final = re.compile(r"0x[0-9a-f]*|[0-9]+")
_FORBIDDEN_IN_HOST: Final = frozenset("%\\/@?#[]:<>^|{}\"' ")
_PORT: Final = re.compile(r"[0-9]{1,5}")
SECRET_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

HostKind = Literal["name", "ipv4", "ipv6"]


class Host(msgspec.Struct, frozen=True):
    """A canonical host: ``text`` is how it is compared and shown (``[v6]`` bracketed)."""

    text: str
    kind: HostKind

    @property
    def bare(self) -> str:
        """The host without IPv6 brackets (for the resolver, TLS server name)."""
        return self.text[1:-1] if self.kind == "ipv6" else self.text


def canonical_host(raw: str) -> Host:
    """``raw`` (a URL's or a grant's host) in canonical form, or ``ValueError`` saying why
    it is ambiguous or malformed."""
    if not raw:
        raise ValueError("the host is empty")
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise ValueError(f"unbalanced IPv6 brackets in {raw!r}")
        inner = raw[1:-1]
        if "%" in inner:
            raise ValueError("an IPv6 zone id is refused")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{raw!r} is not an IPv6 address") from None
        text = v6.compressed
        if v6.ipv4_mapped is not None:
            # One spelling on every Python: 3.13 writes a mapped address's last 32 bits as a
            # dotted quad ("::ffff:127.0.0.1"), 3.11 and 3.12 as two hex groups, which stay
            # the canonical form (grants and audit records keep one text across versions).
            low = int(v6) & 0xFFFFFFFF
            text = f"::ffff:{low >> 16:x}:{low & 0xFFFF:x}"
        return Host(f"[{text}]", "ipv6")
    if not raw.isprintable() or any(c in _FORBIDDEN_IN_HOST or c.isspace() for c in raw):
        raise ValueError(f"{raw!r} has characters no host name has")
    text = raw
    if not text.isascii():
        import idna  # httpx2's dependency; only non-ASCII hosts need it

        try:
            # UTS #46 mapping: case, full-width letters, digits and dots (U+3002, U+FF0E).
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"{raw!r} is not a valid international name ({exc})") from None
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    labels = text.split(".")
    if not text or any(not label for label in labels):
        raise ValueError(f"{raw!r} has an empty label")
    if _NUMERIC_LABEL.fullmatch(labels[-1]) and text.isascii():
        try:
            # inet_aton reads every legacy spelling (2130706433, 0x7f.1, 127.1, 0177.0.0.1),
            # as the resolver and browsers do. Whitespace was refused above: glibc would
            # ignore what follows it.
            packed = socket.inet_aton(text)
        except OSError:
            raise ValueError(f"{raw!r} ends in a number but is no IPv4 address") from None
        return Host(str(ipaddress.IPv4Address(packed)), "ipv4")
    if not text.isascii():
        import idna

        try:
            text = idna.encode(text, uts46=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"{raw!r} is not a valid international name ({exc})") from None
        labels = text.split(".")
    elif "xn--" in text:
        import idna

        try:
            idna.decode(text)
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"{raw!r} has an invalid xn-- label ({exc})") from None
    if len(text) > MAX_HOST or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{raw!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise ValueError(f"{raw!r} maps to a name ending in a number")
    return Host(text, "name")


class Grant(msgspec.Struct, frozen=True):
    """One origin pattern: ``scheme``, ``host`` (canonical), ``port``; ``wildcard``: every
    name below ``host``."""

    scheme: Literal["http", "https"]
    host: Host
    port: int
    wildcard: bool = False

    def __str__(self) -> str:
        return f"{self.scheme}://{'*.' if self.wildcard else ''}{self.host.text}:{self.port}"


def split_host_port(text: str) -> tuple[str, str | None]:
    """``host[:port]`` with ``[v6]`` brackets kept: ``(host, port text or None)``."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced IPv6 brackets in {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: unexpected text after the IPv6 address")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, None
    return host, port


def parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port (1-65535)")
    return int(text)


@functools.lru_cache(maxsize=1024)
def parse_grant(scope: str) -> Grant:
    """The scope of an ``http:`` permission as a :class:`Grant`, or ``ValueError``."""
    rest = scope
    scheme: Literal["http", "https"] = "https"
    if "://" in rest:
        written, _, rest = rest.partition("://")
        if written not in ("http", "https"):
            raise ValueError(f"{scope!r}: the scheme must be http or https")
        scheme = "http" if written == "http" else "https"
    if any(c in rest for c in "/?#@\\"):
        raise ValueError(f"{scope!r}: a grant names an origin (host and port), not a path")
    host_text, port_text = split_host_port(rest)
    port = DEFAULT_PORTS[scheme] if port_text is None else parse_port(port_text)
    wildcard = host_text.startswith("*.")
    if wildcard:
        host_text = host_text[2:]
    if "*" in host_text:
        raise ValueError(f"{scope!r}: '*' is only allowed as a whole first label ('*.name')")
    host = canonical_host(host_text)
    if wildcard and host.kind != "name":
        raise ValueError(f"{scope!r}: a wildcard cannot cover IP addresses")
    if wildcard and host.text.count(".") < 1:
        raise ValueError(f"{scope!r}: '*.' needs at least two labels after it ('*.slack.com')")
    return Grant(scheme, host, port, wildcard)


def check_http_scope(scope: str) -> str | None:
    """``None`` when ``scope`` is a valid grant pattern, else why not (for config/manifest)."""
    try:
        parse_grant(scope)
    except ValueError as exc:
        return str(exc)
    return None


def grant_covers(pattern: Grant, target: Grant) -> bool:
    """Does ``pattern`` cover ``target`` (a concrete origin, or another pattern)?"""
    if pattern.scheme != target.scheme or pattern.port != target.port:
        return False
    if not pattern.wildcard:
        return not target.wildcard and pattern.host == target.host
    if target.host.kind != "name":
        return False
    return target.host.text.endswith("." + pattern.host.text) or (
        target.wildcard and target.host == pattern.host
    )


def scope_matches(concrete: str, pattern: str) -> bool:
    """For :mod:`._permissions`: ``http:`` scopes compared as origins, not as text globs."""
    try:
        return grant_covers(parse_grant(pattern), parse_grant(concrete))
    except ValueError:
        return False


# -- [plugins.<id>].http: the bounds ----------------------------------------------------------


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-plugin bounds on ``ctx.http`` (``[plugins.<id>] http = {...}``)."""

    #: A request body is an API call's payload, not an upload channel; and it crosses the
    #: wire base64-encoded inside one frame.
    max_request: int = 1024 * 1024
    #: Read past this and the response is cut off (connection closed, typed error): the host
    #: holds it in memory and ships it base64 (4/3) in one frame under max-message.
    max_response: int = 4 * 1024 * 1024
    #: Requests in flight at once; more wait their turn (inside their timeout).
    concurrency: int = 4
    #: Requests per second (token bucket refilled at this rate, holding ``burst``); a request
    #: past it is refused at once with QuotaExceeded (waiting would hold host slots).
    rate: float = 10.0
    burst: int = 20
    #: A request's whole time (DNS, connect, every redirect, body) when the call sets none;
    #: never more than the plugin's max-call-timeout.
    timeout: float = 10.0


_HTTP_KEYS: Final = ("max-request", "max-response", "concurrency", "rate", "burst", "timeout")
#: Past this a response cannot fit a frame even at the default max-message (base64 is 4/3).
MAX_RESPONSE_CAP: Final = 64 * 1024 * 1024


def parse_http_table(
    ck: Checker, path: str, value: object, base: HttpLimits, _base_dir: Path | None
) -> HttpLimits:
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return base
    ck.check_keys(path, table, _HTTP_KEYS)
    changes: dict[str, object] = {}
    for key in ("max-request", "max-response"):
        if key in table:
            at = join(path, key)
            n = ck.expect_parsed(at, table[key], parse_size, 'a size like "1 MiB"')
            if isinstance(n, int):
                if not 0 < n <= MAX_RESPONSE_CAP:
                    ck.add(at, f"must be between 1 B and {MAX_RESPONSE_CAP // (1 << 20)} MiB")
                else:
                    changes[key.replace("-", "_")] = n
    for key in ("concurrency", "burst"):
        if key in table:
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, int):
                ck.wrong_type(join(path, key), "an integer", v)
            elif not 1 <= v <= 1024:
                ck.add(join(path, key), f"must be between 1 and 1024, got {v}")
            else:
                changes[key] = v
    if "rate" in table:
        v = table["rate"]
        if isinstance(v, bool) or not isinstance(v, int | float):
            ck.wrong_type(join(path, "rate"), "a number (requests per second)", v)
        elif not math.isfinite(v) or v <= 0:
            ck.add(join(path, "rate"), f"must be a positive number, got {show(v)}")
        else:
            changes["rate"] = float(v)
    if "timeout" in table:
        at = join(path, "timeout")
        t = ck.expect_parsed(at, table["timeout"], parse_duration, 'a duration like "10 s"')
        if isinstance(t, float | int):
            if t <= 0:
                ck.add(at, "must be positive")
            else:
                changes["timeout"] = float(t)
    return msgspec.structs.replace(base, **changes)


def http_table_to_dict(limits: HttpLimits) -> dict[str, object]:
    from ._units import format_duration, format_size

    rate = limits.rate
    return {
        "max-request": format_size(limits.max_request),
        "max-response": format_size(limits.max_response),
        "concurrency": limits.concurrency,
        "rate": int(rate) if rate.is_integer() else rate,
        "burst": limits.burst,
        "timeout": format_duration(limits.timeout),
    }


# -- [plugins.<id>.secrets.<NAME>] ------------------------------------------------------------


class SecretSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Where a secret's value comes from (the host's environment variable ``env``, read at
    load) and the origins (grant patterns) it may be sent to."""

    env: str
    hosts: tuple[str, ...]


def parse_secrets(
    ck: Checker, path: str, value: object, base: Mapping[str, SecretSpec], _b: Path | None
) -> dict[str, SecretSpec]:
    """``secrets`` tables, replacing the defaults' per name."""
    out = dict(base)
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return out
    for name, spec in table.items():
        where = join(path, str(name))
        if not SECRET_NAME.fullmatch(str(name)):
            ck.add(where, f"{show(name)} is not a secret name ([A-Za-z_][A-Za-z0-9_.-]*)")
            continue
        entry = ck.expect_table(where, spec)
        if isinstance(entry, Invalid):
            continue
        ck.check_keys(where, entry, ("env", "hosts"))
        env = entry.get("env")
        if not isinstance(env, str) or not _ENV_NAME.fullmatch(env):
            ck.add(join(where, "env"), "needs the name of an environment variable holding it")
            continue
        hosts = ck.expect_list(join(where, "hosts"), entry.get("hosts", []))
        if isinstance(hosts, Invalid):
            continue
        good = True
        for i, h in enumerate(hosts):
            why = check_http_scope(h) if isinstance(h, str) else f"{show(h)} is not a string"
            if why is not None:
                ck.add(join(join(where, "hosts"), i), why)
                good = False
        if not hosts:
            ck.add(join(where, "hosts"), "a secret needs at least one host it may be sent to")
        elif good:
            out[str(name)] = SecretSpec(env=env, hosts=tuple(hosts))
    return out


# -- what the operator is shown (config check, plugin info) -----------------------------------


def http_grant_summary(permission: str) -> str:
    """One ``http:`` grant in plain words (for ``config check`` and ``plugin info``)."""
    try:
        grant = parse_grant(permission[len(HTTP_PREFIX) :])
    except ValueError as exc:
        return f"{permission}: {exc}"
    what = f"{permission}: requests to {grant}"
    if grant.host.kind != "name":
        ip = ipaddress.ip_address(grant.host.bare)
        if not ip.is_global:
            what += f" (an internal address, {grant.host.text}, reachable by its literal)"
    elif grant.wildcard:
        what += " (every name below it; the host refuses names resolving to internal addresses)"
    return what


def secret_summaries(
    specs: Mapping[str, SecretSpec], environ: Mapping[str, str]
) -> list[dict[str, object]]:
    """Each secret by name, where it comes from and where it may go; never its value."""
    return [
        {
            "name": name,
            "env": spec.env,
            "set": bool(environ.get(spec.env)),
            "hosts": [str(parse_grant(h)) for h in spec.hosts],
        }
        for name, spec in sorted(specs.items())
    ]


def http_notes(
    sections: list[tuple[str, object]], environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """``config check`` notes: every http grant in plain words, every secret (a variable not
    set in this environment said so: a host started from it would refuse to load the plugin)."""
    notes: list[tuple[str, str]] = []
    for where, settings in sections:
        grants = [g for g in getattr(settings, "grant", ()) if g.startswith(HTTP_PREFIX)]
        notes += [(f"{where}.grant", http_grant_summary(g)) for g in grants]
        for s in secret_summaries(getattr(settings, "secrets", {}), environ):
            hosts = ", ".join(str(h) for h in s["hosts"])  # type: ignore[attr-defined]
            state = "set" if s["set"] else "NOT SET here: the plugin will not load"
            notes.append(
                (
                    f"{where}.secrets.{s['name']}",
                    f"secret from ${s['env']} ({state}), sent only to {hosts}",
                )
            )
    return notes
