"""The keys of a ``[defaults]`` or ``[plugins.<id>]`` section: what one plugin runs with.

Limits (memory, CPU time, open files, processes, file size, frame size), quotas (storage, log
rate, worker → host requests), timeouts, the restart policy, the sandbox, grants and denials,
the ``exec`` tables that narrow each granted command, activation, and (for a plugin) its own
settings. :func:`parse_section` reads one section over a base (the built-in defaults for
``[defaults]``, the merged ``[defaults]`` for a plugin); :mod:`._config` owns the resulting
:class:`~._config.PluginSettings` and the file as a whole.

The floors and ceilings below are the least a worker can run with: a value past them is
reported by ``config check`` rather than by every call failing at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import msgspec

from ._config_values import (
    FieldParse,
    bool_field,
    choice_field,
    count_field,
    duration_field,
    grants_field,
    paths_field,
    rate_field,
    settings_field,
    size_field,
)
from ._exec_rules import ExecRule, check_env_name, check_pattern, input_problem
from ._http_keys import parse_http_table, parse_secrets
from ._permissions import check_permission_string
from ._units import format_duration
from ._validate import Checker, Invalid, join, show

if TYPE_CHECKING:
    from ._config import PluginSettings, RestartPolicy

__all__ = [
    "ACTIVATIONS",
    "MAX_HOST_REQUESTS",
    "MIDDLEWARE_POLICIES",
    "MIN_HOST_REQUEST_MEMORY",
    "MIN_MAX_MESSAGE",
    "MIN_WORKER_MEMORY",
    "MIN_WORKER_OPEN_FILES",
    "SANDBOX_MODES",
    "Activation",
    "MiddlewarePolicy",
    "SandboxMode",
    "parse_section",
]

SandboxMode: TypeAlias = Literal["strict", "best-effort", "off"]
Activation: TypeAlias = Literal["lazy", "eager"]
MiddlewarePolicy: TypeAlias = Literal["fail-open", "fail-closed"]

SANDBOX_MODES: Final[tuple[SandboxMode, ...]] = ("strict", "best-effort", "off")
ACTIVATIONS: Final[tuple[Activation, ...]] = ("lazy", "eager")
MIDDLEWARE_POLICIES: Final[tuple[MiddlewarePolicy, ...]] = ("fail-open", "fail-closed")

#: Frames must at least fit the handshake and an error object; below this nothing works.
MIN_MAX_MESSAGE: Final = 4096
#: host-requests: past this the bound stops being one (each is a host task); 64 (the
#: default) already keeps a storage batch full.
MAX_HOST_REQUESTS: Final = 4096
#: host-request-memory: below a few requests' worth the bound only adds latency (one request
#: is always admitted whatever its size).
MIN_HOST_REQUEST_MEMORY: Final = 64 * 1024
#: max-frame-values: a plugin's handshake (its contributions and their schemas), its errors
#: and log records must fit; 10k values is a few hundred tools' schemas.
MIN_FRAME_VALUES: Final = 10_000
#: The least memory a worker can start and idle in. Measured (Linux 6.18, CPython 3.11, strict
#: sandbox, examples/plugins/hello serving calls through health pings): 23 MiB with a memory
#: cgroup, 28 MiB with cgroups off (below it the worker dies of SIGSEGV growing its stack
#: under RLIMIT_AS); idle RSS is ~23 MiB. 48 MiB leaves room for another Python or libc.
#: Below it every start fails, which ``config check`` should say rather than every call.
MIN_WORKER_MEMORY: Final = 48 * 1024 * 1024
#: The fewest open files a worker starts with: it needs 8 (channel, stderr, event loop,
#: self-pipe, the module files it imports), so 16 leaves a margin.
MIN_WORKER_OPEN_FILES: Final = 16


def _open_files(ck: Checker, path: str, value: object, base: Path | None) -> int | Invalid | None:
    n: int | Invalid | None = count_field(minimum=1, nullable=True)(ck, path, value, base)
    if isinstance(n, int) and n < MIN_WORKER_OPEN_FILES:
        return ck.add(
            path, f"{n} is too few for a worker to start (at least {MIN_WORKER_OPEN_FILES})"
        )
    return n


def _host_requests(ck: Checker, path: str, value: object, base: Path | None) -> int | Invalid:
    n: int | Invalid | None = count_field(minimum=1)(ck, path, value, base)
    if isinstance(n, int) and n > MAX_HOST_REQUESTS:
        return ck.add(path, f"{n} is too many to be a bound (at most {MAX_HOST_REQUESTS})")
    assert n is not None  # not nullable
    return n


_RESTART_KEYS: Final[dict[str, tuple[str, FieldParse]]] = {
    "max": ("max", count_field(minimum=0)),
    "within": ("within", duration_field(positive=True)),
    "backoff": ("backoff", duration_field()),
    "max-backoff": ("max_backoff", duration_field(positive=True)),
    "eager": ("eager", bool_field),
}

# key -> (attribute, parser). "restart" and "settings" are handled by parse_section.
_FIELDS: Final[dict[str, tuple[str, FieldParse]]] = {
    "memory": (
        "memory",
        size_field(minimum=MIN_WORKER_MEMORY, nullable=True, why=" for a worker to start"),
    ),
    "cpu-time": ("cpu_time", duration_field(positive=True, nullable=True)),
    "call-timeout": ("call_timeout", duration_field(positive=True)),
    "max-call-timeout": ("max_call_timeout", duration_field(positive=True)),
    "open-files": ("open_files", _open_files),
    "processes": ("processes", count_field(minimum=0, nullable=True)),
    "file-size": ("file_size", size_field(nullable=True)),
    "max-message": ("max_message", size_field(minimum=MIN_MAX_MESSAGE)),
    "max-frame-values": ("max_frame_values", count_field(minimum=MIN_FRAME_VALUES)),
    "health-interval": ("health_interval", duration_field(positive=True)),
    "health-timeout": ("health_timeout", duration_field(positive=True)),
    "sandbox": ("sandbox", choice_field(SANDBOX_MODES)),
    "fs-read": ("fs_read", paths_field),
    "fs-write": ("fs_write", paths_field),
    "grant": ("grant", grants_field(deny=False)),
    "deny": ("deny", grants_field(deny=True)),
    "storage-quota": ("storage_quota", size_field()),
    "log-rate": ("log_rate", rate_field),
    "host-requests": ("host_requests", _host_requests),
    "host-request-memory": (
        "host_request_memory",
        size_field(minimum=MIN_HOST_REQUEST_MEMORY, why=" for worker → host requests"),
    ),
    "activate": ("activate", choice_field(ACTIVATIONS)),
    "idle-timeout": ("idle_timeout", duration_field()),
    "enabled": ("enabled", bool_field),
    "middleware-policy": ("middleware_policy", choice_field(MIDDLEWARE_POLICIES)),
}
_DEFAULTS_KEYS: Final = (*_FIELDS, "restart", "exec", "http")
_EXEC_KEYS: Final = ("allow", "env", "write", "input")
#: secrets belong to one plugin: a [defaults] secret would go to every plugin's requests.
_PLUGIN_KEYS: Final = (*_DEFAULTS_KEYS, "settings", "secrets")


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
            paths = paths_field(ck, join(where, "write"), entry["write"], base_dir)
            if not isinstance(paths, Invalid):
                write = paths
        stdin = False
        if "input" in entry:
            flag = ck.expect_bool(join(where, "input"), entry["input"])
            if not isinstance(flag, Invalid):
                stdin = flag
        rule = ExecRule(allow=allow, env=env, write=write, input=stdin)
        if "allow" not in entry and (why := input_problem(str(command), rule)) is not None:
            # Not when allow is present but invalid: that error is reported already.
            ck.add(join(where, "input"), why)
            rule = ExecRule(allow=allow, env=env, write=write)
        out[str(command)] = rule
    return out


def parse_section(
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
    if "http" in table:
        changes["http"] = parse_http_table(
            ck, join(path, "http"), table["http"], base.http, base_dir
        )
    if "secrets" in table and is_plugin:
        changes["secrets"] = parse_secrets(
            ck, join(path, "secrets"), table["secrets"], base.secrets, base_dir
        )
    if "restart" in table:
        changes["restart"] = _parse_restart(
            ck, join(path, "restart"), table["restart"], base.restart, base_dir
        )
    if is_plugin:
        # A plugin section without settings gets an empty table, never the defaults' one.
        changes["settings"] = {}
        if "settings" in table:
            s = settings_field(ck, join(path, "settings"), table["settings"], base_dir)
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
