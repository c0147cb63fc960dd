"""Scrub what plugins say before it becomes the host's text: log records, stderr lines, the
errors they raise (messages, fields, tracebacks), whatever the CLI prints of them.

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

The plugin chooses the text and the host's event loop does the work, so the work is bounded:
every built-in rule is linear in its input (see the comment above :data:`RULES`), and the
``clean_*`` methods cut their input before any pattern runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cordon.protocol import CordonError, PluginError

_E = TypeVar("_E", bound=CordonError)

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "MAX_KEY",
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "REDACTED",
    "RULES",
    "SCAN_MARGIN",
    "Redactor",
    "Rule",
    "is_secret_key",
    "neutralise",
    "neutralise_record",
]

REDACTED: Final = "[REDACTED]"
#: Longest plugin text kept for one message (an error's message, a log event).
MAX_MESSAGE: Final = 4096
#: Longest traceback kept (its end).
MAX_TRACEBACK: Final = 8192
#: Characters past a cap that are still scanned, so a secret straddling the cut is
#: recognised (and redacted) rather than half shown. Tokens are far shorter.
SCAN_MARGIN: Final = 1024
#: Longest field name kept: names are labels, not payloads.
MAX_KEY: Final = 128

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
_SEP = r"""((?:\\?["'])?\s*+[=:]\s*+(?:\\?["'])?)"""

# Every pattern below must run in time linear in its input, whatever the input: a plugin
# chooses the text, and the host's event loop runs the regex. Super-linear matching needs the
# engine to scan the same characters more than once, which the patterns rule out by
#  - making every unbounded quantifier possessive (``*+``, ``++``: never given back), and
#    following it only by something its class cannot match, so giving back could not help;
#  - never letting an attempt start inside a run an earlier attempt already scanned to its
#    end and failed on: either the start is fenced by a look-behind on the run's own class, or
#    the quantifier after the start is bounded (``{0,32}``), or the run can only fail at a
#    bounded length (``{16,}`` at the end of a pattern either matches the whole run or failed
#    within 16 characters).
# tests/test_redact_adversarial.py generates near-miss inputs for every rule from the pattern
# itself and checks the cost per byte does not grow with the size; a new rule is covered
# without writing a test for it.


@dataclass(frozen=True, slots=True)
class Rule:
    """One redaction: ``pattern`` replaced by ``repl``, tried only when one of ``needles``
    occurs in the text (lower-cased first when ``fold``). The needle check is a substring
    search at memory speed, so ordinary text pays for the few rules that could match it."""

    name: str
    pattern: re.Pattern[str]
    repl: str
    needles: tuple[str, ...] = ()
    fold: bool = False

    def apply(self, text: str, folded: str | None = None) -> str:
        if self.needles:
            hay = (folded if folded is not None else text.lower()) if self.fold else text
            if not any(n in hay for n in self.needles):
                return text
        return self.pattern.sub(self.repl, text)


#: The built-in rules, in order. Replacements keep the harmless prefix so a line stays
#: readable.
RULES: Final[tuple[Rule, ...]] = (
    # PEM private key blocks, including a block cut short (one line of stderr, a truncation).
    # The label is bounded, and ``.*?`` stops at the first END or the end of the text.
    Rule(
        "pem-private-key",
        re.compile(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----"
            r".*?(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        REDACTED,
        ("-----BEGIN",),
    ),
    # HTTP auth schemes: "Bearer abc.def", "Basic dXNlcjpwYXNz", "Token xyz".
    Rule(
        "http-auth-scheme",
        re.compile(r"(?i)\b(bearer|basic|token|digest)(\s++)[A-Za-z0-9\-._~+/]{8,}+=*+"),
        r"\1\2" + REDACTED,
        ("bearer", "basic", "token", "digest"),
        fold=True,
    ),
    # JWTs (header.payload.signature, signature possibly empty for alg=none). The look-behind
    # keeps an attempt from starting inside a segment an earlier attempt already scanned.
    Rule(
        "jwt",
        re.compile(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+\.eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]*+"
        ),
        REDACTED,
        ("eyJ",),
    ),
    # OpenAI / Anthropic style: sk-..., sk-proj-..., sk-ant-...
    Rule("sk-key", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}+"), REDACTED, ("sk-",)),
    # Stripe live/test secret and restricted keys.
    Rule(
        "stripe-key",
        re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}+"),
        REDACTED,
        ("k_live_", "k_test_"),
    ),
    # GitHub tokens: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained.
    Rule(
        "github-token",
        re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}+"),
        REDACTED,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    Rule("github-pat", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}+"), REDACTED, ("github_pat_",)),
    # GitLab personal access tokens.
    Rule("gitlab-pat", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}+"), REDACTED, ("glpat-",)),
    # Slack bot/user/app/refresh tokens.
    Rule("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}+"), REDACTED, ("xox",)),
    # Google API keys.
    Rule("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), REDACTED, ("AIza",)),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    Rule(
        "aws-access-key-id",
        re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
        REDACTED,
        ("AKIA", "ASIA"),
    ),
    # AWS secret access keys have no prefix; recognise them by the label next to them.
    Rule(
        "aws-secret-key",
        re.compile(
            r"(?i)(aws[_-]?secret[_-]?access[_-]?key|aws[_-]?secret|secret[_-]?access[_-]?key)"
            + _SEP
            + r"[A-Za-z0-9/+=]{40}"
        ),
        r"\1\2" + REDACTED,
        ("secret",),
        fold=True,
    ),
    # Credentials in URLs: scheme://user:password@host. The scheme is bounded (RFC 3986
    # schemes are short): unbounded, every letter of "a.a.a.a..." would start a scan to the end.
    Rule(
        "url-credentials",
        re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,31}://[^\s:/@]++:)[^\s@/]++@"),
        r"\1" + REDACTED + "@",
        ("://",),
    ),
    # key=value / key: value / "key": "value" in free text (stderr lines, f-strings), where
    # the label *ends* with a secret word (db_password=, githubToken:, but not token_count=).
    # The label's head is not part of the match (it is kept anyway): matching it, as
    # ``[\w-]*?password``, tried every start in a long word - quadratic.
    Rule(
        "key-value",
        re.compile(
            r"(?i)(" + _KEYWORDS + r")" + _SEP + r"""(?!\[REDACTED\])[^\s"'\\,;&{}\[\]]++"""
        ),
        r"\1\2" + REDACTED,
        ("pass", "pw", "secret", "token", "key", "auth", "cookie", "credential", "session"),
        fold=True,
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
#: JSON values parsed out of one text; each parse may scan the rest of it.
_JSON_ATTEMPTS: Final = 8


def _next_open(text: str, start: int) -> int:
    a = text.find("{", start)
    b = text.find("[", start)
    if a < 0:
        return b
    return a if b < 0 else min(a, b)


def neutralise(text: str) -> str:
    """Rewrite every control, separator, bidi or surrogate character as a visible escape."""
    return _UNSAFE.sub(_escape, text)


def _neutral(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return neutralise(value)
    if depth <= 0 or value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {
            neutralise(k) if isinstance(k, str) else k: _neutral(v, depth - 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_neutral(v, depth - 1) for v in value]
    return value


def neutralise_record(_logger: Any, _method: str, event_dict: Any) -> Any:
    """A structlog processor, for the host's chain just before its renderer: every string in
    every record (keys too) neutralised, so host records that quote something a plugin sent
    (a topic it asked for, a method it named) cannot carry a terminal escape either. A
    rendered traceback (``exception``) keeps its line breaks. Plugin records are already
    clean; neutralising again changes nothing (it is idempotent)."""
    out = {}
    for key, value in event_dict.items():
        if key == "exception" and isinstance(value, str):
            out[key] = "\n".join(neutralise(line) for line in value.split("\n"))
        else:
            out[neutralise(key) if isinstance(key, str) else key] = _neutral(value, 8)
    return out


def is_secret_key(name: str, extra: Iterable[str] = ()) -> bool:
    norm = _KEY_NORMALISE.sub("", name.lower())
    if norm in _EXACT_SECRET_KEYS or norm.endswith(_SUFFIX_SECRET_KEYS):
        return True
    return any(s in norm for s in DEFAULT_SECRET_KEYS) or any(s in norm for s in extra)


class Redactor:
    """Redacts secrets from strings and nested values; operators extend it.

    ``extra_patterns``: regexes whose whole match is replaced (compiled as given, so pass
    ``(?i)`` for case-insensitivity). ``extra_keys``: more field-name substrings, matched like
    :data:`DEFAULT_SECRET_KEYS`. The built-in rules are linear in their input; an operator's
    pattern cannot be checked for that here, which is why every caller caps the text before
    redacting it (and the log sink bounds each plugin's redaction time).
    """

    def __init__(
        self, extra_patterns: Iterable[str | re.Pattern[str]] = (), extra_keys: Iterable[str] = ()
    ) -> None:
        self.rules: tuple[Rule, ...] = RULES + tuple(
            Rule(f"operator-{i}", re.compile(p) if isinstance(p, str) else p, REDACTED)
            for i, p in enumerate(extra_patterns, 1)
        )
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
        """Redact secret-looking substrings (does not neutralise). Linear in ``len(text)``
        for the built-in rules; callers cap ``text`` first."""
        if "{" in text or "[" in text:
            text = self._embedded_json(text)
        folded = text.lower()
        for rule in self.rules:
            out = rule.apply(text, folded)
            if out is not text:
                text = out
                folded = text.lower()
        return text

    def clean_text(self, text: str) -> str:
        """Redact, then neutralise: what may be written to a log."""
        return neutralise(self.text(text))

    def clean_message(self, text: str, limit: int = MAX_MESSAGE) -> str:
        """Plugin text for one line of a log, a terminal or an error string: capped before
        any pattern runs (the scan margin past it is scanned too, so a secret straddling the
        cut is still recognised), redacted, neutralised, cut to ``limit``."""
        clean = self.clean_text(text[: limit + SCAN_MARGIN])
        if len(text) <= limit and len(clean) <= limit:
            return clean
        return f"{clean[:limit]}…[cut, {len(text)} chars]"

    def clean_lines(self, text: str, limit: int = MAX_TRACEBACK) -> str:
        """Like :meth:`clean_message`, for text a human reads as lines (a traceback): the
        line breaks survive, every other control character is escaped, and the *end* is kept
        (where a traceback says what happened)."""
        head = text[-(limit + SCAN_MARGIN) :]
        lines = [neutralise(line) for line in self.text(head).split("\n")]
        clean = "\n".join(lines)
        if len(text) <= limit and len(clean) <= limit:
            return clean
        return f"[cut, {len(text)} chars]…{clean[-limit:]}"

    def clean_key(self, name: str, limit: int = MAX_KEY) -> str | None:
        """A field *name* as it may be shown: neutralised and capped; ``None`` when the name
        itself looks like a secret (``{"ghp_...": 1}``), to be shown as a placeholder."""
        head = name[: 2 * limit]
        if self.text(head) != head:
            return None
        clean = neutralise(head)
        return clean if len(clean) <= limit and len(name) <= limit else f"{clean[:limit]}…"

    def clean_error(self, exc: _E) -> _E | PluginError:
        """The same error with every string in it - message and fields, at any depth -
        capped, redacted and neutralised (a ``traceback`` keeps its line breaks). What a
        peer sent that does not rebuild comes back as a :class:`PluginError` saying so."""
        budget = [MAX_TRACEBACK]
        fields: dict[str, Any] = {}
        for name, value in exc.fields().items():
            if name == "traceback" and isinstance(value, str):
                fields[name] = self.clean_lines(value)
            else:
                fields[name] = self._bounded(value, budget, 8)
        message = self.clean_message(exc.message)
        try:
            return type(exc)(message, **fields)
        except Exception:
            return PluginError(
                f"plugin raised {type(exc).__name__}: {message}",
                exc_type=type(exc).__name__,
                exc_message=message,
                plugin=fields.get("plugin"),
            )

    def _bounded(self, value: Any, budget: list[int], depth: int) -> Any:
        """A JSON-like value cleaned like :meth:`value`, within ``budget[0]`` characters in
        all (past it, ``[cut]``), so a peer's error data costs bounded work."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if budget[0] <= 0 or depth <= 0:
            return "[cut]"
        if isinstance(value, str):
            clean = self.clean_message(value, min(MAX_MESSAGE, budget[0]))
            budget[0] -= len(clean)
            return clean
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            hidden = 0
            for k, v in list(value.items())[:100]:
                key = self.clean_key(str(k))
                if key is None:
                    hidden += 1
                    out[f"[redacted-key-{hidden}]"] = REDACTED
                    continue
                budget[0] -= len(key)
                out[key] = (
                    REDACTED if self.is_secret_key(str(k)) else self._bounded(v, budget, depth - 1)
                )
            return out
        if isinstance(value, list | tuple):
            return [self._bounded(v, budget, depth - 1) for v in value[:100]]
        return self.clean_message(repr(value)[:MAX_MESSAGE])

    def _embedded_json(self, text: str) -> str:
        """JSON printed as text (a JSON log line on stderr, ``json.dumps`` in a message):
        parse it and redact by key, which no regex can do for ``{"token": {...}}``."""
        out: list[str] = []
        pos = 0
        attempts = 0
        i = _next_open(text, 0)
        # Bounded: each attempt may scan the rest of the text.
        while i >= 0 and attempts < _JSON_ATTEMPTS:
            attempts += 1
            try:
                obj, end = _json_decoder.raw_decode(text, i)
            except (ValueError, RecursionError):
                # RecursionError: "[[[[..." nests deeper than the C scanner will go.
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
            hidden = 0
            for k, v in value.items():
                key = k if isinstance(k, str) else str(k)
                shown = self.clean_key(key) if neutral else key
                if shown is None:
                    # The name is a credential: neither it nor what it labels is shown.
                    hidden += 1
                    out[f"[redacted-key-{hidden}]"] = REDACTED
                    continue
                if neutral and shown in out:  # two names that differ only past the cap
                    shown = f"{shown}#{len(out)}"
                out[shown] = (
                    REDACTED
                    if self.is_secret_key(key)
                    else self._value(v, depth - 1, neutral=neutral)
                )
            return out
        if isinstance(value, list | tuple):
            return [self._value(v, depth - 1, neutral=neutral) for v in value]
        # Anything else (bytes, objects from a careless host caller) is shown, not trusted.
        return self.clean_text(repr(value))
