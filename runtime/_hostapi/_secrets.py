"""Secrets a plugin uses but never sees.

The operator writes ``[plugins.<id>.secrets.<NAME>] env = "VAR", hosts = [...]``. At load
the host reads ``$VAR`` into a :class:`SecretStore` for that plugin alone; the value never
crosses into the worker. ``ctx.secret("NAME")`` in the worker is only a reference whose text
is the placeholder ``<secret NAME>``; a request header carrying it (whole, or inside a value
such as ``f"Bearer {ref}"``) is substituted here, on the host, and only on a request to one
of the secret's ``hosts`` (grant patterns: ``api.github.com`` is https on 443,
``host:port``, ``http://127.0.0.1:8080``, ``*.slack.com``).

* A placeholder on a request to any other origin is refused (:class:`PermissionDenied`
  naming the secret and the origin) before anything is sent; on a redirect hop to such an
  origin the header is dropped instead (the plugin did not choose that hop).
* Placeholders in the URL or the body are never substituted (sent as the text they are).
* A plugin reaches only its own store: the name in a placeholder is looked up among the
  secrets configured for the plugin whose channel the request came on, so no reference can
  name another plugin's secret.
* Every message the HTTP code builds goes through :meth:`SecretStore.scrub`, so a value
  echoed into an exception's text never reaches the plugin, a log or the audit trail.
* A server echoing the credential back is masked too: the value as it is, and as the
  encodings a reflecting server commonly applies (base64 and base64url at each of the three
  byte alignments the value can sit at inside a longer encoded text, percent-encoding, hex).
  This is defence in depth, not a proof: a server that transforms what it echoes in some
  other way can still hand it back, so a secret's ``hosts`` must be servers the operator
  trusts not to reflect it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Final

from cordon.protocol import InvalidParams, PermissionDenied

from .._errors import ConfigError, Problem
from .._settings._http_keys import Grant, SecretSpec, grant_covers, parse_grant

__all__ = ["PLACEHOLDER", "SecretStore", "load_secrets"]

#: ``<secret NAME>``: the text of a reference in the worker (``worker/_http.py``).
PLACEHOLDER: Final = re.compile(r"<secret ([A-Za-z_][A-Za-z0-9_.-]{0,63})>")
#: Shorter than this a value cannot be told apart from ordinary text, and the host masks it
#: in every response and message (a 3-character "secret" would mangle every body).
MIN_SECRET: Final = 8
#: A value must be a valid header value on its own (the operator's env var, not ours).
_VALUE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def _base64_cores(value: bytes) -> set[str]:
    """The base64 text ``value`` becomes inside any longer encoded text: at each of the three
    byte offsets it can start at, the characters that depend on its bytes alone (the first
    and last few also carry a neighbour's bits, so they are left out)."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode("ascii")
        start = -(-offset * 8 // 6)  # ceil: the first character made only of value bits
        end = (offset + len(value)) * 8 // 6  # floor: past the last such character
        core = encoded[start:end]
        cores.add(core)
        cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


def _encodings(value: str) -> tuple[str, ...]:
    """``value`` and the spellings of it a reflecting server commonly sends back."""
    raw = value.encode("ascii")
    spelled = {value, *_base64_cores(raw), binascii.hexlify(raw).decode("ascii")}
    spelled.add(binascii.hexlify(raw).decode("ascii").upper())
    quoted = urllib.parse.quote(value, safe="")
    spelled.update({quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted)})
    spelled.add(urllib.parse.quote_plus(value, safe=""))
    # Longest first, so a spelling holding a shorter one is replaced whole.
    return tuple(sorted(spelled, key=lambda t: (-len(t), t)))


class _Secret:
    __slots__ = ("hosts", "name", "spellings", "value")

    def __init__(self, name: str, value: str, hosts: tuple[Grant, ...]) -> None:
        self.name = name
        self.value = value
        self.hosts = hosts
        self.spellings = _encodings(value) if value else ()

    def __repr__(self) -> str:
        return f"<secret {self.name}>"


class SecretStore:
    """One plugin's secrets, resolved. Its repr names them only."""

    __slots__ = ("_secrets", "plugin")

    def __init__(self, plugin: str, secrets: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        """``secrets``: name -> (value, host patterns)."""
        self.plugin = plugin
        # Longest value first: the masks run in this order, and a value holding another
        # secret's must be masked whole before the shorter one cuts it into visible pieces.
        self._secrets = {
            name: _Secret(name, value, tuple(parse_grant(h) for h in hosts))
            for name, (value, hosts) in sorted(secrets.items(), key=lambda kv: -len(kv[1][0]))
        }

    def __repr__(self) -> str:
        return f"SecretStore({self.plugin!r}, names={sorted(self._secrets)!r})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._secrets))

    def names_in(self, text: str) -> list[str]:
        return [m.group(1) for m in PLACEHOLDER.finditer(text)]

    def substitute(self, value: str, origin: Grant, *, header: str) -> str | None:
        """``value`` with each placeholder replaced for a request to ``origin``; ``None``
        when a secret in it may not go there. :class:`PermissionDenied` for a placeholder
        naming no secret of this plugin."""
        allowed = True

        def one(m: re.Match[str]) -> str:
            nonlocal allowed
            secret = self._secrets.get(m.group(1))
            if secret is None:
                raise PermissionDenied(
                    f"http: header {header!r} names secret {m.group(1)!r}, which the operator "
                    f"has not configured for plugin {self.plugin!r}",
                    permission=f"secrets.{m.group(1)}",
                    plugin=self.plugin,
                )
            if not any(grant_covers(g, origin) for g in secret.hosts):
                allowed = False
                return ""
            return secret.value

        out = PLACEHOLDER.sub(one, value)
        return out if allowed else None

    def refusal(self, value: str, origin: Grant) -> PermissionDenied:
        """The error for a header whose secret may not go to ``origin``."""
        names = [
            n
            for n in self.names_in(value)
            if n in self._secrets
            and not any(grant_covers(g, origin) for g in self._secrets[n].hosts)
        ]
        name = names[0] if names else "?"
        return PermissionDenied(
            f"http: secret {name!r} may not be sent to {origin} (its hosts: "
            f"{', '.join(str(g) for g in self._secrets[name].hosts) if names else ''})",
            permission=f"secrets.{name}",
            plugin=self.plugin,
        )

    def scrub_bytes(self, data: bytes) -> bytes:
        """``data`` (a response body) with every secret value, and its common encodings,
        replaced by its placeholder: a server echoing the credential back must not hand it
        to the plugin."""
        for s in self._secrets.values():
            for spelling in s.spellings:
                found = spelling.encode("ascii")
                if found in data:
                    data = data.replace(found, repr(s).encode("ascii"))
        return data

    def scrub(self, text: str) -> str:
        """``text`` with every secret value, and its common encodings, replaced by its
        placeholder."""
        for s in self._secrets.values():
            for spelling in s.spellings:
                if spelling in text:
                    text = text.replace(spelling, repr(s))
        return text


def load_secrets(
    plugin: str,
    specs: Mapping[str, SecretSpec],
    *,
    environ: Mapping[str, str] | None = None,
    section: str | None = None,
) -> SecretStore:
    """Read each secret's variable from ``environ`` (the host's environment). A missing,
    empty or malformed one is a :class:`ConfigError` naming the plugin, the secret and the
    variable (never the value)."""
    env = os.environ if environ is None else environ
    where = section or f"plugins.{plugin}"
    problems: list[Problem] = []
    resolved: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, spec in specs.items():
        value = env.get(spec.env)
        at = f"{where}.secrets.{name}.env"
        if not value:
            problems.append(
                Problem(
                    at,
                    f"plugin {plugin!r}: secret {name!r} reads environment variable "
                    f"{spec.env}, which is {'empty' if value == '' else 'not set'}",
                )
            )
        elif len(value) < MIN_SECRET:
            problems.append(
                Problem(
                    at,
                    f"plugin {plugin!r}: secret {name!r}: the value of {spec.env} is shorter "
                    f"than {MIN_SECRET} characters (too short to be told apart from other text)",
                )
            )
        elif not _VALUE.fullmatch(value):
            problems.append(
                Problem(
                    at,
                    f"plugin {plugin!r}: secret {name!r}: the value of {spec.env} is not "
                    "usable in a header (control or non-ASCII characters, or surrounding "
                    "spaces)",
                )
            )
        else:
            resolved[name] = (value, spec.hosts)
    if problems:
        raise ConfigError(problems=problems)
    return SecretStore(plugin, resolved)


def check_no_placeholder(text: str, field: str) -> None:
    """Refuse a header *name* shaped like a placeholder (names are never substituted)."""
    if PLACEHOLDER.search(text):
        raise InvalidParams(f"{field}: a secret can only be used in a header value", field=field)
