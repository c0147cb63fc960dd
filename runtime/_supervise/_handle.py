"""The :class:`PluginHandle`: a loaded plugin as the host sees it. Here are its state, its
calls (the hot path: choose the serving worker, count the call, invoke, record the latency),
a hot reload (a new version's worker started beside the old, which drains on the same call
counters before it stops), its event subscription and delivery (an event may start it), and
its stats. How its worker starts, restarts and stops is the
:class:`~cordon.runtime._supervise._lifecycle.PluginLifecycle` it inherits. It reaches its
runtime only through :class:`~cordon.runtime._supervise._host.PluginHost`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from cordon.protocol import (
    CallTimeout,
    CordonError,
    InvalidParams,
    PluginUnavailable,
    ProgressParams,
    QuotaExceeded,
)

from .._hostapi._api import HostAPI
from .._hostapi._events import Subscription, check_glob
from .._platform._registry import ContributionInfo, plugin_contributions
from .._platform._versions import CORDON_VERSION
from .._settings._config import PluginSettings
from .._settings._manifest import Manifest, check_cordon_compat, load_manifest
from .._settings._permissions import PermissionSet
from ._lifecycle import EXIT_HISTORY, PluginLifecycle, _Start
from ._sampler import read_stat
from ._stats import CallStats, PluginStats
from ._worker import ExitInfo, WorkerProcess

if TYPE_CHECKING:
    from ._host import PluginHost

__all__ = ["PLUGIN_STATES", "PluginHandle"]

log = structlog.get_logger("cordon")

#: Beyond the longest call a plugin may make, how long a retired worker gets to finish.
DRAIN_GRACE: Final = 2.0

#: What :attr:`PluginHandle.state` may be, and when. ``state_reason`` says more where it can.
PLUGIN_STATES: Final[Mapping[str, str]] = {
    "discovered": "manifest read and contributions registered; no worker has run yet",
    "loading": "a worker is starting: spawn, handshake, sandbox, import, activate",
    "active": "a worker is serving calls",
    "reloading": "a new version's worker is starting while the old one serves",
    "stopped": "no worker now (idle timeout, stop); the next call starts one",
    "crashed": "the worker died; a restart follows its backoff",
    "backoff": "waiting out the restart backoff before starting a worker",
    "broken": "circuit breaker open: calls fail fast until reset or the window passes",
    "failed": "the last start failed (import error, failing activate, sandbox refused)",
    "disabled": "disabled by the operator; calls are refused until enabled",
}


class PluginHandle(PluginLifecycle):
    """A loaded plugin, seen from the host. Its worker starts on first use."""

    def __init__(
        self,
        runtime: PluginHost,
        manifest: Manifest,
        settings: PluginSettings,
        permissions: PermissionSet,
        host_api: HostAPI,
    ) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.settings = settings
        self.permissions = permissions
        self.host_api = host_api
        self.id = manifest.id
        #: One of :data:`PLUGIN_STATES`.
        self.state = "discovered"
        #: Why the plugin is in its state (``None`` when there is nothing to say).
        self.state_reason: str | None = None
        self.sandbox: dict[str, str] = {}
        #: The worker's cgroup: ``applied (...)``, ``unavailable: why`` or ``off``.
        self.cgroup: str = "not started"
        self.contributions: list[Any] = []
        self._worker: WorkerProcess | None = None
        self._start_lock = anyio.Lock()
        self._crash_times: deque[float] = deque()
        self._exits: deque[ExitInfo] = deque(maxlen=EXIT_HISTORY)
        self._breaker_until: float | None = None
        self._backoff_until = 0.0
        self._failures = 0
        self.restarts = 0
        self.crashes = 0
        #: Workers whose exit _count_exit took in (crash, shutdown, retired), until
        #: _on_exit has acted on it.
        self._exit_kinds: dict[WorkerProcess, str] = {}
        self._starts = 0
        self._stats = CallStats()
        # Calls in flight per worker (counted here, not by the worker, so health pings do
        # not count), and an event set whenever one finishes: reload drains on these.
        self._active_calls: dict[WorkerProcess, int] = {}
        # Made only when a drain waits on it: a new Event per call cost ~2 µs on the hot path.
        self._call_finished: anyio.Event | None = None
        self._last_call = time.monotonic()
        self._retiring: set[WorkerProcess] = set()
        self._reload_lock = anyio.Lock()
        #: The plugin's one event subscription: its declared and handled topics, made at
        #: load so an event can start the plugin (see _sync_subscription).
        self._subscription: Subscription | None = None
        #: The worker start in progress, if any.
        self._starting: _Start | None = None
        #: Events that reached a worker with no handler for them, since it started.
        self._unhandled_events = 0
        #: The pending eager restart after a crash (cancelled by stop, disable, unload).
        self._restart_scope: anyio.CancelScope | None = None
        #: Set by stop() (and unload): until the next call, start or reload asks for a
        #: worker, a worker that dies — in its deactivate, say — is not restarted.
        self._stopped = False
        self._unloaded = False
        self._restart_again = False
        #: Health pings sent to this plugin's workers (the fleet pass sends one only when a
        #: worker needs it: see ``_sampler``).
        self.health_checks = 0

    # -- calling --------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.settings.call_timeout
        if not (timeout > 0) or math.isinf(timeout):
            raise InvalidParams(
                f"timeout must be a positive number, got {timeout}", field="timeout"
            )
        if timeout > self.settings.max_call_timeout:
            raise InvalidParams(
                f"timeout {timeout} s exceeds plugin {self.id!r}'s max-call-timeout "
                f"({self.settings.max_call_timeout} s)",
                field="timeout",
            )
        return timeout

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | list[Any] | None = None,
        *,
        kind: str = "tool",
        timeout: float | None = None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Any:
        """Invoke one of the plugin's contributions and return its decoded result.

        Raises the typed error the call met: :class:`PluginError` (the plugin raised),
        :class:`InvalidParams`, :class:`CallTimeout`, :class:`WorkerCrashed`,
        :class:`QuotaExceeded`, :class:`PluginUnavailable`, ...
        """
        # The hot path (a sequential caller waits through all of it): the common cases
        # are inlined, since a Python call is ~1 us when the caches are cold after a wait.
        limit = self.settings.call_timeout if timeout is None else self._timeout(timeout)
        self._stopped = False
        worker = self._worker
        if worker is None or not worker.alive:
            # The caller's deadline covers waiting for a worker too (backoff, spawn,
            # initialize, activate): only what is left of it goes to the call itself.
            worker, limit = await self._worker_within(name, limit)
        # No checkpoint between choosing the worker and counting the call: a reload that
        # switches workers either sees this call in flight on the old one or it goes new.
        active = self._active_calls
        active[worker] = active.get(worker, 0) + 1
        # One clock for the latency and the idle timer (perf_counter is this same clock
        # on Linux, at the same resolution).
        started = time.monotonic()
        try:
            value = await worker.invoke_decoded(
                name,
                arguments if arguments is not None else {},
                kind=kind,
                timeout=limit,
                on_progress=on_progress,
            )
        except CordonError as exc:
            self._stats.record(time.monotonic() - started, exc)
            if isinstance(exc, QuotaExceeded):
                log.warning("quota.hit", plugin=self.id, kind=exc.kind, limit=exc.limit, call=name)
            if isinstance(exc, QuotaExceeded) and exc.kind == "memory":
                # It caught MemoryError and limped on: its heap is suspect; recycle it.
                worker.kill_nowait("memory", "plugin hit its memory limit")
            raise
        finally:
            now = self._call_done(worker)
        self._stats.record(now - started, None)
        self._failures = 0
        return value

    async def _worker_within(self, name: str, limit: float) -> tuple[WorkerProcess, float]:
        """A serving worker, waited for at most ``limit`` seconds, and the time left;
        :class:`CallTimeout` when the deadline passes first (the start carries on)."""
        began = time.monotonic()
        worker: WorkerProcess | None = None
        with anyio.move_on_after(limit):
            worker = await self._ensure_worker()
        left = limit - (time.monotonic() - began)
        if worker is None or left <= 0:
            exc = CallTimeout(
                f"call {name!r} to plugin {self.id!r} timed out after {limit} s waiting for "
                f"its worker to start (state {self.state!r}"
                + (f": {self.state_reason})" if self.state_reason else ")"),
                timeout=limit,
                method=name,
                plugin=self.id,
            )
            self._stats.record(time.monotonic() - began, exc)
            raise exc
        return worker, left

    def _call_done(self, worker: WorkerProcess) -> float:
        """The call is over (answered, failed or cancelled): uncount it, and wake a reload
        draining this worker. Returns the time it ended."""
        active = self._active_calls
        left = active[worker] - 1
        if left > 0:
            active[worker] = left
        else:
            del active[worker]
        self._last_call = now = time.monotonic()
        finished = self._call_finished
        if finished is not None:
            self._call_finished = None
            finished.set()
        return now

    async def start(self) -> None:
        """Start the worker now, as a first call would (a no-op while one serves). Raises
        what starting met: :class:`PluginUnavailable` (disabled, breaker open),
        :class:`WorkerCrashed`, :class:`SandboxUnavailable`, ..."""
        self._stopped = False
        await self._ensure_worker()

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> None:
        """Hot reload: see :meth:`Runtime.reload`."""
        self._stopped = False
        async with self._reload_lock:
            # An installed plugin reloads into the version `current` names now (an update or
            # a rollback swapped it); any other plugin, from its folder.
            manifest = load_manifest(self.runtime._reload_dir(self.manifest))
            check_cordon_compat(manifest, CORDON_VERSION)
            if manifest.id != self.id:
                raise PluginUnavailable(
                    f"plugin.toml in {manifest.directory} now says id {manifest.id!r}, not "
                    f"{self.id!r}; a reload cannot rename a plugin (unload and load instead)",
                    plugin=self.id,
                    reason="id-changed",
                )
            self.runtime._check_dependencies(manifest)
            perms = self.runtime._permissions_for(manifest, self.settings)
            if not self.settings.enabled:
                raise PluginUnavailable(
                    f"plugin {self.id!r} is disabled", plugin=self.id, reason="disabled"
                )
            previous, previous_reason = self.state, self.state_reason
            self.state, self.state_reason = "reloading", f"to version {manifest.version}"
            # Only one worker start at a time: a crash restart must not race the new worker.
            async with self._start_lock:
                try:
                    new = await self._launch(manifest, record=False)
                except BaseException as exc:
                    self.state = previous
                    self.state_reason = previous_reason
                    if isinstance(exc, CordonError):
                        log.error("plugin.reload_failed", plugin=self.id, error=exc.message)
                        self.state_reason = f"reload failed: {exc.message}"
                    raise
                old = self._worker
                self.manifest = manifest
                self.permissions = perms
                self.host_api.permissions = perms
                if old is not None:
                    self._retiring.add(old)
                await self._adopt(new)
            log.info("plugin.reloaded", plugin=self.id, version=manifest.version, pid=new.pid)
            await self.runtime._emit(
                "cordon.plugin.reloaded",
                {"plugin": self.id, "version": manifest.version, "pid": new.pid},
            )
            if old is not None:
                await self._retire(old)

    async def _retire(self, old: WorkerProcess) -> None:
        """Let ``old``'s in-flight calls finish (bounded by the longest call allowed), then
        stop it."""
        try:
            with anyio.move_on_after(self.settings.max_call_timeout + DRAIN_GRACE):
                while self._active_calls.get(old) and old.exit is None:
                    # Set by the next call to finish (on any worker; then re-check).
                    if self._call_finished is None:
                        self._call_finished = anyio.Event()
                    await self._call_finished.wait()
        finally:
            # Even if the reload's caller is cancelled mid-drain (stop is shielded).
            try:
                await old.stop()
            finally:
                self._retiring.discard(old)

    # -- events ---------------------------------------------------------------------------

    def _event_globs(self) -> tuple[str, ...]:
        """The topics the plugin takes: those its manifest declares (known before it ever
        runs, so they can start it) and those its running worker's handlers subscribe to."""
        declared = [e.topic for e in self.manifest.contributes.events]
        handled = [
            str(c.options.get("topic", "")) for c in self.contributions if c.kind == "event_handler"
        ]
        return tuple(dict.fromkeys([*declared, *handled]))

    def _takes_events(self) -> bool:
        """Whether an event may be delivered now, starting the plugin if it is not running
        (VS Code's activation events): not when it is disabled, unloaded, its breaker is
        open, or its last start failed with no restart coming (an event must not retry a
        broken plugin in a loop; a call, start, reload or reset does)."""
        if not self.settings.enabled or self._unloaded or self.runtime._closing:
            return False
        if self._breaker_until is not None and time.monotonic() < self._breaker_until:
            return False
        worker = self._worker
        if worker is not None and worker.alive:
            return True
        return self.state != "failed" or self._restart_scope is not None

    async def _sync_subscription(self) -> None:
        """Make the plugin's one subscription match :meth:`_event_globs` (made at load; its
        globs replaced in place after each start and reload, so queued events stay queued
        and none falls between two versions). One subscription per plugin gives its events
        one bounded queue, in emit order, while a start is under way."""
        events = self.runtime.events
        if events is None or self._unloaded:
            return
        wanted: list[str] = []
        for topic in self._event_globs():
            try:
                wanted.append(check_glob(topic))
            except CordonError as exc:
                log.warning(
                    "events.subscribe_refused", plugin=self.id, topic=topic, error=exc.message
                )
        self._unhandled_events = 0
        sub = self._subscription
        have = set(sub.topic_globs) if sub is not None else set()
        declared = {e.topic for e in self.manifest.contributes.events}
        for topic in wanted:
            if topic not in have:
                if topic not in declared:
                    log.warning(
                        "events.undeclared",
                        plugin=self.id,
                        topic=topic,
                        hint="declare it in plugin.toml [contributes] events so an event on "
                        "it can start the plugin",
                    )
                if self.runtime.audit_trail is not None:
                    await self.runtime.audit_trail.record(
                        self.id, "events.subscribe", topic, allowed=True
                    )
        if sub is None:
            if wanted:
                self._subscription = events.subscribe(
                    self.id,
                    tuple(wanted),
                    self._deliver_event,
                    permissions=self.permissions,
                    gate=self._takes_events,
                )
            return
        sub.permissions = self.permissions
        sub.set_globs(tuple(wanted))

    async def _deliver_event(self, topic: str, payload: Any, source: str) -> None:
        """One event, to each of the running worker's handlers whose glob matches it; a
        plugin that is not running is started first (the caller is the event's queue, so
        later events wait behind this one). Every handler is tried; the first error raised
        counts the delivery as failed."""
        worker = self._worker
        if worker is None or not worker.alive:
            if not self._takes_events():
                log.info("event.not_delivered", plugin=self.id, topic=topic, state=self.state)
                return
            self._stopped = False
            await self._ensure_worker()
        names = [
            c.name
            for c in self.contributions
            if c.kind == "event_handler" and fnmatchcase(topic, str(c.options.get("topic", "")))
        ]
        if not names:
            # Logged once per worker: any plugin allowed to emit could otherwise fill the
            # host's log with one line per event.
            self._unhandled_events += 1
            if self._unhandled_events == 1:
                log.warning(
                    "event.no_handler",
                    plugin=self.id,
                    topic=topic,
                    why="no handler of the running worker matches; logged once per worker",
                )
            return
        first: CordonError | None = None
        for name in names:
            try:
                await self.call(
                    name,
                    {"topic": topic, "payload": payload, "source": source},
                    kind="event_handler",
                )
            except CordonError as exc:
                first = first or exc
        if first is not None:
            raise first

    def registry_entries(self) -> list[ContributionInfo]:
        """This plugin's contributions as the registry lists them."""
        return plugin_contributions(self)

    @property
    def worker(self) -> WorkerProcess | None:
        """The live worker, if any (for fault injection and diagnostics)."""
        return self._worker

    def stats(self) -> PluginStats:
        worker = self._worker
        cpu = rss = None
        if worker is not None and worker.pid and worker.exit is None:
            # One read of /proc/<pid>/stat (psutil would make three).
            sample = read_stat(worker.pid)
            if sample is not None:
                cpu, rss = sample.cpu_seconds, sample.rss_bytes
        last = self._exits[-1] if self._exits else None
        running = worker is not None and worker.exit is None
        budget = worker.decode_budget if worker is not None and running else None
        return PluginStats(
            plugin=self.id,
            state=self.state,
            pid=worker.pid if worker is not None and worker.exit is None else None,
            restarts=self.restarts,
            calls=self._stats.calls,
            errors=dict(self._stats.errors),
            latency_p50_ms=self._stats.percentile(0.50),
            latency_p99_ms=self._stats.percentile(0.99),
            cpu_seconds=cpu,
            rss_bytes=rss,
            last_exit_reason=last.reason if last else None,
            last_exit=(
                {
                    "reason": last.reason,
                    "returncode": last.returncode,
                    "signal": last.signal,
                    "detail": last.detail,
                }
                if last
                else None
            ),
            breaker_open=self._breaker_until is not None and time.monotonic() < self._breaker_until,
            sandbox=dict(self.sandbox),
            in_flight=worker.in_flight if worker is not None else 0,
            cgroup=self.cgroup,
            crashes=self.crashes,
            launcher=worker.launched_by if worker is not None and worker.exit is None else None,
            health_checks=self.health_checks,
            decode_cpu_seconds=budget.charged if budget is not None else 0.0,
            decode_longest_ms=budget.longest * 1000.0 if budget is not None else 0.0,
            decode_pauses=budget.paused if budget is not None else 0,
        )
