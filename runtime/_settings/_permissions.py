"""Permission strings: their grammar, and the effective set a plugin runs with.

Grammar: ``log``, ``storage``, ``storage:shared``, ``config``, ``events:emit:<glob>``,
``events:subscribe:<glob>``, ``exec:<command>``, ``http:<origin pattern>`` (its grammar and
matching, by origin rather than by glob: :mod:`._http_keys`).

How a plugin ends up allowed to do something
--------------------------------------------

A plugin *requests* permissions in its ``plugin.toml``; the operator *grants* and *denies*
them per plugin. A concrete permission ``p`` (say ``events:emit:build.done``) is allowed when

    p matches some requested entry  AND  p matches some grant  AND  p matches no deny

so the effective set is requested ∩ granted − denied, and deny always wins.

"Matches" is defined the same way for all three lists:

* A permission splits into its *kind* and its *scope*: ``log``/``storage``/``storage:shared``/
  ``config`` have no scope; ``events:emit:``, ``events:subscribe:`` and ``exec:`` are kinds
  followed by a scope (a topic or a command name).
* Unscoped permissions match only themselves, exactly. (``storage`` does not imply
  ``storage:shared``; there is no ``*`` over kinds.)
* Scoped entries match when the kinds are equal and the concrete scope matches the entry's
  scope as a glob with :func:`fnmatch.fnmatchcase` semantics: case-sensitive on every
  platform, ``*`` matches any run of characters *including dots* (``build.*`` matches
  ``build.done`` and ``build.step.done``, but not ``build`` itself), ``?`` one character,
  ``[abc]``/``[!abc]`` a class.
* Exec grants must name a command exactly (``exec:git``); ``exec:*`` or any other glob is
  refused as a grant, because granting "every command on the host" is one typo away from
  giving a plugin a shell. Exec *denies* may glob (``exec:*`` is a useful kill switch).
* ``http:`` scopes are origins, matched as :mod:`._http_keys` says (``*.`` only as a whole
  first label); ``http:*`` is accepted as a deny only (no HTTP at all).

Topics a plugin emits and commands it runs never contain glob characters (the host validates
them), so ``allows`` only ever evaluates concrete permissions and the rule above is exact.

:attr:`PermissionSet.missing` is what the load-time warning lists: requested entries no grant
reaches (neither the grant's glob matches the requested text nor the other way round) or a
deny blanks out entirely (a deny glob matches the requested text). It is a report for humans,
never used to decide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Final

from .._errors import ConfigError, Problem
from ._http_keys import HTTP_PREFIX, check_http_scope, scope_matches

__all__ = [
    "PermissionSet",
    "check_grant_string",
    "check_permission_string",
    "effective_permissions",
]

_SIMPLE: Final = frozenset({"log", "storage", "storage:shared", "config"})
_TOPIC_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\-/\[\]!]{1,200}")
_COMMAND: Final = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")
_COMMAND_GLOB: Final = re.compile(r"[A-Za-z0-9_.+\-*?\[\]!]{1,64}")
_SCOPED_KINDS: Final = ("events:emit:", "events:subscribe:", "exec:", HTTP_PREFIX)
#: Only as a deny: every origin (a grant of every origin is refused, like ``exec:*``).
HTTP_ANY: Final = "http:*"


def check_permission_string(perm: object) -> str | None:
    """``None`` when ``perm`` is a well-formed permission string, else why it is not."""
    if not isinstance(perm, str):
        return f"{perm!r} is not a string"
    if perm in _SIMPLE:
        return None
    for prefix, pattern, what in (
        ("events:emit:", _TOPIC_GLOB, "a topic glob"),
        ("events:subscribe:", _TOPIC_GLOB, "a topic glob"),
        ("exec:", _COMMAND, "a command name (no path, no spaces)"),
    ):
        if perm.startswith(prefix):
            rest = perm[len(prefix) :]
            if not pattern.fullmatch(rest):
                return f"{perm!r}: {rest!r} is not {what}"
            return None
    if perm.startswith(HTTP_PREFIX):
        why = check_http_scope(perm[len(HTTP_PREFIX) :])
        return None if why is None else f"{perm!r}: {why}"
    return (
        f"unknown permission {perm!r} (known: log, storage, storage:shared, config, "
        "events:emit:<topic>, events:subscribe:<topic>, exec:<command>, http:<origin>)"
    )


def check_grant_string(pattern: object, *, deny: bool = False) -> str | None:
    """``None`` when ``pattern`` may appear in an operator's ``grant`` (or, with ``deny``,
    ``deny``) list, else why not. Same grammar as requests, except that exec grants must be
    exact command names while exec denies may be globs."""
    problem = check_permission_string(pattern)
    # Exec grants are exact (the request grammar has no glob characters for commands); only a
    # deny may cover many commands at once.
    if (
        problem is not None
        and deny
        and isinstance(pattern, str)
        and pattern.startswith("exec:")
        and _COMMAND_GLOB.fullmatch(pattern[len("exec:") :])
    ):
        return None
    if deny and pattern == HTTP_ANY:
        return None  # the kill switch: no HTTP at all
    return problem


def _split(perm: str) -> tuple[str, str | None]:
    for kind in _SCOPED_KINDS:
        if perm.startswith(kind):
            return kind, perm[len(kind) :]
    return perm, None


def _matches(concrete: str, pattern: str) -> bool:
    """Does the (concrete or requested) permission text ``concrete`` match ``pattern``?"""
    ckind, cscope = _split(concrete)
    pkind, pscope = _split(pattern)
    if ckind != pkind:
        return False
    if cscope is None or pscope is None:
        return cscope is None and pscope is None
    if ckind == HTTP_PREFIX:
        return cscope == pscope or pattern == HTTP_ANY or scope_matches(cscope, pscope)
    return cscope == pscope or fnmatchcase(cscope, pscope)


class PermissionSet:
    """The permissions one plugin runs with. Immutable; build with
    :func:`effective_permissions` (or :meth:`none` for a plugin granted nothing)."""

    __slots__ = ("_cache", "denied", "granted", "missing", "requested")

    def __init__(
        self,
        requested: Iterable[str] = (),
        granted: Iterable[str] = (),
        denied: Iterable[str] = (),
    ) -> None:
        self.requested: tuple[str, ...] = tuple(dict.fromkeys(requested))
        self.granted: tuple[str, ...] = tuple(dict.fromkeys(granted))
        self.denied: tuple[str, ...] = tuple(dict.fromkeys(denied))
        # A grant "reaches" a request when either glob's text matches the other's: the grant
        # covers the request (events:emit:* for build.*) or sits inside it (build.* for *).
        self.missing: tuple[str, ...] = tuple(
            r
            for r in self.requested
            if not any(_matches(r, g) or _matches(g, r) for g in self.granted)
            or any(_matches(r, d) for d in self.denied)
        )
        # Checks repeat (every storage call asks for "storage"); remember answers. Bounded:
        # a plugin choosing topics could otherwise grow it without limit.
        self._cache: dict[str, bool] = {}

    @classmethod
    def none(cls) -> PermissionSet:
        return cls()

    @property
    def effective(self) -> tuple[str, ...]:
        """Requested entries that are at least partly usable (for display)."""
        return tuple(r for r in self.requested if r not in self.missing)

    def allows(self, permission: str) -> bool:
        """Is the concrete ``permission`` (no glob characters) allowed? Deny wins."""
        hit = self._cache.get(permission)
        if hit is not None:
            return hit
        ok = (
            any(_matches(permission, r) for r in self.requested)
            and any(_matches(permission, g) for g in self.granted)
            and not any(_matches(permission, d) for d in self.denied)
        )
        if len(self._cache) < 4096:
            self._cache[permission] = ok
        return ok

    def __repr__(self) -> str:
        return f"PermissionSet(effective={list(self.effective)!r}, missing={list(self.missing)!r})"


def effective_permissions(
    requested: Iterable[str], grant: Iterable[str], deny: Iterable[str]
) -> PermissionSet:
    """requested ∩ granted − denied (see the module docstring for matching).

    Malformed grant or deny entries raise :class:`ConfigError` listing each one: silently
    ignoring a deny the operator wrote would be the wrong way to fail.
    """
    grant, deny = list(grant), list(deny)
    problems = [
        Problem(f"{where}[{i}]", reason)
        for where, items, is_deny in (("grant", grant, False), ("deny", deny, True))
        for i, p in enumerate(items)
        if (reason := check_grant_string(p, deny=is_deny)) is not None
    ]
    if problems:
        raise ConfigError(problems=problems)
    # Malformed *requests* are the manifest parser's to report; here they simply match nothing.
    req = [r for r in requested if check_permission_string(r) is None]
    return PermissionSet(req, grant, deny)
