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
    trusted-keys = []                    # publisher keys "ed25519:..." for plugin installs
    require-signatures = false           # installs refuse packages no trusted key signed

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

This module holds the config's types, the built-in defaults and reading a file as a whole;
the parts live beside it: :mod:`._plugin_keys` (a ``[defaults]``/``[plugins.<id>]``
section: limits, quotas, grants, exec tables), :mod:`._runtime_keys` (the ``[runtime]``
table), :mod:`._config_values` (how one value is checked) and :mod:`._config_show` (the
config written back as TOML).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from .._errors import ConfigError
from ._config_show import dump_toml, settings_to_dict
from ._config_values import check_plugin_id
from ._exec_rules import ExecRule
from ._http_keys import HttpLimits, SecretSpec
from ._plugin_keys import Activation, MiddlewarePolicy, SandboxMode, parse_section
from ._runtime_keys import parse_runtime
from ._units import parse_size
from ._validate import Checker, Invalid, join, read_toml, show

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
    #: A frame from the worker with more JSON values (structural bytes) is refused undecoded:
    #: what one frame may hold the host's loop (``max-frame-values``).
    max_frame_values: int = 100_000
    #: ``[plugins.<id>.exec.<command>]``: the operator's narrowing of each exec grant
    #: (argument patterns, extra environment, writable paths); see ``_exec_rules``.
    exec_rules: dict[str, ExecRule] = {}
    #: ``http = {...}``: the bounds on ``ctx.http`` (``_http_keys.HttpLimits``).
    http: HttpLimits = HttpLimits()
    #: ``[plugins.<id>.secrets.<NAME>]``: where each secret comes from and where it may go.
    secrets: dict[str, SecretSpec] = {}


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True):
    plugin_dirs: tuple[str, ...]
    state_dir: str
    strict_permissions: bool
    redact_patterns: tuple[str, ...]
    middleware_order: tuple[str, ...]
    cgroups: Literal["auto", "off"] = "auto"
    warm_workers: int = 1
    #: How workers start (``zygote``: forked from a template process; ``spawn``: a fresh
    #: interpreter); ``None``: the zygote where the kernel allows it (``$CORDON_LAUNCHER``
    #: overrides that default).
    launcher: Literal["zygote", "spawn"] | None = None
    #: Whether ``cordon run`` loads installed distributions' ``cordon.plugins`` entry points.
    entry_points: bool = True
    #: The operator's log settings (``cordon run``/``call``); ``None``: the CLI's default.
    log_level: str | None = None
    log_format: str | None = None
    log_file: str | None = None
    #: Publisher keys (``ed25519:<base64>``) an install accepts when signatures are required.
    trusted_keys: tuple[str, ...] = ()
    #: Whether ``cordon plugin install`` refuses packages not signed by a trusted key.
    require_signatures: bool = False


class RegistrySettings(msgspec.Struct, frozen=True, kw_only=True):
    """``[registry]``: where ``cordon plugin search|install ID|publish`` go (``--registry``
    overrides it); ``None``: no default registry."""

    url: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """A validated configuration. ``plugins`` holds each listed plugin's settings already
    merged with ``defaults``; ``source`` is the file it came from (``None`` for the built-in
    defaults)."""

    runtime: RuntimeSettings
    defaults: PluginSettings
    plugins: dict[str, PluginSettings]
    source: str | None = None
    registry: RegistrySettings = msgspec.field(default_factory=RegistrySettings)

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
                "trusted-keys": list(rt.trusted_keys),
                "require-signatures": rt.require_signatures,
                # TOML has no null: unset log settings are left out.
                **{
                    key: value
                    for key, value in (
                        ("log-level", rt.log_level),
                        ("log-format", rt.log_format),
                        ("log-file", rt.log_file),
                        ("launcher", rt.launcher),
                    )
                    if value is not None
                },
            },
            "defaults": settings_to_dict(self.defaults, with_settings=False),
            "plugins": {pid: settings_to_dict(s) for pid, s in sorted(self.plugins.items())},
            **({"registry": {"url": self.registry.url}} if self.registry.url else {}),
        }

    def show(self) -> str:
        """:meth:`to_toml_dict` as TOML text, headed by where it came from."""
        if self.source is not None:
            origin = self.source
        else:
            origin = "built-in defaults" if self is DEFAULT_CONFIG else "not from a file"
        return f"# effective configuration ({origin})\n" + dump_toml(self.to_toml_dict())


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
    ck.check_keys("", data, ("runtime", "defaults", "plugins", "registry"))
    runtime = DEFAULT_CONFIG.runtime
    rt_table = ck.expect_table("runtime", data.get("runtime", {}))
    if not isinstance(rt_table, Invalid):
        runtime = parse_runtime(ck, rt_table, DEFAULT_CONFIG.runtime, base_dir)
    defaults = _BUILTIN
    d_table = ck.expect_table("defaults", data.get("defaults", {}))
    if not isinstance(d_table, Invalid):
        defaults = parse_section(ck, "defaults", d_table, _BUILTIN, base_dir, is_plugin=False)
    plugins: dict[str, PluginSettings] = {}
    p_table = ck.expect_table("plugins", data.get("plugins", {}))
    if not isinstance(p_table, Invalid):
        for pid, section in p_table.items():
            path = join("plugins", str(pid))
            if not isinstance(pid, str) or (why := check_plugin_id(pid)) is not None:
                ck.add(path, why if isinstance(pid, str) else f"{show(pid)} is not a plugin id")
                continue
            table = ck.expect_table(path, section)
            if not isinstance(table, Invalid):
                plugins[pid] = parse_section(ck, path, table, defaults, base_dir, is_plugin=True)
    registry = RegistrySettings()
    r_table = ck.expect_table("registry", data.get("registry", {}))
    if not isinstance(r_table, Invalid):
        ck.check_keys("registry", r_table, ("url",))
        if "url" in r_table:
            url = ck.expect_str(join("registry", "url"), r_table["url"], max_len=2000)
            if isinstance(url, str):
                registry = RegistrySettings(url=url)
    return Config(
        runtime=runtime, defaults=defaults, plugins=plugins, source=source, registry=registry
    )


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
