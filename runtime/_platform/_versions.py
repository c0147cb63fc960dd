"""Versions and dependencies between plugins: what counts as breaking, what satisfies a
requirement, and in which order a set of plugins can load.

Every comparison goes through :mod:`packaging` (PEP 440): ``"1.10" > "1.9"`` and
``"2.0.0rc1" < "2.0.0"`` are true here, which string comparison gets wrong.

Dependency resolution works on plain data — ``{id: (version, {dependency id: specifier})}`` —
so it can run before any plugin code exists anywhere, and so tests need no manifests.
:func:`partition_loadable` is the one the runtime uses: a broken plugin fails *alone*, together
with the plugins that need it, and every unrelated plugin still gets a load order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Final, Protocol, TypeAlias

from packaging.version import InvalidVersion, Version

from cordon.protocol import CordonError

from .._settings._manifest import translate_requirement

__all__ = [
    "CORDON_VERSION",
    "BlockedByDependency",
    "DependencyCycle",
    "DependencyError",
    "IncompatibleDependency",
    "InvalidRequirement",
    "MissingDependency",
    "PluginTable",
    "compare",
    "dependents",
    "is_breaking",
    "partition_loadable",
    "plugin_table",
    "resolve_load_order",
    "satisfies",
]


def _cordon_version() -> str:
    try:
        return version("cordon")
    except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
        # A source checkout that was never installed still has to run its own tests; "0+unknown"
        # is a valid PEP 440 version that satisfies only unbounded requirements like ">=0".
        return "0+unknown"


#: The running cordon's version, as installed (``importlib.metadata``), never hard-coded.
CORDON_VERSION: Final[str] = _cordon_version()

#: ``{plugin id: (version, {dependency id: requirement text})}``
PluginTable: TypeAlias = Mapping[str, tuple[str, Mapping[str, str]]]


# -- errors -------------------------------------------------------------------------------------
# Host-side only: they describe why the runtime will not start a plugin, so they never cross
# the wire and need no entry in the protocol's code table.


def _req(text: str | None) -> str:
    return repr(text) if text else "any version"


class DependencyError(CordonError):
    """A plugin cannot load because of its dependencies. ``plugin`` is the one that fails."""

    code = -32030
    _fields: ClassVar[tuple[str, ...]] = ("plugin",)
    plugin: str | None


class MissingDependency(DependencyError):
    code = -32031
    _fields = ("plugin", "dependency", "required")
    dependency: str | None
    required: str | None

    def _default_message(self) -> str:
        return (
            f"plugin {self.plugin!r} requires plugin {self.dependency!r} "
            f"({_req(self.required)}), which is not installed"
        )


class IncompatibleDependency(DependencyError):
    code = -32032
    _fields = ("plugin", "dependency", "required", "found")
    dependency: str | None
    required: str | None
    found: str | None

    def _default_message(self) -> str:
        return (
            f"plugin {self.plugin!r} requires plugin {self.dependency!r} {_req(self.required)}, "
            f"but version {self.found} is installed"
        )


class InvalidRequirement(DependencyError):
    """A version or requirement that is not PEP 440 (nor ``^``/``~``). ``dependency`` is
    ``None`` when it is the plugin's own version that is unreadable."""

    code = -32033
    _fields = ("plugin", "dependency", "required", "detail")
    dependency: str | None
    required: str | None
    detail: str | None

    def _default_message(self) -> str:
        if self.dependency is None:
            return f"plugin {self.plugin!r} has an invalid version: {self.detail}"
        return (
            f"plugin {self.plugin!r} has an invalid requirement on {self.dependency!r} "
            f"({self.required!r}): {self.detail}"
        )


class DependencyCycle(DependencyError):
    """``cycle`` starts and ends at the same plugin: ``["a", "b", "c", "a"]``."""

    code = -32034
    _fields = ("plugin", "cycle")
    cycle: list[str] | None

    def __init__(self, message: str = "", **fields: Any) -> None:
        if fields.get("plugin") is None and fields.get("cycle"):
            fields["plugin"] = fields["cycle"][0]
        super().__init__(message, **fields)

    def _default_message(self) -> str:
        return f"dependency cycle: {' -> '.join(self.cycle or [])}"


class BlockedByDependency(DependencyError):
    """``plugin`` is fine itself but needs ``dependency``, which cannot load. ``chain`` runs
    from ``plugin`` down to the plugin whose own problem started it; ``reason`` is that
    problem's message."""

    code = -32035
    _fields = ("plugin", "dependency", "chain", "reason")
    dependency: str | None
    chain: list[str] | None
    reason: str | None

    def _default_message(self) -> str:
        return (
            f"plugin {self.plugin!r} cannot load because its dependency {self.dependency!r} "
            f"cannot ({' -> '.join(self.chain or [])}): {self.reason}"
        )


# -- single versions ----------------------------------------------------------------------------


def compare(a: str, b: str) -> int:
    """``-1``, ``0`` or ``1`` as PEP 440 orders ``a`` and ``b``. Raises ``ValueError``
    (:class:`~packaging.version.InvalidVersion`) for a non-PEP 440 version."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def _line(v: Version) -> tuple[int, ...]:
    """The compatibility line a version belongs to under semver's rules (and npm's ``^``, so
    ``is_breaking`` agrees with the ``^`` requirements plugins write): everything up to and
    including the left-most non-zero release part. ``1.4.2`` -> ``(1,)``, ``0.3.1`` -> ``(0,
    3)``, ``0.0.7`` -> ``(0, 0, 7)``. The epoch leads: a new epoch is a new numbering."""
    release = (*v.release, 0, 0)[:3] if len(v.release) < 3 else v.release
    idx = next((i for i, part in enumerate(release) if part != 0), len(release) - 1)
    return (v.epoch, *release[: idx + 1])


def is_breaking(old: str, new: str) -> bool:
    """Whether moving from ``old`` to ``new`` may break code written against ``old``.

    Breaking: a different compatibility line (a major bump, a minor bump while at ``0.x``, any
    bump while at ``0.0.x``, or an epoch change) — in either direction, since a downgrade across
    lines changes the API just as much. A pre-release (``a``/``b``/``rc``/``.dev``) promises
    nothing, not even to its own final release, so leaving one for any other version is
    breaking. Post-releases and local labels (``+build``) never are; neither is a move within a
    stable line, downgrades included.
    """
    o, n = Version(old), Version(new)
    if o == n:
        return False
    if _line(o) != _line(n):
        return True
    return o.is_prerelease and o.public != n.public


def satisfies(version: str, requirement: str, *, prereleases: bool = True) -> bool:
    """Whether ``version`` meets ``requirement`` (PEP 440, or npm-style ``^1.2`` / ``~1.2``;
    ``""`` and ``"*"`` accept anything). Raises ``ValueError`` for a malformed either.

    ``prereleases`` defaults to true because the runtime checks the one version that *is*
    installed, not a candidate to pick: PEP 440's "skip pre-releases" is a rule for choosing
    among candidates. ``<2`` still excludes ``2.0.0rc1`` (PEP 440 exclusive-bound rule), so a
    ``^1.0`` requirement never accepts a pre-release of the next major.
    """
    return translate_requirement(requirement).contains(Version(version), prereleases=prereleases)


# -- dependency graphs --------------------------------------------------------------------------


class _PluginLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def requires(self) -> Mapping[str, str]: ...


def plugin_table(manifests: Iterable[_PluginLike]) -> dict[str, tuple[str, Mapping[str, str]]]:
    """The table :func:`partition_loadable` takes, from manifests (anything with ``id``,
    ``version`` and ``requires``)."""
    return {m.id: (m.version, m.requires) for m in manifests}


def _direct_problem(plugin_id: str, plugins: PluginTable) -> DependencyError | None:
    """The plugin's own problem, if any: an unreadable version, or a dependency that is
    missing, unreadable or the wrong version (the first by dependency id, for determinism)."""
    own_version, requires = plugins[plugin_id]
    try:
        Version(own_version)
    except InvalidVersion as exc:
        return InvalidRequirement(plugin=plugin_id, dependency=None, required=None, detail=str(exc))
    for dep in sorted(requires):
        required = requires[dep]
        if dep not in plugins:
            return MissingDependency(plugin=plugin_id, dependency=dep, required=required)
        try:
            spec = translate_requirement(required)
        except ValueError as exc:
            return InvalidRequirement(
                plugin=plugin_id, dependency=dep, required=required, detail=str(exc)
            )
        found = plugins[dep][0]
        try:
            ok = spec.contains(Version(found), prereleases=True)
        except InvalidVersion:
            # The dependency's own version is unreadable: it fails on its own account, and
            # this plugin is reported as blocked by it rather than as incompatible.
            continue
        if not ok:
            return IncompatibleDependency(
                plugin=plugin_id, dependency=dep, required=required, found=found
            )
    return None


def _edges(plugins: PluginTable) -> dict[str, list[str]]:
    """id -> sorted ids of the *present* plugins it requires."""
    return {p: sorted(d for d in reqs if d in plugins) for p, (_, reqs) in plugins.items()}


def _cyclic_components(edges: Mapping[str, list[str]]) -> list[set[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative so a long
    dependency chain cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succ = edges[node]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1 or node in edges[node]:
                    out.append(comp)
    return out


def _shortest_cycle(start: str, comp: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """The shortest cycle from ``start`` back to itself inside ``comp`` (breadth-first over
    sorted edges, so the same graph always names the same cycle)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier: list[str] = []
        for node in frontier:
            for nxt in edges[node]:
                if nxt not in comp:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in parent:
                    parent[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{start!r} is in a cyclic component but on no cycle")  # unreachable


def partition_loadable(plugins: PluginTable) -> tuple[list[str], dict[str, DependencyError]]:
    """Split ``plugins`` into a load order for those that can load and the reason each other
    one cannot.

    A plugin fails on its own account (:class:`MissingDependency`,
    :class:`IncompatibleDependency`, :class:`InvalidRequirement`), by being on a cycle
    (:class:`DependencyCycle`, naming a cycle through that plugin), or because something it
    needs failed (:class:`BlockedByDependency`, naming the whole chain). Nothing else is
    affected: a broken plugin never stops unrelated ones.

    The order lists every dependency before its dependents; among plugins ready at the same
    time the smaller id comes first, so the same input always gives the same order.
    """
    edges = _edges(plugins)
    failures: dict[str, DependencyError] = {}
    for pid in sorted(plugins):
        problem = _direct_problem(pid, plugins)
        if problem is not None:
            failures[pid] = problem
    for comp in _cyclic_components(edges):
        for pid in sorted(comp):
            # A plugin's own problem is the more useful thing to tell its author.
            failures.setdefault(pid, DependencyCycle(cycle=_shortest_cycle(pid, comp, edges)))

    # Off the cycles the graph is acyclic, so walking it dependencies-first lets each plugin
    # see its dependencies' verdicts already made (iteratively: chains can be thousands deep).
    on_cycle = {pid for pid, err in failures.items() if isinstance(err, DependencyCycle)}
    acyclic = {p: [d for d in edges[p] if d not in on_cycle] for p in plugins if p not in on_cycle}
    chains: dict[str, list[str]] = {pid: [pid] for pid in failures}
    for pid in _toposort(acyclic):
        if pid in failures:
            continue
        dep = next((d for d in edges[pid] if d in chains), None)
        if dep is not None:
            chains[pid] = [pid, *chains[dep]]
            failures[pid] = BlockedByDependency(
                plugin=pid,
                dependency=dep,
                chain=chains[pid],
                reason=failures[chains[pid][-1]].message,
            )

    loadable = {p: edges[p] for p in plugins if p not in failures}
    return _toposort(loadable), failures


def _toposort(edges: Mapping[str, list[str]]) -> list[str]:
    """Kahn's algorithm with a min-heap, so ties go to the smaller id."""
    waiting = {p: len(deps) for p, deps in edges.items()}
    users: dict[str, list[str]] = {p: [] for p in edges}
    for p, deps in edges.items():
        for d in deps:
            users[d].append(p)
    ready = [p for p, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        p = heapq.heappop(ready)
        order.append(p)
        for user in users[p]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order


def resolve_load_order(plugins: PluginTable) -> list[str]:
    """All of ``plugins`` in load order (dependencies first, ties by id), or raise the
    problem that prevents it: the first plugin (by id) failing on its own account, else the
    first cycle. Use :func:`partition_loadable` to load what can be loaded anyway."""
    order, failures = partition_loadable(plugins)
    if failures:
        roots = [e for _, e in sorted(failures.items()) if not isinstance(e, BlockedByDependency)]
        direct = [e for e in roots if not isinstance(e, DependencyCycle)]
        raise (direct or roots)[0]
    return order


def dependents(plugin_id: str, graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every plugin that needs ``plugin_id``, directly or through others, in an order safe to
    unload them: each one comes before anything it depends on (ties by id).

    ``graph`` maps each plugin id to the ids it requires; a ``requires`` dict serves as is.
    An empty result means ``plugin_id`` can be unloaded without a cascade.
    """
    users: dict[str, set[str]] = {}
    for pid, deps in graph.items():
        for dep in deps:
            users.setdefault(dep, set()).add(pid)
    found: set[str] = set()
    todo = [plugin_id]
    while todo:
        for user in users.get(todo.pop(), ()):
            if user not in found and user != plugin_id:
                found.add(user)
                todo.append(user)
    # A plugin may go once every plugin that uses it has gone: a topological sort over
    # "used by" edges among the dependents themselves.
    by_users = {p: sorted(u for u in users.get(p, ()) if u in found) for p in found}
    order = _toposort(by_users)
    if len(order) != len(found):
        # Dependents on a cycle have no safe order; still name them all, the rest by id.
        order += sorted(found - set(order))
    return order
