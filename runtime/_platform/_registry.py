"""The contribution registry: what every loaded plugin offers, and routing by name.

Contributions are listed from each manifest's ``[contributes]`` table *without starting a
worker*; once a plugin's worker has run, its ``InitializeResult`` — the truth about what the
code registered — replaces the manifest's declarations (UI elements stay manifest data: no
worker ever serves them).

Names: ``plugin.name`` always names one plugin's contribution. An unqualified ``name`` routes
only when exactly one enabled plugin offers that kind+name; a clash between plugins is never
silently shadowed — it is :class:`AmbiguousContribution`, naming every candidate.

Embedding applications declare their own extension points (a name, the contribution kind it
collects, a JSON schema for the payload) and list the contributions made to them: those of
that kind whose name is the point's name, or whose options (UI: extra keys) say
``point = "<name>"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

from cordon.protocol import CordonError, MethodNotFound

if TYPE_CHECKING:
    from .._core._runtime import Runtime
    from .._supervise._handle import PluginHandle

__all__ = [
    "KINDS",
    "AmbiguousContribution",
    "ContributionInfo",
    "ContributionKindName",
    "ExtensionPoint",
    "Registry",
    "UnknownContribution",
    "UnknownExtensionPoint",
]

ContributionKindName: TypeAlias = Literal[
    "tool", "command", "provider", "middleware", "event_handler", "ui"
]
KINDS: Final[tuple[str, ...]] = ("tool", "command", "provider", "middleware", "event_handler", "ui")


class AmbiguousContribution(CordonError):
    """An unqualified name is offered by several plugins; ``candidates`` lists the qualified
    names (``plugin.name``) that would each work."""

    code = -32040
    _fields: ClassVar[tuple[str, ...]] = ("kind", "name", "candidates")
    kind: str | None
    name: str | None
    candidates: list[str] | None

    def _default_message(self) -> str:
        return (
            f"{self.kind} {self.name!r} is ambiguous: offered by "
            f"{' and '.join(self.candidates or [])}; use a qualified name"
        )


class UnknownContribution(MethodNotFound):
    """No loaded (enabled) plugin offers ``kind`` ``name``."""

    code = -32601
    _fields = ("method", "kind", "name")  # type: ignore[assignment]
    kind: str | None
    name: str | None

    def _default_message(self) -> str:
        return f"no loaded plugin offers {self.kind} {self.name!r}"


class UnknownExtensionPoint(CordonError):
    code = -32041
    _fields: ClassVar[tuple[str, ...]] = ("point",)
    point: str | None

    def _default_message(self) -> str:
        return f"no extension point {self.point!r} is declared"


@dataclass(frozen=True)
class ContributionInfo:
    """One contribution. ``schema`` is the parameters' JSON schema (``{}`` if unknown);
    ``source`` says whether it comes from the manifest or the running worker."""

    plugin: str
    kind: str
    name: str
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    result_schema: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    source: Literal["manifest", "worker"] = "manifest"
    enabled: bool = True

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}.{self.name}"


@dataclass(frozen=True)
class ExtensionPoint:
    name: str
    kind: str
    schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


def _from_manifest(handle: PluginHandle) -> list[ContributionInfo]:
    c = handle.manifest.contributes
    pid = handle.id
    out: list[ContributionInfo] = []
    for t in c.tools:
        out.append(ContributionInfo(pid, "tool", t.name, t.description, dict(t.params or {})))
    for cmd in c.commands:
        out.append(ContributionInfo(pid, "command", cmd.name, cmd.description))
    for p in c.providers:
        out.append(ContributionInfo(pid, "provider", p.name, p.description))
    for m in c.middleware:
        out.append(
            ContributionInfo(
                pid, "middleware", m.name, m.description, options={"priority": m.priority}
            )
        )
    for e in c.events:
        out.append(
            ContributionInfo(
                pid, "event_handler", e.topic, e.description, options={"topic": e.topic}
            )
        )
    return out


def _ui(handle: PluginHandle) -> list[ContributionInfo]:
    out = []
    for u in handle.manifest.contributes.ui:
        options: dict[str, Any] = {"kind": u.kind, "title": u.title, **u.extra}
        if u.command is not None:
            options["command"] = u.command
        out.append(ContributionInfo(handle.id, "ui", u.id, u.title, options=options))
    return out


def plugin_contributions(handle: PluginHandle) -> list[ContributionInfo]:
    """The plugin's contributions: the worker's, once it has run, else the manifest's."""
    declared = _from_manifest(handle)
    enabled = handle.settings.enabled
    if not handle.contributions:
        items = declared
    else:
        by_key = {(d.kind, d.name): d for d in declared}
        priority = {
            d.name: d.options.get("priority", 0) for d in declared if d.kind == "middleware"
        }
        items = []
        for c in handle.contributions:
            decl = by_key.get((c.kind, c.name))
            options = dict(c.options)
            if c.kind == "middleware":
                options.setdefault("priority", priority.get(c.name, 0))
            items.append(
                ContributionInfo(
                    handle.id,
                    c.kind,
                    c.name,
                    c.description or (decl.description if decl else ""),
                    dict(c.params_schema) or (dict(decl.schema) if decl else {}),
                    dict(c.result_schema),
                    options,
                    source="worker",
                )
            )
    out = items + _ui(handle)
    if not enabled:
        out = [_disabled(i) for i in out]
    return out


def _disabled(info: ContributionInfo) -> ContributionInfo:
    return ContributionInfo(
        info.plugin,
        info.kind,
        info.name,
        info.description,
        info.schema,
        info.result_schema,
        info.options,
        info.source,
        enabled=False,
    )


_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list, tuple),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def check_payload(schema: Mapping[str, Any], value: Any, path: str = "$") -> list[str]:
    """A small JSON-schema subset (``type``, ``required``, ``properties``, ``items``,
    ``enum``): enough to check pure-data contributions against an extension point."""
    problems: list[str] = []
    typ = schema.get("type")
    if isinstance(typ, str) and typ in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[typ])
        if typ in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            return [f"{path}: expected {typ}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                problems.append(f"{path}.{key}: missing (required)")
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, Mapping):
                problems += check_payload(sub, value[key], f"{path}.{key}")
    if isinstance(value, list | tuple) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problems += check_payload(schema["items"], item, f"{path}[{i}]")
    return problems


class Registry:
    """Every contribution of every loaded plugin (``rt.registry``)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._points: dict[str, ExtensionPoint] = {}

    # -- listing --------------------------------------------------------------------------

    def contributions(
        self, kind: str | None = None, *, plugin: str | None = None
    ) -> list[ContributionInfo]:
        """Contributions, optionally of one kind and/or one plugin, ordered by plugin id."""
        out: list[ContributionInfo] = []
        for pid, handle in sorted(self._runtime.plugins.items()):
            if plugin is not None and pid != plugin:
                continue
            out += [c for c in plugin_contributions(handle) if kind is None or c.kind == kind]
        return out

    def get(self, name: str, kind: str = "tool") -> ContributionInfo:
        """The one contribution ``name`` (qualified or unique) names; see :meth:`resolve`."""
        handle, local = self.resolve(name, kind)
        for c in plugin_contributions(handle):
            if c.kind == kind and c.name == local:
                return c
        return ContributionInfo(handle.id, kind, local)

    def resolve(self, name: str, kind: str = "tool") -> tuple[PluginHandle, str]:
        """The plugin serving ``kind`` ``name`` and the name within it.

        ``plugin.name`` routes to that plugin even when its contribution is not known yet (a
        lazy plugin that declares nothing); the worker answers MethodNotFound if it has no
        such thing. An unqualified name must be offered by exactly one enabled plugin.
        """
        plugins = self._runtime.plugins
        prefix, dot, rest = name.partition(".")
        if dot and prefix in plugins:
            handle = plugins[prefix]
            known = {c.name for c in plugin_contributions(handle) if c.kind == kind}
            # A dotted unqualified name ("fs.read") in another plugin still resolves below.
            if rest in known or not self._offered_elsewhere(name, kind):
                return handle, rest
        offering = [c for c in self.contributions(kind) if c.name == name and c.enabled]
        if not offering:
            raise UnknownContribution(method=name, kind=kind, name=name)
        if len(offering) > 1:
            raise AmbiguousContribution(
                kind=kind, name=name, candidates=[c.qualified_name for c in offering]
            )
        return plugins[offering[0].plugin], name

    def _offered_elsewhere(self, name: str, kind: str) -> bool:
        return any(c.name == name for c in self.contributions(kind))

    # -- extension points -----------------------------------------------------------------

    def declare_extension_point(
        self,
        name: str,
        kind: str,
        schema: Mapping[str, Any] | None = None,
        *,
        description: str = "",
    ) -> ExtensionPoint:
        """Declare an application extension point collecting contributions of ``kind``
        (one of :data:`KINDS`), whose payload is described by the JSON ``schema``."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if name in self._points and self._points[name].kind != kind:
            raise ValueError(f"extension point {name!r} is already declared for {kind!r}")
        point = ExtensionPoint(name, kind, dict(schema or {}), description)
        self._points[name] = point
        return point

    @property
    def extension_points(self) -> Mapping[str, ExtensionPoint]:
        return dict(self._points)

    def contributions_to(self, point: str) -> list[ContributionInfo]:
        """Contributions made to ``point``: of its kind, named after it or declaring
        ``point = "<name>"``. Pure-data (UI) contributions that do not satisfy the point's
        schema are left out (and listed by :meth:`problems_with`)."""
        ep = self._point(point)
        out = []
        for c in self.contributions(ep.kind):
            if c.name != ep.name and c.options.get("point") != ep.name:
                continue
            if c.kind == "ui" and ep.schema and check_payload(ep.schema, dict(c.options)):
                continue
            out.append(c)
        return out

    def problems_with(self, point: str) -> dict[str, list[str]]:
        """For each UI contribution aimed at ``point`` that does not fit its schema: why."""
        ep = self._point(point)
        out: dict[str, list[str]] = {}
        for c in self.contributions(ep.kind):
            if c.kind == "ui" and (c.name == ep.name or c.options.get("point") == ep.name):
                problems = check_payload(ep.schema, dict(c.options))
                if problems:
                    out[c.qualified_name] = problems
        return out

    def _point(self, point: str) -> ExtensionPoint:
        try:
            return self._points[point]
        except KeyError:
            raise UnknownExtensionPoint(point=point) from None
