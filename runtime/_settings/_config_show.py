"""The effective configuration written back as TOML, for ``cordon config show``.

Human units again (``"256 MiB"``, ``"30 s"``, ``"unlimited"``), one header per section and
nested tables inline. What is written here parses back (:func:`~._config.parse_config`) to an
equal config, so the checkers' spellings and these must agree.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any

from ._config_values import UNLIMITED
from ._http_keys import http_table_to_dict
from ._units import format_duration, format_size
from ._validate import join, show

if TYPE_CHECKING:
    from ._config import PluginSettings
    from ._exec_rules import ExecRule

__all__ = ["dump_toml", "settings_to_dict"]


def _human_size(n: int | None) -> str:
    return UNLIMITED if n is None else format_size(n)


def _human_duration(s: float | None) -> str:
    return UNLIMITED if s is None else format_duration(s)


def settings_to_dict(s: PluginSettings, *, with_settings: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "memory": _human_size(s.memory),
        "cpu-time": _human_duration(s.cpu_time),
        "call-timeout": format_duration(s.call_timeout),
        "max-call-timeout": format_duration(s.max_call_timeout),
        "open-files": UNLIMITED if s.open_files is None else s.open_files,
        "processes": UNLIMITED if s.processes is None else s.processes,
        "file-size": _human_size(s.file_size),
        "max-message": format_size(s.max_message),
        "max-frame-values": s.max_frame_values,
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
    out["http"] = http_table_to_dict(s.http)
    if s.secrets:
        out["secrets"] = {
            name: {"env": spec.env, "hosts": list(spec.hosts)}
            for name, spec in sorted(s.secrets.items())
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
    if rule.input:
        out["input"] = True
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


def dump_toml(doc: Mapping[str, Any]) -> str:
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
