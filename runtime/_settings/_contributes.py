"""The ``[contributes]`` section of a plugin's manifest: what the plugin offers the host.

Tools, commands, providers, middleware, the events it handles and UI elements, each an array
of tables keyed by a unique name (or topic, or id) that the worker's authoring API would
accept, so a declared name can always be registered. Plain data, read without importing the
plugin; :mod:`._manifest` reads the rest of ``plugin.toml`` and calls
:func:`parse_contributes` for this section.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias, cast

import msgspec

from ._validate import INVALID, Checker, Invalid, join, show

__all__ = [
    "TOOL_HINTS",
    "UI_KINDS",
    "Command",
    "Contributes",
    "EventDecl",
    "MiddlewareDecl",
    "Provider",
    "Tool",
    "UIElement",
    "UIKind",
    "parse_contributes",
]

UIKind: TypeAlias = Literal["panel", "status-item", "menu-item", "view"]
UI_KINDS: Final[tuple[UIKind, ...]] = ("panel", "status-item", "menu-item", "view")

# Same grammar the worker's authoring API enforces for tool/command/provider names, so a
# declared name can always be registered.
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
# Event topics may be globs (a plugin may declare it handles `build.*`).
_TOPIC: Final = re.compile(r"[A-Za-z0-9_.*?\-/\[\]!]{1,200}")


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    #: A JSON-schema-ish description of the parameters; data for UIs and agents, not enforced.
    params: dict[str, Any] | None = None
    #: Behaviour hints for agents (``read-only``, ``destructive``, ``idempotent``,
    #: ``open-world`` → MCP's tool annotations); only the keys the manifest wrote. Hints the
    #: plugin's author claims: nothing enforces them.
    hints: dict[str, bool] = msgspec.field(default_factory=dict)


#: The optional boolean hints a tool table may carry (MCP's ToolAnnotations, kebab-cased).
TOOL_HINTS: Final = ("read-only", "destructive", "idempotent", "open-world")


class Command(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""


class MiddlewareDecl(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    priority: int = 0


class EventDecl(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    description: str = ""


class UIElement(msgspec.Struct, frozen=True, kw_only=True):
    """Pure data the host application renders; ``extra`` keeps any further keys verbatim."""

    id: str
    kind: UIKind
    title: str
    command: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Contributes(msgspec.Struct, frozen=True, kw_only=True):
    tools: tuple[Tool, ...] = ()
    commands: tuple[Command, ...] = ()
    providers: tuple[Provider, ...] = ()
    middleware: tuple[MiddlewareDecl, ...] = ()
    events: tuple[EventDecl, ...] = ()
    ui: tuple[UIElement, ...] = ()


_CONTRIBUTES_KEYS: Final = ("tools", "commands", "providers", "middleware", "events", "ui")

_Build: TypeAlias = Callable[[Checker, str, Mapping[str, Any]], Any]


def _contribution_list(
    ck: Checker,
    path: str,
    value: object,
    *,
    keys: tuple[str, ...],
    key_field: str,
    key_pattern: re.Pattern[str],
    build: _Build,
    open_ended: bool = False,
) -> tuple[Any, ...]:
    """An array of tables, each with a unique ``key_field`` matching ``key_pattern``; the
    rest of each table is checked by ``build``, which returns the struct or INVALID."""
    items = ck.expect_list(path, value)
    if isinstance(items, Invalid):
        return ()
    out: list[Any] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = join(path, i)
        table = ck.expect_table(where, item)
        if isinstance(table, Invalid):
            continue
        if not open_ended:
            ck.check_keys(where, table, keys)
        if key_field not in table:
            ck.add(join(where, key_field), "missing (required)")
            continue
        key = ck.expect_str(join(where, key_field), table[key_field])
        if isinstance(key, Invalid):
            continue
        if not key_pattern.fullmatch(key):
            ck.add(join(where, key_field), f"{show(key)} is not a valid {key_field}")
            continue
        if key in seen:
            ck.add(join(where, key_field), f"duplicate of {join(path, seen[key])} ({show(key)})")
            continue
        seen[key] = i
        built = build(ck, where, table)
        if not isinstance(built, Invalid):
            out.append(built)
    return tuple(out)


def _description(ck: Checker, where: str, table: Mapping[str, Any]) -> str | Invalid:
    if "description" not in table:
        return ""
    return ck.expect_str(join(where, "description"), table["description"], non_empty=False)


def _build_named(cls: type[Command] | type[Provider]) -> _Build:
    def build(ck: Checker, where: str, t: Mapping[str, Any]) -> Command | Provider | Invalid:
        d = _description(ck, where, t)
        return d if isinstance(d, Invalid) else cls(name=t["name"], description=d)

    return build


def _build_tool(ck: Checker, where: str, t: Mapping[str, Any]) -> Tool | Invalid:
    d = _description(ck, where, t)
    params: Mapping[str, Any] | Invalid | None = None
    if "params" in t:
        params = ck.expect_table(join(where, "params"), t["params"])
    hints: dict[str, bool] = {}
    for key in TOOL_HINTS:
        if key in t:
            flag = ck.expect_bool(join(where, key), t[key])
            if isinstance(flag, Invalid):
                return INVALID
            hints[key] = flag
    if isinstance(d, Invalid) or isinstance(params, Invalid):
        return INVALID
    return Tool(
        name=t["name"],
        description=d,
        params=dict(params) if params is not None else None,
        hints=hints,
    )


def _build_middleware(ck: Checker, where: str, t: Mapping[str, Any]) -> MiddlewareDecl | Invalid:
    d = _description(ck, where, t)
    priority: int | Invalid = 0
    if "priority" in t:
        priority = ck.expect_int(join(where, "priority"), t["priority"])
    if isinstance(d, Invalid) or isinstance(priority, Invalid):
        return INVALID
    return MiddlewareDecl(name=t["name"], description=d, priority=priority)


def _build_event(ck: Checker, where: str, t: Mapping[str, Any]) -> EventDecl | Invalid:
    d = _description(ck, where, t)
    return d if isinstance(d, Invalid) else EventDecl(topic=t["topic"], description=d)


_UI_KNOWN: Final = ("id", "kind", "title", "command")


def _build_ui(ck: Checker, where: str, t: Mapping[str, Any]) -> UIElement | Invalid:
    def required(key: str) -> str | Invalid:
        if key not in t:
            return ck.add(join(where, key), "missing (required)")
        if key == "kind":
            return ck.expect_choice(join(where, key), t[key], UI_KINDS)
        return ck.expect_str(join(where, key), t[key])

    kind, title = required("kind"), required("title")
    command: str | Invalid | None = None
    if "command" in t:
        command = ck.expect_str(join(where, "command"), t["command"])
        if isinstance(command, str) and not _NAME.fullmatch(command):
            command = ck.add(join(where, "command"), f"{show(command)} is not a command name")
    if isinstance(kind, Invalid) or isinstance(title, Invalid) or isinstance(command, Invalid):
        return INVALID
    extra = {k: v for k, v in t.items() if k not in _UI_KNOWN}
    return UIElement(id=t["id"], kind=cast(UIKind, kind), title=title, command=command, extra=extra)


def parse_contributes(ck: Checker, value: object) -> Contributes:
    table = ck.expect_table("contributes", value)
    if isinstance(table, Invalid):
        return Contributes()
    ck.check_keys("contributes", table, _CONTRIBUTES_KEYS)
    named = ("name", "description")
    kinds: dict[str, tuple[tuple[str, ...], str, re.Pattern[str], _Build, bool]] = {
        "tools": ((*named, "params", *TOOL_HINTS), "name", _NAME, _build_tool, False),
        "commands": (named, "name", _NAME, _build_named(Command), False),
        "providers": (named, "name", _NAME, _build_named(Provider), False),
        "middleware": ((*named, "priority"), "name", _NAME, _build_middleware, False),
        "events": (("topic", "description"), "topic", _TOPIC, _build_event, False),
        "ui": (_UI_KNOWN, "id", _NAME, _build_ui, True),
    }
    found: dict[str, tuple[Any, ...]] = {}
    for kind, (keys, key_field, pattern, build, open_ended) in kinds.items():
        if kind in table:
            found[kind] = _contribution_list(
                ck,
                join("contributes", kind),
                table[kind],
                keys=keys,
                key_field=key_field,
                key_pattern=pattern,
                build=build,
                open_ended=open_ended,
            )
    return Contributes(**found)
