"""The ``[runtime]`` table of ``cordon.toml``: the host's own settings, not any plugin's.

Where plugins are found and state is kept, strict permissions, extra redaction patterns, the
middleware order, cgroups, warm workers, entry points and the log settings. Its values share
the field checkers of :mod:`._config_values`; :class:`~._config.RuntimeSettings` is the
result and :mod:`._config` reads the file around it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._config_values import check_plugin_id, path_field, paths_field
from ._validate import Checker, Invalid, show

if TYPE_CHECKING:
    from ._config import RuntimeSettings

__all__ = ["parse_runtime"]

_RUNTIME_KEYS: Final = (
    "plugin-dirs",
    "state-dir",
    "strict-permissions",
    "redact-patterns",
    "middleware-order",
    "cgroups",
    "warm-workers",
    "launcher",
    "entry-points",
    "log-level",
    "log-format",
    "log-file",
    "trusted-keys",
    "require-signatures",
)

#: A publisher key as ``cordon key new`` prints it: ``ed25519:`` and 32 bytes in base64.
_ED25519_KEY: Final = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")


def parse_runtime(
    ck: Checker, table: Mapping[str, Any], rt: RuntimeSettings, base_dir: Path | None
) -> RuntimeSettings:
    """``rt`` (the built-in runtime settings) with the keys ``table`` sets."""
    ck.check_keys("runtime", table, _RUNTIME_KEYS)
    changes: dict[str, Any] = {}
    if "plugin-dirs" in table:
        changes["plugin_dirs"] = paths_field(
            ck, "runtime.plugin-dirs", table["plugin-dirs"], base_dir
        )
    if "state-dir" in table:
        changes["state_dir"] = path_field(ck, "runtime.state-dir", table["state-dir"], base_dir)
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
            "runtime.middleware-order",
            table["middleware-order"],
            check=check_plugin_id,
            unique=True,
        )
    if "cgroups" in table:
        changes["cgroups"] = ck.expect_choice("runtime.cgroups", table["cgroups"], ("auto", "off"))
    if "warm-workers" in table:
        changes["warm_workers"] = ck.expect_int(
            "runtime.warm-workers", table["warm-workers"], minimum=0
        )
    if "launcher" in table:
        changes["launcher"] = ck.expect_choice(
            "runtime.launcher", table["launcher"], ("zygote", "spawn")
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
        changes["log_file"] = path_field(ck, "runtime.log-file", table["log-file"], base_dir)
    if "trusted-keys" in table:
        changes["trusted_keys"] = ck.expect_str_list(
            "runtime.trusted-keys", table["trusted-keys"], check=_check_key, unique=True
        )
    if "require-signatures" in table:
        changes["require_signatures"] = ck.expect_bool(
            "runtime.require-signatures", table["require-signatures"]
        )
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


def _check_key(key: str) -> str | None:
    # Checked here by shape (this room may not import the package room's key parser): a
    # typo'd key would otherwise silently trust nobody, or the wrong key.
    if _ED25519_KEY.fullmatch(key) is None:
        return (
            f"{show(key)} is not a publisher key (expected 'ed25519:' and 32 bytes in "
            "base64, as `cordon key new` prints)"
        )
    return None
