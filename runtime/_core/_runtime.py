"""The host runtime: owns every worker, supervises them, routes calls.

``async with Runtime(config) as rt`` is the only way workers exist: leaving the block — normally,
by exception or by cancellation — stops every one of them with the escalating, shielded stop
of :meth:`WorkerProcess.stop`, so nothing outlives the runtime.

The class is split by concern into mixins, one module each: :mod:`._loading` (load,
discovery, unload, reload, enable/disable), :mod:`._routing` (routed calls and middleware) and
:mod:`._workers` (new workers, warm spares, cgroups); what stays here is the runtime's state,
its context management and task group, and the per-plugin lookups, events and stats. Each
plugin is a :class:`~cordon.runtime._supervise._handle.PluginHandle`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from cordon.protocol import PluginUnavailable

from .._hostapi._audit import AuditEntry, AuditTrail
from .._hostapi._events import EventBus
from .._hostapi._logsink import LogSink
from .._hostapi._redact import Redactor
from .._hostapi._storage import Storage
from .._platform._registry import Registry
from .._settings._config import Config, find_config, parse_config
from .._supervise._cgroup import CgroupSupport, WorkerCgroup
from .._supervise._handle import PLUGIN_STATES, PluginHandle
from .._supervise._launcher import Launcher, SpawnLauncher, choose_launcher
from .._supervise._sampler import FleetSampler
from .._supervise._stats import PluginStats
from .._supervise._worker import WorkerProcess
from .._supervise._zygote import ZygoteLauncher
from ._loading import LoadFailure, Loading, LoadReport, PluginInUse
from ._routing import MiddlewareFailed, Routing
from ._workers import START_CONCURRENCY, WorkerPool, _Lease, raise_open_files_limit

# The names runtime/__init__.py re-exports, importable from here as before the split.
__all__ = [
    "PLUGIN_STATES",
    "LoadFailure",
    "LoadReport",
    "MiddlewareFailed",
    "PluginHandle",
    "PluginInUse",
    "Runtime",
]

log = structlog.get_logger("cordon")


async def _shielded(close: Callable[[], Awaitable[None]]) -> None:
    # Closing databases must finish even when the runtime is left by cancellation,
    # or their file handles outlive it.
    with anyio.CancelScope(shield=True):
        await close()


def _coerce_config(config: Config | Mapping[str, Any] | str | os.PathLike[str] | None) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, source="<code>", base_dir=Path.cwd())
    return find_config(config)


class Runtime(Loading, Routing, WorkerPool):
    """Owns and supervises every plugin worker.

    >>> async with Runtime() as rt:                          # doctest: +SKIP
    ...     hello = await rt.load("examples/plugins/hello")
    ...     await hello.call("greet", {"name": "Ada"})
    'Hello Ada'
    """

    #: Start workers that honour ``$/fault`` (set by :mod:`cordon.testing` only).
    enable_faults: bool = False

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.config = _coerce_config(config)
        self._explicit_state_dir = Path(state_dir) if state_dir is not None else None
        self._python = python
        self._plugins: dict[str, PluginHandle] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._temp_state: str | None = None
        self.state_dir: Path | None = None
        self.storage: Storage | None = None
        self.audit_trail: AuditTrail | None = None
        self.log_sink: LogSink | None = None
        self.events: EventBus | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.cgroups = CgroupSupport.unavailable("the runtime is not running")
        self._cgroups: dict[WorkerProcess, WorkerCgroup] = {}
        #: Set once the runtime is being left: crashed workers are no longer restarted.
        self._closing = False
        self._cgroup_why: dict[WorkerProcess, str] = {}
        #: Warm spares: workers started up to their hello, waiting for a plugin.
        self._spares: list[WorkerProcess] = []
        self._claimed_spares: set[WorkerProcess] = set()
        self._spares_wanted = self.config.runtime.warm_workers
        self._filling = False
        #: Set (and replaced) whenever a spare becomes ready: for tests and diagnostics.
        self._spare_added = anyio.Event()
        #: The one pass over every worker: CPU time, RSS, health, idleness (see _sampler).
        self._sampler = FleetSampler()
        #: Worker starts under way at once (see WorkerPool._start_worker).
        self._start_slots = anyio.Semaphore(START_CONCURRENCY)
        #: The turns' leases, oldest first, and whether their keeper task runs.
        self._leases: deque[_Lease] = deque()
        self._lease_keeper = False
        #: The store of installed plugins, resolved on first use (see _store_dir).
        self._store_resolved: Path | None = None
        #: Every contribution of every loaded plugin; routing by name goes through it.
        self.registry = Registry(self)
        #: What starts this runtime's workers (chosen in __aenter__; a zygote starts on the
        #: first worker start, not before) and why that one (``cordon doctor`` says it).
        self.launcher: Launcher | None = None
        self.launcher_why = "the runtime is not running"

    # -- context management ---------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        raise_open_files_limit()
        self.state_dir = self._resolve_state_dir()
        (self.state_dir / "scratch").mkdir(parents=True, exist_ok=True, mode=0o700)
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            # Host-side state the plugins reach only through HostAPI: storage and the
            # audit trail live in the state dir, owned by the host, never by a worker.
            self.storage = await Storage.open(
                self.state_dir / "storage.db", default_quota=self.config.defaults.storage_quota
            )
            stack.push_async_callback(_shielded, self.storage.close)
            self.audit_trail = await AuditTrail.open(self.state_dir / "audit.db")
            stack.push_async_callback(_shielded, self.audit_trail.close)
            redactor = Redactor(extra_patterns=self.config.runtime.redact_patterns)
            self.log_sink = LogSink(rate=self.config.defaults.log_rate, redactor=redactor)
            self.events = await stack.enter_async_context(EventBus())
            if self.config.runtime.cgroups == "auto":
                self.cgroups = CgroupSupport.detect()
            else:
                self.cgroups = CgroupSupport.unavailable("off (runtime.cgroups)")
            # Last in, first out: after every worker has been reaped (the task group exits
            # before the stack), so only empty groups remain to remove.
            stack.callback(self.cgroups.close)
            if not self.cgroups.available:
                log.info("cgroup.unavailable", why=self.cgroups.why)
            name, self.launcher_why = choose_launcher(self.config.runtime.launcher)
            launcher: Launcher = (
                ZygoteLauncher(self._python) if name == "zygote" else SpawnLauncher()
            )
            self.launcher = launcher
            # After the task group has reaped every worker: the zygote is stopped (its socket
            # closed, then reaped) before the cgroups go.
            stack.push_async_callback(_shielded, launcher.aclose)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self.log_sink.run_reporter)
        tg.start_soon(self._sampler.run)
        # No spare yet: the first is made by the first worker start, so a runtime that never
        # runs a plugin never pays for one.
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg = self._tg
        assert tg is not None
        result: bool | None = None
        try:
            try:
                with anyio.CancelScope(shield=True):
                    await self.aclose()
                tg.cancel_scope.cancel()
            finally:
                self._tg = None
                # Hand the task group only a cancellation (it may be its own, to absorb); any
                # other exception from the body propagates as itself, not in an ExceptionGroup.
                is_cancel = isinstance(exc_info[1], anyio.get_cancelled_exc_class())
                absorbed = await tg.__aexit__(*(exc_info if is_cancel else (None, None, None)))
                result = absorbed if is_cancel else None
        finally:
            stack, self._stack = self._stack, None
            try:
                if stack is not None:
                    # Exits the event bus's task group, then closes audit and storage; it
                    # runs whatever happened above, so nothing is left open.
                    await stack.__aexit__(None, None, None)
            finally:
                if self._temp_state is not None:
                    shutil.rmtree(self._temp_state, ignore_errors=True)
                    self._temp_state = None
        return result

    async def aclose(self) -> None:
        """Stop every worker (shielded, escalating, concurrently)."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for handle in self._plugins.values():
                    tg.start_soon(handle.stop)
                spares, self._spares = self._spares, []
                for spare in spares:
                    tg.start_soon(spare.stop)

    def _resolve_state_dir(self) -> Path:
        if self._explicit_state_dir is not None:
            return self._explicit_state_dir.resolve()
        if self.config.source is not None:
            return Path(self.config.runtime.state_dir).resolve()
        # Built-in defaults: no file named a place, so keep nothing beyond this runtime.
        self._temp_state = tempfile.mkdtemp(prefix="cordon-")
        return Path(self._temp_state)

    def _tg_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tg is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        self._tg.start_soon(fn, *args)

    async def _tg_start(self, fn: Callable[..., Any]) -> Any:
        if self._tg is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        return await self._tg.start(fn)

    # -- plugins --------------------------------------------------------------------------

    @property
    def plugins(self) -> Mapping[str, PluginHandle]:
        return dict(self._plugins)

    def get(self, plugin_id: str) -> PluginHandle:
        try:
            return self._plugins[plugin_id]
        except KeyError:
            raise PluginUnavailable(
                f"no plugin {plugin_id!r} is loaded", plugin=plugin_id, reason="not-loaded"
            ) from None

    async def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        """Host lifecycle events: source "cordon", which no plugin can claim."""
        if self.events is not None:
            await self.events.emit(topic, payload, source="cordon")

    async def emit(self, topic: str, payload: Any = None, *, source: str = "app") -> int:
        """Publish an application event to subscribed plugins; returns how many plugins (and
        host subscribers) took it: delivered, or queued until the plugin is ready.

        A plugin takes a topic its manifest declares (``[contributes] events``) or a running
        handler subscribes to, if it holds ``events:subscribe:<topic>``. One that is not
        running is started by the event (an activation event), which is delivered once it is
        ready; events meanwhile wait in its queue (bounded: overflow is dropped, counted and
        logged, and not counted here). A disabled plugin, one whose breaker is open and one
        whose last start failed take nothing and are not started. Delivery is asynchronous:
        this returns once the event is queued, never waiting for a handler."""
        if self.events is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        return await self.events.emit(topic, payload, source=source)

    async def audit(self, plugin_id: str, limit: int = 100) -> list[AuditEntry]:
        """The plugin's audit trail of host-API calls, newest first."""
        if self.audit_trail is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        return await self.audit_trail.read(plugin_id, limit)

    async def call(self, plugin_id: str, name: str, arguments: Any = None, **kw: Any) -> Any:
        return await self.get(plugin_id).call(name, arguments, **kw)

    def reset(self, plugin_id: str) -> None:
        """Close a plugin's circuit breaker (an operator decision)."""
        self.get(plugin_id).reset()

    def stats(self) -> dict[str, PluginStats]:
        return {pid: handle.stats() for pid, handle in self._plugins.items()}
