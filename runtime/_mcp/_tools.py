"""Tool contributions → MCP tool definitions: names, schemas, descriptions, behaviour hints.

Pure data, no ``mcp`` import: the bridge turns a :class:`BridgedTool` into the SDK's ``Tool``.

**Names.** MCP (SEP-986, enforced by the SDK's ``tool_name_validation``) wants 1-128 characters
of ``[A-Za-z0-9._-]``. A bridged tool is named ``<plugin><separator><tool>`` (``hello.greet``);
plugin ids and tool names already use only those characters, so a name is changed only when it
must be: a character outside the set becomes ``_``, a name past 128 characters is cut and ends
in 8 hex digits of its full qualified name's SHA-256, and a name already taken (possible only
after those changes, or with a separator that also occurs inside names) gets ``-2``, ``-3``...
in order of ``(plugin, tool)``. So the same plugins always give the same names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .._hostapi._redact import neutralise

if TYPE_CHECKING:
    from .._core._runtime import Runtime

__all__ = ["MAX_NAME", "SEPARATORS", "BridgedTool", "bridged_tools", "mcp_names"]

#: SEP-986: tool names are at most 128 characters.
MAX_NAME: Final = 128
#: What may join plugin and tool. "." says it best; clients that accept only
#: ``[A-Za-z0-9_-]`` (some model APIs do) take "_" or "__".
SEPARATORS: Final = (".", "_", "__", "-")
#: A description is the plugin author's text handed to a model: kept to this many characters,
#: control characters made visible (line breaks kept), so it cannot smuggle terminal escapes.
MAX_DESCRIPTION: Final = 4096
_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9._-]")
_HASH_LEN: Final = 8

#: Manifest hint key → MCP ``ToolAnnotations`` field.
HINTS: Final[Mapping[str, str]] = {
    "read-only": "readOnlyHint",
    "destructive": "destructiveHint",
    "idempotent": "idempotentHint",
    "open-world": "openWorldHint",
}


@dataclass(frozen=True)
class BridgedTool:
    """One plugin tool as an MCP tool. ``target`` is what :meth:`Runtime.invoke` routes."""

    name: str
    plugin: str
    tool: str
    description: str
    input_schema: Mapping[str, Any]
    result_schema: Mapping[str, Any] = field(default_factory=dict)
    #: MCP annotation field → value, only those the manifest wrote.
    annotations: Mapping[str, bool] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.plugin}.{self.tool}"


def mcp_names(
    pairs: Collection[tuple[str, str]], separator: str = "."
) -> dict[tuple[str, str], str]:
    """A valid, unique MCP name for each ``(plugin, tool)``, deterministic (module doc)."""
    if separator not in SEPARATORS:
        raise ValueError(f"separator must be one of {SEPARATORS!r}, not {separator!r}")
    taken: set[str] = set()
    out: dict[tuple[str, str], str] = {}
    for plugin, tool in sorted(set(pairs)):
        qualified = f"{plugin}{separator}{tool}"
        base = _NOT_ALLOWED.sub("_", qualified) or "_"
        if len(base) > MAX_NAME:
            digest = hashlib.sha256(qualified.encode()).hexdigest()[:_HASH_LEN]
            base = f"{base[: MAX_NAME - _HASH_LEN - 1]}-{digest}"
        name, n = base, 2
        while name in taken:
            suffix = f"-{n}"
            name = base[: MAX_NAME - len(suffix)] + suffix
            n += 1
        taken.add(name)
        out[(plugin, tool)] = name
    return out


def _input_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    # MCP requires an object schema at the root; a manifest may declare none (or something
    # else), and then the worker still checks the arguments against the signature.
    if schema.get("type") == "object":
        return dict(schema)
    return {"type": "object"}


def _description(text: str) -> str:
    cut = text[:MAX_DESCRIPTION]
    return "\n".join(neutralise(line) for line in cut.split("\n"))


def _hints(rt: Runtime, plugin: str, tool: str) -> dict[str, bool]:
    for declared in rt.get(plugin).manifest.contributes.tools:
        if declared.name == tool:
            return {HINTS[k]: v for k, v in declared.hints.items() if k in HINTS}
    return {}


def bridged_tools(
    rt: Runtime, plugins: Collection[str] | None = None, separator: str = "."
) -> list[BridgedTool]:
    """The tools of ``plugins`` (every loaded plugin when ``None``) as MCP tools, ordered by
    name. A disabled plugin's tools are left out; a plugin whose worker has run lists what
    the worker registered (schemas from the signatures), else what its manifest declares."""
    found = [
        c
        for c in rt.registry.contributions("tool")
        if c.enabled and (plugins is None or c.plugin in plugins)
    ]
    names = mcp_names([(c.plugin, c.name) for c in found], separator)
    tools = [
        BridgedTool(
            name=names[(c.plugin, c.name)],
            plugin=c.plugin,
            tool=c.name,
            description=_description(c.description),
            input_schema=_input_schema(c.schema),
            result_schema=dict(c.result_schema),
            annotations=_hints(rt, c.plugin, c.name),
        )
        for c in found
    ]
    return sorted(tools, key=lambda t: t.name)
