"""Loading plugins into the :class:`~cordon.runtime.Runtime`: read a manifest, check its
permissions and dependencies against what is loaded, give it its host API and a
:class:`~cordon.runtime.PluginHandle`; discovery with :meth:`load_all`; unload (refused while
dependents remain), hot reload and ``--watch``; enable and disable. A mixin of ``Runtime``,
kept apart so the class reads by concern; :class:`PluginInUse`, :class:`LoadFailure` and
:class:`LoadReport` live here with the methods that raise or return them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import anyio
import anyio.abc
import msgspec
import structlog

from cordon.protocol import CordonError, PermissionDenied, PluginUnavailable

from .._hostapi._api import HostAPI
from .._hostapi._exec import policy_for_plugin
from .._hostapi._http import http_for_plugin
from .._packages._errors import NotInstalled, PackageError
from .._packages._store import InstalledPlugin, installed, installed_at_dir
from .._platform._discovery import discover
from .._platform._versions import (
    CORDON_VERSION,
    BlockedByDependency,
    dependents,
    partition_loadable,
    plugin_table,
)
from .._settings._manifest import Manifest, check_cordon_compat, load_manifest
from .._settings._permissions import PermissionSet, effective_permissions
from .._settings._validate import PLUGIN_ID
from .._supervise._handle import PluginHandle

if TYPE_CHECKING:
    from .._hostapi._audit import AuditTrail
    from .._hostapi._events import EventBus
    from .._hostapi._logsink import LogSink
    from .._hostapi._storage import Storage
    from .._settings._config import Config, PluginSettings
    from ._runtime import Runtime

__all__ = ["LoadFailure", "LoadReport", "Loading", "PluginInUse"]

log = structlog.get_logger("cordon")


class PluginInUse(CordonError):
    """Unloading ``plugin`` would strand ``dependents`` (pass ``cascade=True``)."""

    code = -32043
    _fields: ClassVar[tuple[str, ...]] = ("plugin", "dependents")
    plugin: str | None
    dependents: list[str] | None

    def _default_message(self) -> str:
        return (
            f"plugin {self.plugin!r} is required by {', '.join(self.dependents or [])}; "
            "unload those first or pass cascade=True"
        )


@dataclass
class LoadFailure:
    """A plugin :meth:`Runtime.load_all` could not load: ``plugin`` is its id when the
    manifest was readable, ``path`` its folder (``None`` for a broken discovery source)."""

    plugin: str | None
    path: str | None
    reason: str
    error: CordonError | None = None


@dataclass
class LoadReport:
    """What :meth:`Runtime.load_all` did: ``loaded`` in load order, ``failed`` with
    reasons, ``skipped`` ids that were already loaded."""

    loaded: list[str] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _eager(handle: PluginHandle) -> bool:
    """Whether the plugin's worker starts at load (``activate = "eager"``) rather than on
    first use."""
    eager = handle.settings.activate == "eager" or handle.manifest.activate == "eager"
    return eager and handle.settings.enabled


class Loading:
    """Load, unload, reload, enable and disable plugins (a mixin of ``Runtime``)."""

    if TYPE_CHECKING:
        # The runtime's state, made in Runtime.__init__ and __aenter__.
        config: Config
        state_dir: Path | None
        storage: Storage | None
        audit_trail: AuditTrail | None
        log_sink: LogSink | None
        events: EventBus | None
        _plugins: dict[str, PluginHandle]
        _tg: anyio.abc.TaskGroup | None

        def get(self, plugin_id: str) -> PluginHandle: ...
        async def _emit(self, topic: str, payload: dict[str, Any]) -> None: ...
        def _scratch_dir(self, plugin_id: str) -> Path: ...
        def _store_dir(self) -> Path: ...

    async def load(self, path: str | os.PathLike[str]) -> PluginHandle:
        """Read a plugin's manifest (importing nothing from it) and register it.

        ``path`` is a plugin folder, or a plain plugin id (no ``/``). An id is looked up, in
        this order: the installed plugins (``cordon plugin install``: the version ``current``
        names), a folder of that name in the working directory (as before ids were known),
        then discovery (``[runtime] plugin-dirs``, then entry points when enabled) by the id
        in each manifest. The operator's grants apply alike, wherever it was found.

        Its worker starts on first use, or now when the plugin asks for eager activation.
        """
        if self._tg is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        folder, record = self._locate(path)
        manifest = load_manifest(folder)
        if record is not None and (manifest.id, manifest.version) != (
            record.plugin_id,
            record.version,
        ):
            raise PackageError(
                f"installed plugin {record.plugin_id} {record.version} at {folder} has a "
                f"manifest saying {manifest.id} {manifest.version}: the store was altered"
            )
        check_cordon_compat(manifest, CORDON_VERSION)
        return await self._load_manifest(manifest)

    def _locate(
        self, path: str | os.PathLike[str]
    ) -> tuple[str | os.PathLike[str], InstalledPlugin | None]:
        """The folder ``load`` reads (see there for the order), and the installed record
        when it comes from the store."""
        if not isinstance(path, str) or not PLUGIN_ID.fullmatch(path):
            return path, None
        record = installed(self._store_dir(), path)
        if record is not None:
            return record.plugin_dir, record
        if Path(path).is_dir():
            return path, None
        found = discover(
            self.config.runtime.plugin_dirs, entry_points=self.config.runtime.entry_points
        )
        for cand in found.candidates:
            try:
                if load_manifest(cand.path).id == path:
                    return cand.path, None
            except CordonError:
                continue  # a broken neighbour is not the plugin asked for
        raise NotInstalled(
            f"no plugin {path!r}: not installed under {self._store_dir()}, no folder of that "
            "name here, and none in [runtime] plugin-dirs or entry points",
            plugin=path,
        )

    def _permissions_for(self, manifest: Manifest, settings: PluginSettings) -> PermissionSet:
        perms = effective_permissions(manifest.permissions, settings.grant, settings.deny)
        if perms.missing:
            if self.config.runtime.strict_permissions:
                raise PermissionDenied(
                    f"plugin {manifest.id!r} requests permissions the operator did not grant: "
                    f"{', '.join(sorted(perms.missing))} (strict-permissions refuses to load it)",
                    permission=sorted(perms.missing)[0],
                    plugin=manifest.id,
                )
            log.warning(
                "plugin.permissions_missing", plugin=manifest.id, missing=sorted(perms.missing)
            )
        return perms

    def _check_dependencies(self, manifest: Manifest) -> None:
        """Raise the :class:`DependencyError` that keeps ``manifest`` from loading next to
        the plugins already loaded (missing or incompatible dependency, cycle), or that
        loading it in place of the current version would cause a loaded dependent."""
        table = plugin_table(h.manifest for h in self._plugins.values())
        _, before = partition_loadable(table)
        table[manifest.id] = (manifest.version, manifest.requires)
        _, failures = partition_loadable(table)
        if manifest.id in failures:
            raise failures[manifest.id]
        for pid in sorted(set(failures) - set(before)):
            raise failures[pid]

    async def _load_manifest(self, manifest: Manifest, *, start: bool = True) -> PluginHandle:
        """Register ``manifest``'s plugin; start it now if it is eager (unless ``start`` is
        false: then the caller starts it, see :meth:`load_all`)."""
        if manifest.id in self._plugins:
            other = self._plugins[manifest.id].manifest.directory
            raise PluginUnavailable(
                f"plugin id {manifest.id!r} is already loaded from {other}",
                plugin=manifest.id,
                reason="duplicate-id",
            )
        settings = self.config.for_plugin(manifest.id)
        perms = self._permissions_for(manifest, settings)
        assert self.storage is not None and self.audit_trail is not None
        assert self.log_sink is not None and self.events is not None
        assert self.state_dir is not None
        self.storage.set_quota(manifest.id, settings.storage_quota)
        host_api = HostAPI(
            manifest.id,
            perms,
            storage=self.storage,
            audit=self.audit_trail,
            log_sink=self.log_sink,
            settings=settings.settings,
            events=self.events,
            exec_policy=policy_for_plugin(
                settings,
                state_dir=self.state_dir,
                scratch=self._scratch_dir(manifest.id),
                plugin_dir=manifest.directory,
                config=self.config,
                plugin_id=manifest.id,
            ),
            http=http_for_plugin(
                manifest.id, settings, audit=self.audit_trail, source=self.config.source
            ),
        )
        # This object is the Runtime (Loading is only ever its base): the handle's host.
        handle = PluginHandle(cast("Runtime", self), manifest, settings, perms, host_api)
        if not settings.enabled:
            handle.state, handle.state_reason = "disabled", "enabled = false in the config"
        self._plugins[manifest.id] = handle
        await self._emit("cordon.plugin.loaded", {"plugin": manifest.id})
        # After its own "loaded" event: a plugin declaring cordon.* is not started by that.
        await handle._sync_subscription()
        if start and _eager(handle):
            await handle._ensure_worker()
        return handle

    def _reload_dir(self, manifest: Manifest) -> str:
        """Where a hot reload reads ``manifest``'s plugin from: for an installed plugin the
        version ``current`` names now (``cordon plugin update``/``rollback`` swapped it), else
        its folder. (For ``PluginHandle.reload``, which today rereads its own folder.)"""
        store = self._store_dir()
        if installed_at_dir(store, manifest.directory) is None:
            return manifest.directory
        record = installed(store, manifest.id)
        return record.plugin_dir if record is not None else manifest.directory

    async def load_all(self, *, entry_points: bool = True) -> LoadReport:
        """Load every plugin discovery finds in ``[runtime] plugin-dirs`` (and, unless
        ``entry_points=False``, installed ``cordon.plugins`` entry points), dependencies
        first. A broken plugin — unreadable source, bad manifest, duplicate id, missing or
        incompatible dependency, failed eager start — is reported with its reason and never
        stops the others (its dependents are reported as blocked)."""
        report = LoadReport()
        # Installed plugins first: see _platform._discovery for the precedence.
        found = discover(
            self.config.runtime.plugin_dirs, entry_points=entry_points, installed=self._store_dir()
        )
        for problem in found.problems:
            report.failed.append(LoadFailure(None, problem["path"] or None, str(problem)))
        manifests: dict[str, Manifest] = {}
        for cand in found.candidates:
            try:
                manifest = load_manifest(cand.path)
                check_cordon_compat(manifest, CORDON_VERSION)
            except CordonError as exc:
                report.failed.append(LoadFailure(None, str(cand.path), exc.message, exc))
                continue
            first = manifests.get(manifest.id)
            if first is not None:
                why = f"plugin id {manifest.id!r} is also found at {first.directory}"
                report.failed.append(LoadFailure(manifest.id, str(cand.path), why))
                continue
            manifests[manifest.id] = manifest
        table = plugin_table(h.manifest for h in self._plugins.values())
        table.update(plugin_table(m for m in manifests.values() if m.id not in self._plugins))
        order, failures = partition_loadable(table)
        for pid, err in sorted(failures.items()):
            if pid in manifests and pid not in self._plugins:
                report.failed.append(LoadFailure(pid, manifests[pid].directory, err.message, err))
        broken: dict[str, str] = {}
        # Eager plugins start concurrently once registered (taking turns with every other
        # start, see WorkerPool._start_worker), so a thousand of them are all callable at
        # once, each call waiting for its own worker; a dependent waits for its
        # dependencies' starts, whose failure blocks it as before.
        starting: dict[str, anyio.Event] = {}
        start_failed: dict[str, LoadFailure] = {}
        unexpected: list[BaseException] = []

        async def start(handle: PluginHandle, done: anyio.Event) -> None:
            try:
                await handle._ensure_worker()
            except CordonError as exc:
                broken[handle.id] = exc.message
                start_failed[handle.id] = LoadFailure(
                    handle.id, handle.manifest.directory, exc.message, exc
                )
                log.error("plugin.load_failed", plugin=handle.id, error=exc.message)
            except Exception as exc:
                unexpected.append(exc)
            finally:
                done.set()

        registered: list[str] = []
        async with anyio.create_task_group() as tg:
            for pid in order:
                if pid not in manifests:
                    continue
                if pid in self._plugins:
                    report.skipped.append(pid)
                    continue
                manifest = manifests[pid]
                for dep in sorted(manifest.requires):
                    if dep in starting:
                        await starting[dep].wait()
                blocker = next((d for d in sorted(manifest.requires) if d in broken), None)
                if blocker is not None:
                    err = BlockedByDependency(
                        plugin=pid, dependency=blocker, chain=[pid, blocker], reason=broken[blocker]
                    )
                    broken[pid] = err.message
                    report.failed.append(LoadFailure(pid, manifest.directory, err.message, err))
                    continue
                try:
                    handle = await self._load_manifest(manifest, start=False)
                except CordonError as exc:
                    broken[pid] = exc.message
                    report.failed.append(LoadFailure(pid, manifest.directory, exc.message, exc))
                    log.error("plugin.load_failed", plugin=pid, error=exc.message)
                    continue
                registered.append(pid)
                if _eager(handle):
                    starting[pid] = anyio.Event()
                    tg.start_soon(start, handle, starting[pid])
        if unexpected:
            raise unexpected[0]
        for pid in registered:
            if pid in start_failed:
                report.failed.append(start_failed[pid])
            else:
                report.loaded.append(pid)
        return report

    async def unload(self, plugin_id: str, *, cascade: bool = False) -> list[str]:
        """Stop and forget a plugin. Refuses (:class:`PluginInUse`) while other loaded
        plugins require it, unless ``cascade``: then they are unloaded first. Returns the
        ids unloaded, in order."""
        self.get(plugin_id)
        graph = {pid: list(h.manifest.requires) for pid, h in self._plugins.items()}
        users = dependents(plugin_id, graph)
        if users and not cascade:
            raise PluginInUse(plugin=plugin_id, dependents=users)
        for pid in [*users, plugin_id]:
            await self._unload_one(pid)
        return [*users, plugin_id]

    async def _unload_one(self, plugin_id: str) -> None:
        handle = self.get(plugin_id)
        handle._unloaded = True
        await handle.stop()
        if handle._subscription is not None:
            handle._subscription.close()
        handle.host_api.close()
        if self.log_sink is not None:
            self.log_sink.forget(plugin_id)
        del self._plugins[plugin_id]

    async def reload(self, plugin_id: str) -> PluginHandle:
        """Hot-reload a plugin from its directory without failing a call.

        The new ``plugin.toml`` is validated and a new worker started and activated while
        the old one keeps serving; then new calls go to the new worker, the old one's
        in-flight calls finish (bounded by ``max-call-timeout``) and it is stopped. A broken
        new version (bad manifest, import error, failing activate, unmet dependency) raises
        its typed error and leaves the old one serving. Host storage is keyed by plugin id,
        so it survives.
        """
        handle = self.get(plugin_id)
        await handle.reload()
        return handle

    async def watch(self, plugin_ids: Iterable[str] | None = None, **kw: Any) -> None:
        """Reload plugins when their files change, until cancelled (``cordon run --watch``);
        see :func:`cordon.runtime._platform._reload.watch` for the options. Needs ``watchfiles``."""
        from .._platform._reload import watch

        await watch(cast("Runtime", self), plugin_ids, **kw)

    async def enable(self, plugin_id: str) -> None:
        """Allow the plugin's worker to start again (eagerly, if configured so). A restart
        backoff still pending from before the plugin was disabled is waived: enabling is the
        operator's go-ahead, and the next call must not wait out (or time out in) a backoff
        whose restart disabling cancelled. Crash history and the breaker stay as they are."""
        handle = self.get(plugin_id)
        handle.settings = msgspec.structs.replace(handle.settings, enabled=True)
        handle._backoff_until = 0.0
        if handle.state == "disabled":
            handle.state = "stopped" if handle._starts else "discovered"
            handle.state_reason = None
        handle._stopped = False
        if handle.settings.activate == "eager" or handle.manifest.activate == "eager":
            await handle._ensure_worker()

    async def disable(self, plugin_id: str, *, reason: str = "disabled by the host") -> None:
        """Stop the plugin's worker and refuse its calls (``PluginUnavailable``, reason
        ``disabled``) until :meth:`enable`; it stays loaded and listed, ``state_reason``
        saying ``reason``."""
        handle = self.get(plugin_id)
        handle.settings = msgspec.structs.replace(handle.settings, enabled=False)
        await handle.stop()
        handle.state, handle.state_reason = "disabled", reason
