"""The ``cordon`` command's exit codes: one table, from which come the class → code mapping,
the ``cordon --help`` epilog and the README's table (a test compares the README with
:func:`markdown_table`, so the three cannot drift apart).

A row's ``errors`` are matched with ``isinstance`` in table order, so a subclass that needs a
code of its own must come before its base (no row does today: ``ManifestError`` is a
``ConfigError`` and shares its code on purpose).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from cordon.protocol import (
    CallCancelled,
    CallTimeout,
    InvalidParams,
    MethodNotFound,
    PermissionDenied,
    PluginError,
    PluginUnavailable,
    ProtocolError,
    QuotaExceeded,
    SandboxUnavailable,
    WorkerCrashed,
)

from .._core._loading import PluginInUse
from .._core._routing import MiddlewareFailed
from .._errors import ConfigError
from .._marketplace._errors import (
    PluginNotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
)
from .._packages._errors import (
    ConsentRefused,
    EnvBuildError,
    LockError,
    NotInstalled,
    PackageError,
    PackageInvalid,
    SignatureInvalid,
)
from .._platform._registry import AmbiguousContribution
from .._platform._versions import DependencyError
from ._control import ControlSocketError, HostAlreadyRunning, HostNotRunning
from ._scaffold import ScaffoldError

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "TABLE",
    "ExitCode",
    "help_text",
    "markdown_table",
]

EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_USAGE: Final = 2


@dataclass(frozen=True)
class ExitCode:
    """One exit code: ``meaning`` is README markdown (class names in backticks); ``errors``
    are the classes that exit with it."""

    code: int
    meaning: str
    errors: tuple[type[BaseException], ...] = ()


TABLE: Final[tuple[ExitCode, ...]] = (
    ExitCode(EXIT_OK, "success"),
    ExitCode(EXIT_INTERNAL, "internal error (a bug in cordon)"),
    ExitCode(EXIT_USAGE, "usage error (bad command-line arguments or option values)"),
    ExitCode(
        3,
        "invalid configuration or manifest (`ConfigError`, `ManifestError`), including a "
        "malformed overrides file",
        (ConfigError,),
    ),
    ExitCode(4, "the plugin raised (`PluginError`)", (PluginError,)),
    ExitCode(
        5,
        "bad call: unknown tool or invalid arguments (`MethodNotFound`, `InvalidParams`)",
        (MethodNotFound, InvalidParams),
    ),
    ExitCode(6, "the call timed out (`CallTimeout`)", (CallTimeout,)),
    ExitCode(7, "the worker crashed (`WorkerCrashed`)", (WorkerCrashed,)),
    ExitCode(8, "a quota was exceeded (`QuotaExceeded`)", (QuotaExceeded,)),
    ExitCode(
        9,
        "permission denied (`PermissionDenied`), e.g. a control socket client of another uid",
        (PermissionDenied,),
    ),
    ExitCode(
        10,
        "plugin unavailable (`PluginUnavailable`), e.g. disabled, not loaded, no such plugin",
        (PluginUnavailable,),
    ),
    ExitCode(
        11,
        "the strict sandbox cannot be applied here (`SandboxUnavailable`)",
        (SandboxUnavailable,),
    ),
    ExitCode(
        12,
        "protocol error (`ProtocolError`, `IncompatibleProtocol`, `FrameTooLarge`)",
        (ProtocolError,),
    ),
    ExitCode(13, "the call was cancelled (`CallCancelled`)", (CallCancelled,)),
    ExitCode(
        14,
        "another host is already running on the control socket (`HostAlreadyRunning`)",
        (HostAlreadyRunning,),
    ),
    ExitCode(
        15,
        "no running host to talk to (`HostNotRunning`), e.g. `cordon plugin reload` or "
        "`cordon logs` without one",
        (HostNotRunning,),
    ),
    ExitCode(
        16,
        "the control socket cannot be used safely or at all (`ControlSocketError`: group- or "
        "world-writable directory, path too long, a non-socket file in the way, another "
        "user's socket or listener)",
        (ControlSocketError,),
    ),
    ExitCode(
        17,
        "a plugin's dependencies cannot be met (`DependencyError`: missing, incompatible, "
        "cyclic, or blocked by a broken one)",
        (DependencyError,),
    ),
    ExitCode(
        18,
        "`cordon new plugin` cannot create the folder (`ScaffoldError`, e.g. it already exists)",
        (ScaffoldError,),
    ),
    ExitCode(
        19,
        "an unqualified name matches several plugins (`AmbiguousContribution`; use `plugin.name`)",
        (AmbiguousContribution,),
    ),
    ExitCode(
        20, "a middleware failed under `fail-closed` (`MiddlewareFailed`)", (MiddlewareFailed,)
    ),
    ExitCode(21, "unloading would strand dependents (`PluginInUse`)", (PluginInUse,)),
    ExitCode(
        22,
        "a package is refused (`PackageInvalid`: tampered, unsafe entry, too big, not a "
        "package, a download refused or failed)",
        (PackageInvalid,),
    ),
    ExitCode(
        23,
        "a signature is missing where required, does not verify, or is by a key not in "
        "`trusted-keys` (`SignatureInvalid`)",
        (SignatureInvalid,),
    ),
    ExitCode(
        24,
        "dependencies cannot be locked (`LockError`, `SdistOnly`: a dependency with no wheel)",
        (LockError,),
    ),
    ExitCode(25, "a plugin's environment cannot be built (`EnvBuildError`)", (EnvBuildError,)),
    ExitCode(26, "no such installed plugin or version (`NotInstalled`)", (NotInstalled,)),
    ExitCode(
        27,
        "the permissions were not accepted, or no terminal to ask and no `--yes` "
        "(`ConsentRefused`)",
        (ConsentRefused,),
    ),
    ExitCode(28, "any other package error (`PackageError`)", (PackageError,)),
    ExitCode(
        29,
        "the registry does not answer (`RegistryUnavailable`: refused, timed out, or 5xx "
        "after the retries)",
        (RegistryUnavailable,),
    ),
    ExitCode(
        30,
        "the registry has no such plugin, version, or version matching the spec (`PluginNotFound`)",
        (PluginNotFound,),
    ),
    ExitCode(
        31,
        "the registry refused the request (`RegistryRefused`: bad or wrong-scope token, "
        "version already published, look-alike id, invalid package, too large)",
        (RegistryRefused,),
    ),
    ExitCode(32, "any other registry error (`RegistryError`)", (RegistryError,)),
)


def markdown_table() -> str:
    """The README's table, row for row."""
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| {e.code} | {e.meaning} |" for e in TABLE]
    return "\n".join(rows) + "\n"


def _plain(meaning: str) -> str:
    # `cordon --help` is read in a terminal: no markdown, and the parenthesised detail of the
    # longest rows cut to the class names (the README has the rest).
    text = meaning.replace("`", "")
    return re.sub(r"\((\w+): [^)]*\)", r"(\1)", text)


def help_text() -> str:
    """The exit codes for ``cordon --help``: every row of :data:`TABLE`, one per line."""
    lines = ["exit codes:"]
    lines += [f"  {e.code:>2}  {_plain(e.meaning)}" for e in TABLE]
    return "\n".join(lines)
