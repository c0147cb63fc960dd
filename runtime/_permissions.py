"""Permission strings: their grammar, and the effective set a plugin runs with.

Grammar: ``log``, ``storage``, ``storage:shared``, ``config``, ``events:emit:<glob>``,
``events:subscribe:<glob>``, ``exec:<command>``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["check_permission_string"]

_SIMPLE: Final = frozenset({"log", "storage", "storage:shared", "config"})
_TOPIC_GLOB: Final = re.compile(r"^[A-Za-z0-9_.*?\-/\[\]!]{1,200}$")
_COMMAND: Final = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}$")


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
            if not pattern.match(rest):
                return f"{perm!r}: {rest!r} is not {what}"
            return None
    return (
        f"unknown permission {perm!r} (known: log, storage, storage:shared, config, "
        "events:emit:<topic>, events:subscribe:<topic>, exec:<command>)"
    )
