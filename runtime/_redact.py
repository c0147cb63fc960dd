"""Scrub what plugins log before it reaches the host's log pipeline.

Two separate jobs, always done in this order:

1. **Redaction** — fields *named* like secrets (at any depth of dicts and lists) and strings
   that *look* like secrets become ``[REDACTED]``. This guards against accidents (a plugin
   logging its config, a library printing a request with its Authorization header). It is
   not a wall against a plugin set on leaking a secret it holds: it can encode it first.
2. **Neutralisation** — control characters, ANSI/ESC sequences, C1 controls, line and
   paragraph separators, lone surrogates and bidi overrides are rewritten as visible escapes
   (``\\x1b``, ``\\n``, ``\\u202e``), so a plugin can neither forge a second log line nor
   repaint the operator's terminal, whatever renderer the host uses.

Redaction runs on the raw text (so a secret is recognised as written) and neutralisation
after it (so nothing the redactor emits or leaves can carry a control character).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "REDACTED",
    "Redactor",
    "is_secret_key",
    "neutralise",
]

REDACTED: Final = "[REDACTED]"

#: Substrings that make a field name secret, compared after lower-casing and dropping
#: ``-``, ``_``, ``.`` and spaces (so ``X-Api-Key``, ``api_key`` and ``apiKey`` all hit).
DEFAULT_SECRET_KEYS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
    "credential",
    "sessionid",
    "accesskey",
    "signature",
    "bearer",
    "jwt",
)
#: Whole (normalised) names that are secret but too short to match as substrings
#: (``author`` is not ``auth``).
_EXACT_SECRET_KEYS: Final = frozenset({"auth", "pwd", "pass", "pw", "secretkey", "otp", "pin"})
#: Secret when the name *ends* with them: ``access_token``, ``githubToken``, ``db_pwd`` — but
#: ``max_tokens`` or ``token_count`` are counts, not credentials.
_SUFFIX_SECRET_KEYS: Final = ("token", "pwd", "auth")

_KEY_NORMALISE: Final = re.compile(r"[-_.\s]")

_KEYWORDS = (
    r"pass(?:word|wd|phrase)?|pwd|pw|secret|token|api[_-]?key|apikey|authorization|auth|"
    r"cookie|private[_-]?key|credentials?|session[_-]?id|access[_-]?key"
)
#: Between a label and its value: ``=``, ``:``, quotes (also JSON-escaped ones), spaces.
_SEP = r"""((?:\\?["'])?\s*[=:]\s*(?:\\?["'])?)"""

#: (pattern, replacement). Replacements keep the harmless prefix so the line stays readable.
_VALUE_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # PEM private key blocks, including a block cut short (one line of stderr, a truncation).
    (
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        REDACTED,
    ),
    # HTTP auth schemes: "Bearer abc.def", "Basic dXNlcjpwYXNz", "Token xyz".
    (
        re.compile(r"(?i)\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9\-._~+/]{8,}=*"),
        r"\1\2" + REDACTED,
    ),
    # JWTs (header.payload.signature, signature possibly empty for alg=none).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_\-]*"), REDACTED),
    # OpenAI / Anthropic style: sk-..., sk-proj-..., sk-ant-...
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    # Stripe live/test secret and restricted keys.
    (re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"), REDACTED),
    # GitHub tokens: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained.
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), REDACTED),
    # GitLab personal access tokens.
    (re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"), REDACTED),
    # Slack bot/user/app/refresh tokens.
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), REDACTED),
    # Google API keys.
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), REDACTED),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    # AWS secret access keys have no prefix; recognise them by the label next to them.
    (
        re.compile(
            r"(?i)(aws[_-]?secret[_-]?access[_-]?key|aws[_-]?secret|secret[_-]?access[_-]?key)"
            + _SEP
            + r"[A-Za-z0-9/+=]{40}"
        ),
        r"\1\2" + REDACTED,
    ),
    # Credentials in URLs: scheme://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+@"), r"\1" + REDACTED + "@"),
    # key=value / key: value / "key": "value" in free text (stderr lines, f-strings), where
    # the label *ends* with a secret word (db_password=, githubToken:, but not token_count=).
    (
        re.compile(
            r"(?i)\b([\w\-]*?(?:"
            + _KEYWORDS
            + r"))"
            + _SEP
            + r"""(?!\[REDACTED\])[^\s"'\\,;&{}\[\]]+"""
        ),
        r"\1\2" + REDACTED,
    ),
)

# C0 controls, DEL, C1 controls; U+2028/2029 (line/paragraph separators); bidi embeddings,
# overrides and isolates; lone surrogates (not valid text, and unprintable).
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_json_decoder = json.JSONDecoder()


def _next_open(text: str, start: int) -> int:
    a = text.find("{", start)
    b = text.find("[", start)
    if a < 0:
        return b
    return a if b < 0 else min(a, b)


def neutralise(text: str) -> str:
    """Rewrite every control, separator, bidi or surrogate character as a visible escape."""
    return _UNSAFE.sub(_escape, text)


def is_secret_key(name: str, extra: Iterable[str] = ()) -> bool:
    norm = _KEY_NORMALISE.sub("", name.lower())
    if norm in _EXACT_SECRET_KEYS or norm.endswith(_SUFFIX_SECRET_KEYS):
        return True
    return any(s in norm for s in DEFAULT_SECRET_KEYS) or any(s in norm for s in extra)


class Redactor:
    """Redacts secrets from strings and nested values; operators extend it.

    ``extra_patterns``: regexes whose whole match is replaced (compiled as given, so pass
    ``(?i)`` for case-insensitivity). ``extra_keys``: more field-name substrings, matched like
    :data:`DEFAULT_SECRET_KEYS`.
    """

    def __init__(
        self, extra_patterns: Iterable[str | re.Pattern[str]] = (), extra_keys: Iterable[str] = ()
    ) -> None:
        self._patterns: list[tuple[re.Pattern[str], str]] = list(_VALUE_PATTERNS)
        for p in extra_patterns:
            self._patterns.append((re.compile(p) if isinstance(p, str) else p, REDACTED))
        self._extra_keys = tuple(_KEY_NORMALISE.sub("", k.lower()) for k in extra_keys)
        self._key_cache: dict[str, bool] = {}

    def is_secret_key(self, name: str) -> bool:
        hit = self._key_cache.get(name)
        if hit is None:
            hit = is_secret_key(name, self._extra_keys)
            if len(self._key_cache) < 4096:
                self._key_cache[name] = hit
        return hit

    def text(self, text: str) -> str:
        """Redact secret-looking substrings (does not neutralise)."""
        if "{" in text or "[" in text:
            text = self._embedded_json(text)
        for pattern, repl in self._patterns:
            text = pattern.sub(repl, text)
        return text

    def clean_text(self, text: str) -> str:
        """Redact, then neutralise: what may be written to a log."""
        return neutralise(self.text(text))

    def _embedded_json(self, text: str) -> str:
        """JSON printed as text (a JSON log line on stderr, ``json.dumps`` in a message):
        parse it and redact by key, which no regex can do for ``{"token": {...}}``."""
        out: list[str] = []
        pos = 0
        attempts = 0
        i = _next_open(text, 0)
        # Bounded: each attempt may scan the rest of the text.
        while i >= 0 and attempts < 8:
            attempts += 1
            try:
                obj, end = _json_decoder.raw_decode(text, i)
            except ValueError:
                i = _next_open(text, i + 1)
                continue
            red = self._value(obj, 16, neutral=False)
            if red != obj:
                out.append(text[pos:i])
                out.append(json.dumps(red, ensure_ascii=False))
                pos = end
            i = _next_open(text, end)
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def value(self, value: Any, *, max_depth: int = 16) -> Any:
        """Redact and neutralise a JSON-like value at any depth: secret-named keys lose their
        whole value, strings are scanned, keys are neutralised too."""
        return self._value(value, max_depth, neutral=True)

    def _value(self, value: Any, depth: int, *, neutral: bool) -> Any:
        if isinstance(value, str):
            return self.clean_text(value) if neutral else self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth <= 0:
            return "[too deep]"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = k if isinstance(k, str) else str(k)
                out[neutralise(key) if neutral else key] = (
                    REDACTED
                    if self.is_secret_key(key)
                    else self._value(v, depth - 1, neutral=neutral)
                )
            return out
        if isinstance(value, list | tuple):
            return [self._value(v, depth - 1, neutral=neutral) for v in value]
        # Anything else (bytes, objects from a careless host caller) is shown, not trusted.
        return self.clean_text(repr(value))
