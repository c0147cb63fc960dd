"""The operator's configuration: ``cordon.toml``.

.. code-block:: toml

    [runtime]
    plugin-dirs = ["examples/plugins"]   # relative paths resolve against this file's folder
    state-dir = ".cordon"
    strict-permissions = false
    redact-patterns = []                 # extra regexes for log redaction
    middleware-order = []                # plugin ids, explicit order of the middleware chain
    cgroups = "auto"                     # per-worker memory/pids cgroups where possible; "off"
    warm-workers = 1                     # workers pre-started to their hello, claimed on start

    [defaults]                           # every plugin, unless its own section says otherwise
    memory = "256 MiB"                   # sizes need a unit: "256 MiB" / "1.5 GB"; or "unlimited"
    cpu-time = "30 s"                    # durations: seconds or "500 ms" / "2 min"
    ...

    [plugins.hello]                      # any [defaults] key, plus a free-form settings table
    memory = "512 MiB"
    restart = { max = 10 }               # merged key by key with [defaults].restart
    settings = { greeting = "hi" }

Every value is checked and *every* problem reported at once, in one :class:`ConfigError`, each
under its TOML path. The built-in :data:`DEFAULT_CONFIG` is the safe one for untrusted code:
strict sandbox, no child processes, nothing granted.

Overriding rules, and the one exception: a plugin's section replaces the default value of each
key it sets, except ``restart`` (merged key by key) and ``deny``, which is the *union* of the
defaults' and the plugin's. Deny is the operator's kill switch ("deny always wins"), and a
plugin section written to add a grant must not silently drop a global ``deny = ["exec:*"]``.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import msgspec

from .._errors import ConfigError
from ._exec_rules import ExecRule, check_env_name, check_pattern
from ._permissions import check_grant_string, check_permission_string
from ._units import format_duration, format_size, parse_duration, parse_size, unitless_size
from ._validate import INVALID, PLUGIN_ID, Checker, Invalid, join, read_toml, show

__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "PluginSettings",
    "RestartPolicy",
    "RuntimeSettings",
    "find_config",
    "load_config",
    "parse_config",
]

SandboxMode: TypeAlias = Literal["strict", "best-effort", "off"]
Activation: TypeAlias = Literal["lazy", "eager"]
MiddlewarePolicy: TypeAlias = Literal["fail-open", "fail-closed"]

SANDBOX_MODES: Final[tuple[SandboxMode, ...]] = ("strict", "best-effort", "off")
ACTIVATIONS: Final[tuple[Activation, ...]] = ("lazy", "eager")
MIDDLEWARE_POLICIES: Final[tuple[MiddlewarePolicy, ...]] = ("fail-open", "fail-closed")

#: How a limit that may be lifted is spelled in TOML (which has no null).
UNLIMITED: Final = "unlimited"

#: Frames must at least fit the handshake and an error object; below this nothing works.
MIN_MAX_MESSAGE: Final = 4096
#: host-requests: past this the bound stops being one (each is a host task); 64 (the
#: default) already keeps a storage batch full.
MAX_HOST_REQUESTS: Final = 4096
#: host-request-memory: below a few requests' worth the bound only adds latency (one request
#: is always admitted whatever its size).
MIN_HOST_REQUEST_MEMORY: Final = 64 * 1024
#: The least memory a worker can start and idle in. Measured (Linux 6.18, CPython 3.11, strict
#: sandbox, examples/plugins/hello serving calls through health pings): 23 MiB with a memory
#: cgroup, 28 MiB with cgroups off (below it the worker dies of SIGSEGV growing its stack
#: under RLIMIT_AS); idle RSS is ~23 MiB. 48 MiB leaves room for another Python or libc.
#: Below it every start fails, which ``config check`` should say rather than every call.
MIN_WORKER_MEMORY: Final = 48 * 1024 * 1024
#: The fewest open files a worker starts with: it needs 8 (channel, stderr, event loop,
#: self-pipe, the module files it imports), so 16 leaves a margin.
MIN_WORKER_OPEN_FILES: Final = 16

CONFIG_FILENAME: Final = "cordon.toml"


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Restart at most ``max`` times within ``within`` seconds, waiting ``backoff`` seconds
    before the first retry, doubling up to ``max_backoff``. ``eager``: a crashed worker is
    restarted as soon as its backoff has passed; otherwise on the next call."""

    max: int
    within: float
    backoff: float
    max_backoff: float
    eager: bool = True


class PluginSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What one plugin runs with, after merging its section over ``[defaults]``.

    Sizes are bytes and durations seconds. ``None`` means unlimited (only the OS limits allow
    it). ``settings`` is the plugin's own free-form table (``ctx.config``).
    """

    memory: int | None
    cpu_time: float | None
    call_timeout: float
    max_call_timeout: float
    open_files: int | None
    processes: int | None
    file_size: int | None
    max_message: int
    restart: RestartPolicy
    health_interval: float
    health_timeout: float
    sandbox: SandboxMode
    fs_read: tuple[str, ...]
    fs_write: tuple[str, ...]
    grant: tuple[str, ...]
    deny: tuple[str, ...]
    storage_quota: int
    log_rate: float
    activate: Activation
    idle_timeout: float
    enabled: bool
    middleware_policy: MiddlewarePolicy
    settings: dict[str, Any]
    #: Worker → host requests served at once, and the bytes of params they may hold.
    host_requests: int = 64
    host_request_memory: int = 16 * 1024 * 1024
    #: ``[plugins.<id>.exec.<command>]``: the operator's narrowing of each exec grant
    #: (argument patterns, extra environment, writable paths); see ``_exec_rules``.
    exec_rules: dict[str, ExecRule] = {}


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True):
    plugin_dirs: tuple[str, ...]
    state_dir: str
    strict_permissions: bool
    redact_patterns: tuple[str, ...]
    middleware_order: tuple[str, ...]
    cgroups: Literal["auto", "off"] = "auto"
    warm_workers: int = 1
    #: Whether ``cordon run`` loads installed distributions' ``cordon.plugins`` entry points.
    entry_points: bool = True
    #: The operator's log settings (``cordon run``/``call``); ``None``: the CLI's default.
    log_level: str | None = None
    log_format: str | None = None
    log_file: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """A validated configuration. ``plugins`` holds each listed plugin's settings already
    merged with ``defaults``; ``source`` is the file it came from (``None`` for the built-in
    defaults)."""

    runtime: RuntimeSettings
    defaults: PluginSettings
    plugins: dict[str, PluginSettings]
    source: str | None = None

    def for_plugin(self, plugin_id: str) -> PluginSettings:
        """The effective settings for ``plugin_id``: its own section, else the defaults."""
        return self.plugins.get(plugin_id, self.defaults)

    def to_toml_dict(self) -> dict[str, Any]:
        """The effective configuration as a TOML-shaped dict with human units, for
        ``cordon config show``. It parses back (:func:`parse_config`) to an equal config."""
        rt = self.runtime
        return {
            "runtime": {
                "plugin-dirs": list(rt.plugin_dirs),
                "state-dir": rt.state_dir,
                "strict-permissions": rt.strict_permissions,
                "redact-patterns": list(rt.redact_patterns),
                "middleware-order": list(rt.middleware_order),
                "cgroups": rt.cgroups,
                "warm-workers": rt.warm_workers,
                "entry-points": rt.entry_points,
                # TOML has no null: unset log settings are left out.
                **{
                    key: value
                    for key, value in (
                        ("log-level", rt.log_level),
                        ("log-format", rt.log_format),
                        ("log-file", rt.log_file),
                    )
                    if value is not None
                },
            },
            "defaults": _settings_to_dict(self.defaults, with_settings=False),
            "plugins": {pid: _settings_to_dict(s) for pid, s in sorted(self.plugins.items())},
        }

    def show(self) -> str:
        """:meth:`to_toml_dict` as TOML text, headed by where it came from."""
        if self.source is not None:
            origin = self.source
        else:
            origin = "built-in defaults" if self is DEFAULT_CONFIG else "not from a file"
        return f"# effective configuration ({origin})\n" + _dump_toml(self.to_toml_dict())


# -- the built-in defaults --------------------------------------------------------------------

_BUILTIN: Final = PluginSettings(
    memory=parse_size("256 MiB"),
    cpu_time=30.0,
    call_timeout=10.0,
    max_call_timeout=60.0,
    open_files=64,
    # No child processes: a plugin gets exec only through the host, which checks permissions.
    processes=0,
    file_size=parse_size("16 MiB"),
    max_message=parse_size("16 MiB"),
    restart=RestartPolicy(max=5, within=60.0, backoff=0.2, max_backoff=30.0),
    health_interval=5.0,
    health_timeout=2.0,
    sandbox="strict",
    fs_read=(),
    fs_write=(),
    grant=(),
    deny=(),
    storage_quota=parse_size("10 MiB"),
    log_rate=100.0,
    activate="lazy",
    idle_timeout=0.0,
    enabled=True,
    middleware_policy="fail-closed",
    settings={},
)

#: Used when no config file exists: safe for untrusted code (strict sandbox, no child
#: processes, nothing granted), loading no plugin directory on its own.
DEFAULT_CONFIG: Final = Config(
    runtime=RuntimeSettings(
        plugin_dirs=(),
        state_dir=".cordon",
        strict_permissions=False,
        redact_patterns=(),
        middleware_order=(),
    ),
    defaults=_BUILTIN,
    plugins={},
    source=None,
)


# -- field checkers ---------------------------------------------------------------------------

_Parse: TypeAlias = Callable[[Checker, str, object, "Path | None"], Any]

_SIZE_HINT: Final = 'a size with a unit (a string like "256 MiB")'
_DURATION_HINT: Final = 'a duration (a number of seconds or a string like "500 ms")'


def _or_unlimited(expected: str, nullable: bool) -> str:
    return f'{expected} or "{UNLIMITED}"' if nullable else expected


def _size(*, minimum: int = 0, nullable: bool = False, why: str = "") -> _Parse:
    """A size that must carry a unit (but 0); ``why`` says what ``minimum`` is for."""

    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> int | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            return ck.wrong_type(path, _or_unlimited(_SIZE_HINT, nullable), value)
        bare = unitless_size(value)
        if bare is not None:
            return ck.add(
                path,
                f'{show(value)} has no unit: write "{bare} MiB" (or "{bare} B" if you mean bytes)',
            )
        n = ck.expect_parsed(path, value, parse_size, _SIZE_HINT)
        if isinstance(n, int) and n < minimum:
            return ck.add(
                path, f"{show(value)} is too small{why} (at least {format_size(minimum)})"
            )
        return n

    return parse


def _open_files(ck: Checker, path: str, value: object, base: Path | None) -> int | Invalid | None:
    n: int | Invalid | None = _count(minimum=1, nullable=True)(ck, path, value, base)
    if isinstance(n, int) and n < MIN_WORKER_OPEN_FILES:
        return ck.add(
            path, f"{n} is too few for a worker to start (at least {MIN_WORKER_OPEN_FILES})"
        )
    return n


def _host_requests(ck: Checker, path: str, value: object, base: Path | None) -> int | Invalid:
    n: int | Invalid | None = _count(minimum=1)(ck, path, value, base)
    if isinstance(n, int) and n > MAX_HOST_REQUESTS:
        return ck.add(path, f"{n} is too many to be a bound (at most {MAX_HOST_REQUESTS})")
    assert n is not None  # not nullable
    return n


def _duration(*, positive: bool = False, nullable: bool = False) -> _Parse:
    def parse(ck: Checker, path: str, value: object, _b: Path | None) -> float | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return ck.wrong_type(path, _or_unlimited(_DURATION_HINT, nullable), value)
        s = ck.expect_parsed(path, value, parse_duration, _DURATION_HINT)
        if positive and s == 0:
            return ck.add(path, f"{show(value)} must be longer than zero")
        return s

    return parse


def _count(*, minimum: int = 0, nullable: bool = False) -> _Parse:
    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> int | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return ck.wrong_type(path, _or_unlimited("an integer", nullable), value)
        return ck.expect_int(path, value, minimum=minimum)

    return parse


def _rate(ck: Checker, path: str, value: object, _base: Path | None) -> float | Invalid:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ck.wrong_type(path, "a number (lines per second)", value)
    if not math.isfinite(value) or value <= 0:
        return ck.add(path, f"must be a positive number, got {show(value)}")
    return float(value)


def _choice(choices: tuple[str, ...]) -> _Parse:
    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> str | Invalid:
        return ck.expect_choice(path, value, choices)

    return parse


def _bool(ck: Checker, path: str, value: object, _base: Path | None) -> bool | Invalid:
    return ck.expect_bool(path, value)


def _resolve(text: str, base_dir: Path | None) -> str:
    """Relative paths are relative to the config file, not to wherever cordon was started."""
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    # normpath, not resolve(): symlinks are the sandbox's business at the time it applies.
    return os.path.normpath(p)


def _path(ck: Checker, path: str, value: object, base: Path | None) -> str | Invalid:
    text = ck.expect_str(path, value)
    if isinstance(text, Invalid):
        return text
    if "\x00" in text:
        return ck.add(path, f"{show(text)} is not a path (NUL character)")
    return _resolve(text, base)


def _paths(ck: Checker, path: str, value: object, base: Path | None) -> tuple[str, ...] | Invalid:
    items = ck.expect_list(path, value)
    if isinstance(items, Invalid):
        return items
    out: list[str] = []
    for i, item in enumerate(items):
        p = _path(ck, join(path, i), item, base)
        if not isinstance(p, Invalid):
            out.append(p)
    return tuple(out) if len(out) == len(items) else INVALID


def _permissions(*, deny: bool) -> _Parse:
    def parse(ck: Checker, path: str, value: object, _b: Path | None) -> tuple[str, ...] | Invalid:
        return ck.expect_str_list(path, value, check=lambda p: check_grant_string(p, deny=deny))

    return parse


_TOML_SCALARS: Final = (str, int, float, bool, datetime, date, time)


def _check_toml_value(ck: Checker, path: str, value: object) -> bool:
    """Settings travel to the worker as JSON; refuse (from code) what TOML could not hold."""
    if isinstance(value, _TOML_SCALARS):
        return True
    if isinstance(value, list | tuple):
        results = [_check_toml_value(ck, join(path, i), v) for i, v in enumerate(value)]
        return all(results)
    if isinstance(value, Mapping):
        ok = True
        for k, v in value.items():
            if not isinstance(k, str):
                ck.add(join(path, str(k)), f"keys must be strings, got {show(k)}")
                ok = False
            elif not _check_toml_value(ck, join(path, k), v):
                ok = False
        return ok
    ck.wrong_type(path, "a TOML value", value)
    return False


def _settings(
    ck: Checker, path: str, value: object, _base: Path | None
) -> dict[str, Any] | Invalid:
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return table
    if not _check_toml_value(ck, path, table):
        return INVALID
    # A private copy: the caller's mapping must not be able to change a frozen config later.
    return copy.deepcopy(dict(table))


_RESTART_KEYS: Final[dict[str, tuple[str, _Parse]]] = {
    "max": ("max", _count(minimum=0)),
    "within": ("within", _duration(positive=True)),
    "backoff": ("backoff", _duration()),
    "max-backoff": ("max_backoff", _duration(positive=True)),
    "eager": ("eager", _bool),
}

# key -> (attribute, parser). "restart" and "settings" are handled by _parse_section.
_FIELDS: Final[dict[str, tuple[str, _Parse]]] = {
    "memory": (
        "memory",
        _size(minimum=MIN_WORKER_MEMORY, nullable=True, why=" for a worker to start"),
    ),
    "cpu-time": ("cpu_time", _duration(positive=True, nullable=True)),
    "call-timeout": ("call_timeout", _duration(positive=True)),
    "max-call-timeout": ("max_call_timeout", _duration(positive=True)),
    "open-files": ("open_files", _open_files),
    "processes": ("processes", _count(minimum=0, nullable=True)),
    "file-size": ("file_size", _size(nullable=True)),
    "max-message": ("max_message", _size(minimum=MIN_MAX_MESSAGE)),
    "health-interval": ("health_interval", _duration(positive=True)),
    "health-timeout": ("health_timeout", _duration(positive=True)),
    "sandbox": ("sandbox", _choice(SANDBOX_MODES)),
    "fs-read": ("fs_read", _paths),
    "fs-write": ("fs_write", _paths),
    "grant": ("grant", _permissions(deny=False)),
    "deny": ("deny", _permissions(deny=True)),
    "storage-quota": ("storage_quota", _size()),
    "log-rate": ("log_rate", _rate),
    "host-requests": ("host_requests", _host_requests),
    "host-request-memory": (
        "host_request_memory",
        _size(minimum=MIN_HOST_REQUEST_MEMORY, why=" for worker → host requests"),
    ),
    "activate": ("activate", _choice(ACTIVATIONS)),
    "idle-timeout": ("idle_timeout", _duration()),
    "enabled": ("enabled", _bool),
    "middleware-policy": ("middleware_policy", _choice(MIDDLEWARE_POLICIES)),
}
_DEFAULTS_KEYS: Final = (*_FIELDS, "restart", "exec")
_EXEC_KEYS: Final = ("allow", "env", "write")
_PLUGIN_KEYS: Final = (*_DEFAULTS_KEYS, "settings")


def _parse_restart(
    ck: Checker, path: str, value: object, base: RestartPolicy, base_dir: Path | None
) -> RestartPolicy:
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return base
    ck.check_keys(path, table, _RESTART_KEYS)
    changes: dict[str, Any] = {}
    for key, (attr, parse) in _RESTART_KEYS.items():
        if key in table:
            v = parse(ck, join(path, key), table[key], base_dir)
            if not isinstance(v, Invalid):
                changes[attr] = v
    merged = msgspec.structs.replace(base, **changes)
    if merged.backoff > merged.max_backoff and ({"backoff", "max-backoff"} & set(table)):
        where = join(path, "backoff" if "backoff" in table else "max-backoff")
        ck.add(
            where,
            f"backoff ({format_duration(merged.backoff)}) is longer than max-backoff "
            f"({format_duration(merged.max_backoff)})",
        )
    return merged


def _parse_exec(
    ck: Checker,
    path: str,
    value: object,
    base: Mapping[str, ExecRule],
    base_dir: Path | None,
) -> dict[str, ExecRule]:
    """``[<section>.exec.<command>]`` tables, merged command by command over ``base`` (a
    plugin section naming ``docker`` must not drop the defaults' narrowing of ``git``)."""
    out = dict(base)
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return out
    for command, spec in table.items():
        where = join(path, str(command))
        if (why := check_permission_string(f"exec:{command}")) is not None:
            ck.add(where, f"{show(command)} is not a command name (no path, no spaces)")
            continue
        entry = ck.expect_table(where, spec)
        if isinstance(entry, Invalid):
            continue
        ck.check_keys(where, entry, _EXEC_KEYS)
        allow: tuple[str, ...] | None = None
        if "allow" in entry:
            items = ck.expect_list(join(where, "allow"), entry["allow"])
            if not isinstance(items, Invalid):
                bad = [
                    ck.add(join(join(where, "allow"), i), f"not an argument pattern: {why}")
                    for i, item in enumerate(items)
                    if (why := check_pattern(item)) is not None
                ]
                allow = None if bad else tuple(items)
        env: dict[str, str] = {}
        if "env" in entry:
            env_table = ck.expect_table(join(where, "env"), entry["env"])
            if not isinstance(env_table, Invalid):
                for name, text in env_table.items():
                    at = join(join(where, "env"), str(name))
                    if (why := check_env_name(str(name))) is not None:
                        ck.add(at, why)
                    elif not isinstance(text, str) or "\x00" in text:
                        ck.wrong_type(at, "a string without NUL", text)
                    else:
                        env[str(name)] = text
        write: tuple[str, ...] = ()
        if "write" in entry:
            paths = _paths(ck, join(where, "write"), entry["write"], base_dir)
            if not isinstance(paths, Invalid):
                write = paths
        out[str(command)] = ExecRule(allow=allow, env=env, write=write)
    return out


def _parse_section(
    ck: Checker,
    path: str,
    table: Mapping[str, Any],
    base: PluginSettings,
    base_dir: Path | None,
    *,
    is_plugin: bool,
) -> PluginSettings:
    """``base`` with the keys ``table`` sets; invalid values are reported and skipped."""
    if is_plugin:
        ck.check_keys(path, table, _PLUGIN_KEYS)
    else:
        ck.check_keys(path, {k: v for k, v in table.items() if k != "settings"}, _DEFAULTS_KEYS)
        if "settings" in table:
            ck.add(
                join(path, "settings"),
                "settings belong to one plugin: put them under [plugins.<id>]",
            )
    changes: dict[str, Any] = {}
    for key, (attr, parse) in _FIELDS.items():
        if key in table:
            v = parse(ck, join(path, key), table[key], base_dir)
            if not isinstance(v, Invalid):
                changes[attr] = v
    if "deny" in changes and is_plugin:
        changes["deny"] = tuple(dict.fromkeys((*base.deny, *changes["deny"])))
    if "exec" in table:
        changes["exec_rules"] = _parse_exec(
            ck, join(path, "exec"), table["exec"], base.exec_rules, base_dir
        )
    if "restart" in table:
        changes["restart"] = _parse_restart(
            ck, join(path, "restart"), table["restart"], base.restart, base_dir
        )
    if is_plugin:
        # A plugin section without settings gets an empty table, never the defaults' one.
        changes["settings"] = {}
        if "settings" in table:
            s = _settings(ck, join(path, "settings"), table["settings"], base_dir)
            if not isinstance(s, Invalid):
                changes["settings"] = s
    merged = msgspec.structs.replace(base, **changes)
    # Cross-field checks. Report them only where this section set one of the two keys, so an
    # inconsistent [defaults] is reported once, not again under every plugin inheriting it.
    if merged.call_timeout > merged.max_call_timeout and (
        {"call-timeout", "max-call-timeout"} & set(table)
    ):
        ck.add(
            join(path, "call-timeout" if "call-timeout" in table else "max-call-timeout"),
            f"call-timeout ({format_duration(merged.call_timeout)}) is longer than "
            f"max-call-timeout ({format_duration(merged.max_call_timeout)})",
        )
    return merged


_RUNTIME_KEYS: Final = (
    "plugin-dirs",
    "state-dir",
    "strict-permissions",
    "redact-patterns",
    "middleware-order",
    "cgroups",
    "warm-workers",
    "entry-points",
    "log-level",
    "log-format",
    "log-file",
)


def _parse_runtime(ck: Checker, table: Mapping[str, Any], base_dir: Path | None) -> RuntimeSettings:
    ck.check_keys("runtime", table, _RUNTIME_KEYS)
    rt = DEFAULT_CONFIG.runtime
    changes: dict[str, Any] = {}
    if "plugin-dirs" in table:
        changes["plugin_dirs"] = _paths(ck, "runtime.plugin-dirs", table["plugin-dirs"], base_dir)
    if "state-dir" in table:
        changes["state_dir"] = _path(ck, "runtime.state-dir", table["state-dir"], base_dir)
    if "strict-permissions" in table:
        changes["strict_permissions"] = ck.expect_bool(
            "runtime.strict-permissions", table["strict-permissions"]
        )
    if "redact-patterns" in table:
        changes["redact_patterns"] = ck.expect_str_list(
            "runtime.redact-patterns", table["redact-patterns"], check=_check_regex
        )
    if "middleware-order" in table:
        changes["middleware_order"] = ck.expect_str_list(
            "runtime.middleware-order", table["middleware-order"], check=_check_id, unique=True
        )
    if "cgroups" in table:
        changes["cgroups"] = ck.expect_choice("runtime.cgroups", table["cgroups"], ("auto", "off"))
    if "warm-workers" in table:
        changes["warm_workers"] = ck.expect_int(
            "runtime.warm-workers", table["warm-workers"], minimum=0
        )
    if "entry-points" in table:
        changes["entry_points"] = ck.expect_bool("runtime.entry-points", table["entry-points"])
    if "log-level" in table:
        changes["log_level"] = ck.expect_choice(
            "runtime.log-level", table["log-level"], ("debug", "info", "warning", "error")
        )
    if "log-format" in table:
        changes["log_format"] = ck.expect_choice(
            "runtime.log-format", table["log-format"], ("console", "json")
        )
    if "log-file" in table:
        changes["log_file"] = _path(ck, "runtime.log-file", table["log-file"], base_dir)
    return msgspec.structs.replace(
        rt, **{k: v for k, v in changes.items() if not isinstance(v, Invalid)}
    )


def _check_regex(pattern: str) -> str | None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"{show(pattern)} is not a valid regular expression: {exc}"
    # A pattern matching nothing at all would "redact" the gap between every two characters.
    if compiled.fullmatch("") is not None:
        return f"{show(pattern)} matches the empty string, so it would redact everywhere"
    return None


def _check_id(plugin_id: str) -> str | None:
    if PLUGIN_ID.fullmatch(plugin_id):
        return None
    return (
        f"{show(plugin_id)} is not a plugin id (lower-case letter, then up to 63 lower-case "
        "letters, digits, _ or -)"
    )


# -- entry points -----------------------------------------------------------------------------


def parse_config(
    data: Mapping[str, Any], *, source: str | None = None, base_dir: Path | None = None
) -> Config:
    """Validate ``data`` (a parsed ``cordon.toml``) into a :class:`Config`.

    Relative paths resolve against ``base_dir`` (left as written when it is ``None``). Raises
    one :class:`ConfigError` listing every problem.
    """
    ck = Checker()
    config = _parse(ck, data, source=source, base_dir=base_dir)
    if ck:
        raise ConfigError(source=source, problems=ck.problems)
    return config


def _parse(ck: Checker, data: object, *, source: str | None, base_dir: Path | None) -> Config:
    # Typed `object`: callers from code may pass anything, whatever the annotation says.
    if not isinstance(data, Mapping):
        ck.wrong_type("", "a table", data)
        return DEFAULT_CONFIG
    ck.check_keys("", data, ("runtime", "defaults", "plugins"))
    runtime = DEFAULT_CONFIG.runtime
    rt_table = ck.expect_table("runtime", data.get("runtime", {}))
    if not isinstance(rt_table, Invalid):
        runtime = _parse_runtime(ck, rt_table, base_dir)
    defaults = _BUILTIN
    d_table = ck.expect_table("defaults", data.get("defaults", {}))
    if not isinstance(d_table, Invalid):
        defaults = _parse_section(ck, "defaults", d_table, _BUILTIN, base_dir, is_plugin=False)
    plugins: dict[str, PluginSettings] = {}
    p_table = ck.expect_table("plugins", data.get("plugins", {}))
    if not isinstance(p_table, Invalid):
        for pid, section in p_table.items():
            path = join("plugins", str(pid))
            if not isinstance(pid, str) or (why := _check_id(pid)) is not None:
                ck.add(path, why if isinstance(pid, str) else f"{show(pid)} is not a plugin id")
                continue
            table = ck.expect_table(path, section)
            if not isinstance(table, Invalid):
                plugins[pid] = _parse_section(ck, path, table, defaults, base_dir, is_plugin=True)
    return Config(runtime=runtime, defaults=defaults, plugins=plugins, source=source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. A missing or unreadable file and TOML syntax errors
    (with line and column) are :class:`ConfigError` s too."""
    p = Path(path)
    ck = Checker()
    data = read_toml(p, ck)
    if ck:
        raise ConfigError(source=str(p), problems=ck.problems)
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)


def find_config(explicit: str | os.PathLike[str] | None, cwd: Path | None = None) -> Config:
    """The config to run with: ``explicit`` if given (it must exist), else ``./cordon.toml``
    if there is one, else :data:`DEFAULT_CONFIG`."""
    here = cwd if cwd is not None else Path.cwd()
    if explicit is not None:
        p = Path(explicit).expanduser()
        return load_config(p if p.is_absolute() else here / p)
    candidate = here / CONFIG_FILENAME
    if candidate.exists():
        return load_config(candidate)
    return DEFAULT_CONFIG


# -- display ----------------------------------------------------------------------------------


def _human_size(n: int | None) -> str:
    return UNLIMITED if n is None else format_size(n)


def _human_duration(s: float | None) -> str:
    return UNLIMITED if s is None else format_duration(s)


def _settings_to_dict(s: PluginSettings, *, with_settings: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "memory": _human_size(s.memory),
        "cpu-time": _human_duration(s.cpu_time),
        "call-timeout": format_duration(s.call_timeout),
        "max-call-timeout": format_duration(s.max_call_timeout),
        "open-files": UNLIMITED if s.open_files is None else s.open_files,
        "processes": UNLIMITED if s.processes is None else s.processes,
        "file-size": _human_size(s.file_size),
        "max-message": format_size(s.max_message),
        "restart": {
            "max": s.restart.max,
            "within": format_duration(s.restart.within),
            "backoff": format_duration(s.restart.backoff),
            "max-backoff": format_duration(s.restart.max_backoff),
            "eager": s.restart.eager,
        },
        "health-interval": format_duration(s.health_interval),
        "health-timeout": format_duration(s.health_timeout),
        "sandbox": s.sandbox,
        "fs-read": list(s.fs_read),
        "fs-write": list(s.fs_write),
        "grant": list(s.grant),
        "deny": list(s.deny),
        "storage-quota": format_size(s.storage_quota),
        "log-rate": int(s.log_rate) if s.log_rate.is_integer() else s.log_rate,
        "host-requests": s.host_requests,
        "host-request-memory": format_size(s.host_request_memory),
        "activate": s.activate,
        "idle-timeout": format_duration(s.idle_timeout),
        "enabled": s.enabled,
        "middleware-policy": s.middleware_policy,
    }
    if s.exec_rules:
        out["exec"] = {cmd: _exec_rule_to_dict(r) for cmd, r in sorted(s.exec_rules.items())}
    if with_settings:
        out["settings"] = copy.deepcopy(s.settings)
    return out


def _exec_rule_to_dict(rule: ExecRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.allow is not None:
        out["allow"] = list(rule.allow)
    if rule.env:
        out["env"] = dict(rule.env)
    if rule.write:
        out["write"] = list(rule.write)
    return out


def _toml_key(key: str) -> str:
    return join("", key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are TOML's too; DEL is the one control character JSON leaves raw.
        return show(value, limit=1 << 62).replace("\x7f", "\\u007f")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _dump_toml(doc: Mapping[str, Any]) -> str:
    """Just enough TOML writing for :meth:`Config.show`: one header per section, nested
    tables inline (settings may nest arbitrarily)."""
    lines: list[str] = []

    def section(header: str, table: Mapping[str, Any]) -> None:
        lines.append(f"\n[{header}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())

    section("runtime", doc["runtime"])
    section("defaults", doc["defaults"])
    for pid, table in doc["plugins"].items():
        section(join("plugins", pid), table)
    return "\n".join(lines).lstrip("\n") + "\n"
