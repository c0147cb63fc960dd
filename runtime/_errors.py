"""Host-side errors. They share the root :class:`~cordon.protocol.CordonError` with the wire
errors so ``except CordonError`` catches everything cordon raises on purpose."""

from __future__ import annotations

from typing import Any

from cordon.protocol import CordonError

__all__ = ["ConfigError", "ManifestError", "Problem"]


class Problem(dict[str, Any]):
    """One thing wrong in a file: ``{"path": "plugins.hello.memory", "message": "..."}``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path=path, message=message)

    def __str__(self) -> str:
        return f"{self['path']}: {self['message']}" if self["path"] else self["message"]


def _listing(what: str, source: str | None, problems: list[Problem]) -> str:
    where = f" in {source}" if source else ""
    lines = [f"{len(problems)} problem(s) with {what}{where}:"]
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


class ConfigError(CordonError):
    """The operator's configuration is invalid. ``problems`` lists every one at once."""

    code = -32010
    _fields = ("source", "problems")
    _what = "the configuration"
    source: str | None
    problems: list[Problem]

    def __init__(self, message: str = "", **fields: Any) -> None:
        problems = [
            p if isinstance(p, Problem) else Problem(p["path"], p["message"])
            for p in fields.get("problems") or []
        ]
        fields["problems"] = problems
        super().__init__(message or _listing(self._what, fields.get("source"), problems), **fields)


class ManifestError(ConfigError):
    """A plugin's ``plugin.toml`` is invalid. ``problems`` lists every one at once."""

    code = -32011
    _what = "the manifest"
