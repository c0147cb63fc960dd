"""A middleware plugin: masks secrets in tool requests and in their results.

Middleware contract (what these functions take and return)
----------------------------------------------------------

``before_request``::

    async def f(ctx, request: dict) -> dict

``request`` is ``{"plugin": <target plugin id>, "name": <contribution name>, "kind":
<"tool", "command", ...>, "arguments": <the call's arguments>}``. The function returns the
request to use instead; only ``arguments`` may differ (the host refuses a middleware that
changes the target). Here: ``arguments`` with every secret masked, so the target plugin never
sees them — the point of this example is keeping secrets (say, ones a model pasted into a
tool call) away from plugins and out of their logs.

``after_response``::

    async def f(ctx, request: dict, response: dict) -> dict

``request`` is the request as the handler got it; ``response`` is ``{"result": <the call's
result>}``. It returns the response to hand back (with ``result``): here with every secret in
the result masked.

The host's chain (``Runtime.invoke``) calls them as contributions of kind ``middleware`` with
the keyword arguments above: ``await handle.call("redact_request", {"request": {...}},
kind="middleware")``; before-request middleware in ``middleware-order``, after-response in
reverse.

What counts as a secret
-----------------------

* the value of any key whose name (case and ``-``/``_`` ignored) contains ``password``,
  ``passwd``, ``secret``, ``token``, ``apikey``, ``accesskey``, ``privatekey``,
  ``authorization``, ``credential`` or ``cookie``, or is ``pwd`` — plus the operator's own
  ``keys`` setting;
* anywhere in a string: AWS access key ids, GitHub/Slack/``sk-`` API tokens, JWTs, bearer
  tokens, PEM private keys, and the password in ``scheme://user:password@host``.

Each is replaced by the marker (setting ``marker``, default ``[REDACTED]``); for a bearer
token or a URL only the secret part is. Settings come from ``[plugins.redactor.settings]``
(``config`` permission); without that grant the defaults apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from cordon.worker import Context, PermissionDenied, Plugin

plugin = Plugin()

F = TypeVar("F", bound=Callable[..., Any])


def middleware(phase: str) -> Callable[[F], F]:
    """``plugin.middleware(phase=...)``, typed for mypy."""
    register: Callable[[F], F] = plugin.middleware(phase=phase)
    return register


DEFAULT_MARKER: Final = "[REDACTED]"
SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "authorization",
    "credential",
    "cookie",
)
#: Deeper than this, a value is masked whole rather than walked (fail closed).
MAX_DEPTH: Final = 64

# (pattern, replacement template); "{m}" is the marker.
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
        ),
        "{m}",
    ),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "{m}"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "{m}"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "{m}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), "{m}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), "{m}"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 {m}"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1{m}@"),
)


class Rules:
    def __init__(self, marker: str = DEFAULT_MARKER, keys: tuple[str, ...] = ()) -> None:
        self.marker = marker
        self.key_parts = SECRET_KEY_PARTS + tuple(_norm(k) for k in keys)
        self._subs = [(p, r.replace("{m}", marker.replace("\\", r"\\"))) for p, r in _PATTERNS]

    def secret_key(self, key: str) -> bool:
        k = _norm(key)
        return k == "pwd" or any(part in k for part in self.key_parts)

    def text(self, s: str) -> str:
        for pattern, repl in self._subs:
            s = pattern.sub(repl, s)
        return s

    def value(self, v: Any, depth: int = 0) -> Any:
        """``v`` with every secret masked (a new object; ``v`` is not changed)."""
        if depth > MAX_DEPTH:
            return self.marker
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {
                k: (
                    self.marker
                    if isinstance(k, str) and self.secret_key(k) and v[k] is not None
                    else self.value(v[k], depth + 1)
                )
                for k in v
            }
        if isinstance(v, list):
            return [self.value(x, depth + 1) for x in v]
        return v


def _norm(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


_rules: Rules | None = None


async def _get_rules(ctx: Context) -> Rules:
    """The operator's settings, read once per worker."""
    global _rules
    if _rules is None:
        try:
            settings = await ctx.config.get()
        except PermissionDenied:
            settings = {}
        marker = settings.get("marker", DEFAULT_MARKER)
        keys = settings.get("keys", [])
        _rules = Rules(
            marker if isinstance(marker, str) and marker else DEFAULT_MARKER,
            tuple(k for k in keys if isinstance(k, str)) if isinstance(keys, list) else (),
        )
    return _rules


@middleware("before_request")
async def redact_request(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    """Mask secrets in the request's ``arguments``; everything else passes through."""
    rules = await _get_rules(ctx)
    out = dict(request)
    if "arguments" in out:
        out["arguments"] = rules.value(out["arguments"])
    return out


@middleware("after_response")
async def redact_response(
    ctx: Context, request: dict[str, Any], response: dict[str, Any]
) -> dict[str, Any]:
    """Mask secrets anywhere in the response's ``result``."""
    rules = await _get_rules(ctx)
    redacted: dict[str, Any] = rules.value(response)
    return redacted
