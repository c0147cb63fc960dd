"""The host runtime: owns every worker, supervises them, routes calls.

``async with Runtime(config) as rt`` is the only way workers exist: leaving the block — normally,
by exception or by cancellation — stops every one of them with the escalating, shielded stop
of :meth:`WorkerProcess.stop`, so nothing outlives the runtime.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import random
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar, Final

import anyio
import anyio.abc
import msgspec
import psutil
import structlog

from cordon.protocol import (
    ACTIVATE,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    CallTimeout,
    CordonError,
    InitializeParams,
    InvalidParams,
    Limits,
    PermissionDenied,
    PluginUnavailable,
    ProgressParams,
    QuotaExceeded,
    SandboxPolicy,
    WorkerCrashed,
    decode_params,
)

from .._hostapi._api import HostAPI
from .._hostapi._audit import AuditEntry, AuditTrail
from .._hostapi._events import EventBus, Subscription, check_glob
from .._hostapi._exec import policy_for_plugin
from .._hostapi._logsink import LogSink
from .._hostapi._redact import Redactor
from .._hostapi._storage import Storage
from .._platform._discovery import discover
from .._platform._registry import ContributionInfo, Registry, plugin_contributions
from .._platform._versions import (
    CORDON_VERSION,
    BlockedByDependency,
    dependents,
    partition_loadable,
    plugin_table,
)
from .._settings._config import Config, PluginSettings, find_config, parse_config
from .._settings._manifest import Manifest, check_cordon_compat, load_manifest
from .._settings._permissions import PermissionSet, effective_permissions
from .._supervise._cgroup import CgroupSupport, WorkerCgroup
from .._supervise._stats import CallStats, PluginStats
from .._supervise._worker import QUOTA_REASONS, ExitInfo, WorkerProcess

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

#: on_activate hooks get this long; bounded so a hanging hook cannot wedge the first call.
ACTIVATE_TIMEOUT: Final = 30.0
#: Exit reasons remembered per plugin for PluginUnavailable and stats.
EXIT_HISTORY: Final = 10
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


class MiddlewareFailed(CordonError):
    """A middleware failed or timed out under ``middleware-policy = "fail-closed"``:
    ``plugin``/``middleware`` name it, ``phase`` is ``before_request`` or ``after_response``,
    ``reason`` is what went wrong."""

    code = -32042
    _fields: ClassVar[tuple[str, ...]] = ("plugin", "middleware", "phase", "reason")
    plugin: str | None
    middleware: str | None
    phase: str | None
    reason: str | None

    def _default_message(self) -> str:
        return f"middleware {self.plugin}.{self.middleware} ({self.phase}) failed: {self.reason}"


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


class _Start:
    """One start of a plugin's worker (backoff, spawn, initialize, activate), run by the
    runtime and shared by every caller waiting for it: a caller whose deadline passes stops
    waiting, the start goes on for the callers after it. ``stop()`` cancels it."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.scope = anyio.CancelScope()
        self.worker: WorkerProcess | None = None
        self.error: BaseException | None = None


def _rethrow(exc: BaseException) -> BaseException:
    # One start's error goes to every waiter: each gets its own instance, so tracebacks
    # raised in different tasks do not pile up on one object.
    return copy.copy(exc) if isinstance(exc, CordonError) else exc


def restart_backoff(
    failures: int,
    backoff: float,
    max_backoff: float,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before restart number ``failures`` (1-based): ``backoff`` doubling per
    consecutive failure, capped at ``max_backoff``, with "equal jitter" — half fixed, half
    random — so restarts of many plugins spread out."""
    base = min(max_backoff, backoff * 2.0 ** max(0, failures - 1))
    return base / 2 + uniform(0, base / 2)


class PluginHandle:
    """A loaded plugin, seen from the host. Its worker starts on first use."""

    def __init__(
        self,
        runtime: Runtime,
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
            raw = await worker.invoke(
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
        return decode_params(raw)

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

    # -- supervision ----------------------------------------------------------------------

    def _check_breaker(self) -> None:
        if self._breaker_until is None:
            return
        now = time.monotonic()
        if now >= self._breaker_until:
            log.info("breaker.closed", plugin=self.id, why="window passed")
            self._breaker_until = None
            self._crash_times.clear()
            return
        raise PluginUnavailable(
            f"plugin {self.id!r} is unavailable: circuit breaker open after "
            f"{len(self._crash_times)} restarts within {self.settings.restart.within} s "
            f"(last exits: {', '.join(e.reason for e in self._exits)})",
            plugin=self.id,
            reason="circuit-breaker-open",
            last_exit_reasons=[e.reason for e in self._exits],
            retry_after=round(self._breaker_until - now, 3),
        )

    async def _ensure_worker(self) -> WorkerProcess:
        """The serving worker, starting one if needed. The start runs in the runtime's task
        group, not in the caller's task: a caller that gives up (its deadline, its
        cancellation) leaves it running for the next caller, and every caller waiting at the
        same time shares it and its outcome."""
        worker = self._worker
        if worker is not None and worker.alive:
            return worker
        # What would refuse the start refuses the caller at once, without a task.
        self._check_startable()
        start = self._starting
        if start is None:
            start = _Start()
            # Scheduled before it is published: a runtime that is not running raises here
            # and leaves no start behind that nothing would ever finish.
            self.runtime._tg_soon(self._run_start, start)
            self._starting = start
        await start.done.wait()
        if start.error is not None:
            raise _rethrow(start.error)
        assert start.worker is not None
        return start.worker

    def _check_startable(self) -> None:
        if not self.settings.enabled:
            raise PluginUnavailable(
                f"plugin {self.id!r} is disabled", plugin=self.id, reason="disabled"
            )
        self._check_breaker()

    async def _run_start(self, start: _Start) -> None:
        try:
            with start.scope:
                async with self._start_lock:
                    worker = self._worker
                    if worker is not None and worker.alive:
                        start.worker = worker
                        return
                    self._check_startable()
                    delay = self._backoff_until - time.monotonic()
                    if delay > 0:
                        # Calls queued behind a crash wait out the backoff (as far as their
                        # deadlines allow) and are then served by the restarted worker: not
                        # dropped, not run twice.
                        self.state = "backoff"
                        await anyio.sleep(delay)
                    start.worker = await self._start()
        except Exception as exc:
            # The waiters' error, never the runtime task group's (it would end the runtime).
            start.error = exc
        finally:
            if start.worker is None and start.error is None:
                # Cancelled: stop(), disable, unload, or the runtime closing.
                start.error = PluginUnavailable(
                    f"plugin {self.id!r} was stopped while its worker was starting",
                    plugin=self.id,
                    reason="disabled" if not self.settings.enabled else "stopped",
                )
            if self._starting is start:
                self._starting = None
            start.done.set()

    async def _start(self) -> WorkerProcess:
        self.state = "loading"
        self.state_reason = None
        try:
            worker = await self._launch(self.manifest)
        except CordonError as exc:
            if self.state != "broken":
                self.state = "failed"
            self.state_reason = exc.message
            raise
        if self._starts:
            self.restarts += 1
            log.info("worker.restarted", plugin=self.id, pid=worker.pid, restarts=self.restarts)
        self._starts += 1
        await self._adopt(worker)
        return worker

    async def _launch(self, manifest: Manifest, *, record: bool = True) -> WorkerProcess:
        """Start a worker for ``manifest`` and activate it; it is not serving calls yet.
        ``record`` counts a failure towards the restart policy (not for a reload attempt)."""
        worker = self.runtime._new_worker(self, manifest)
        if self.runtime._is_claimed_spare(worker):
            try:
                await self.runtime._start_worker(worker)
            except CordonError as exc:
                # A spare is a cache: if it fails its claim (it died waiting — killed, or
                # OOM — or the plugin's start failed on it), try once more the plain way
                # and count only that attempt.
                with anyio.CancelScope(shield=True):
                    await worker.stop(deactivate=False)
                log.warning("spare.claim_failed", plugin=self.id, pid=worker.pid, error=exc.message)
                worker = self.runtime._new_worker(self, manifest, spare=False)
        try:
            if worker.init_result is None:
                await self.runtime._start_worker(worker)
            log.info("worker.started", plugin=self.id, pid=worker.pid)
            with anyio.fail_after(ACTIVATE_TIMEOUT):
                await worker.request(ACTIVATE, None, timeout=None)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await worker.stop(deactivate=False)
            if isinstance(exc, CordonError | TimeoutError) and record:
                self._record_failure(worker)
            if isinstance(exc, TimeoutError):
                raise WorkerCrashed(
                    plugin=self.id,
                    reason="unresponsive",
                    detail=f"activate took over {ACTIVATE_TIMEOUT} s",
                ) from None
            raise
        assert worker.init_result is not None
        return worker

    async def _adopt(self, worker: WorkerProcess) -> None:
        """Make a started worker the one that serves new calls."""
        assert worker.init_result is not None
        self.sandbox = dict(worker.init_result.sandbox)
        # Not a sandbox layer but a quota line: reported apart, so a host without cgroups
        # is not told its sandbox is incomplete.
        group = self.runtime._cgroups.get(worker)
        if group is not None and group.joined:
            self.cgroup = group.describe()
        elif group is not None:
            self.cgroup = group.why_not
            log.warning("cgroup.unavailable", plugin=self.id, why=group.why_not)
        else:
            self.cgroup = self.runtime._cgroup_why.get(worker, "off")
        self.contributions = list(worker.init_result.contributions)
        self._worker = worker
        self.state = "active"
        self.state_reason = None
        missing = [k for k, v in self.sandbox.items() if v.startswith("unavailable")]
        log.info("worker.ready", plugin=self.id, pid=worker.pid, sandbox_missing=missing or None)
        if missing and self.settings.sandbox == "best-effort":
            log.warning(
                "sandbox.incomplete", plugin=self.id, missing={k: self.sandbox[k] for k in missing}
            )
        # Counted the moment the exit is known, before callers get its error (see _count_exit).
        worker.exit_listeners.append(self._count_exit)
        self.runtime._tg_soon(self._watch, worker)
        await self._sync_subscription()
        await self.runtime._emit("cordon.plugin.started", {"plugin": self.id, "pid": worker.pid})

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

    def _record_failure(self, worker: WorkerProcess) -> None:
        info = worker.exit
        if info is not None:
            self._exits.append(info)
        now = time.monotonic()
        policy = self.settings.restart
        self._crash_times.append(now)
        while self._crash_times and now - self._crash_times[0] > policy.within:
            self._crash_times.popleft()
        self._failures += 1
        self._backoff_until = now + restart_backoff(
            self._failures, policy.backoff, policy.max_backoff
        )
        if len(self._crash_times) > policy.max:
            self._breaker_until = now + policy.within
            self.state = "broken"
            log.error(
                "breaker.open",
                plugin=self.id,
                restarts=len(self._crash_times),
                within=policy.within,
                last_exits=[e.reason for e in self._exits],
            )

    async def _watch(self, worker: WorkerProcess) -> None:
        """Health pings while idle and the RSS watchdog, until the worker ends."""
        interval = self.settings.health_interval
        proc: psutil.Process | None = None
        try:
            proc = psutil.Process(worker.pid) if worker.pid else None
        except psutil.Error:
            proc = None
        idle_timeout = self.settings.idle_timeout
        while True:
            wait = interval
            if idle_timeout > 0:
                wait = min(wait, max(0.01, self._last_call + idle_timeout - time.monotonic()))
            with anyio.move_on_after(wait):
                await worker.exited.wait()
            if worker.exit is not None:
                break
            if not worker.alive:
                await worker.exited.wait()
                break
            if (
                idle_timeout > 0
                and self._worker is worker
                and not self._active_calls.get(worker)
                and time.monotonic() - self._last_call >= idle_timeout
            ):
                log.info("worker.idle_stop", plugin=self.id, pid=worker.pid, idle=idle_timeout)
                # Stopped as far as callers can tell: the next call starts a new worker.
                self.state, self.state_reason = "stopped", f"idle for {idle_timeout} s"
                await worker.stop()
                continue
            self._check_rss(worker, proc)
            idle = worker.in_flight == 0 and time.monotonic() - worker.last_activity >= interval
            if idle and not await worker.ping(self.settings.health_timeout) and worker.exit is None:
                worker.kill_nowait(
                    "unresponsive", f"no answer to ping within {self.settings.health_timeout} s"
                )
        await self._on_exit(worker)

    def _check_rss(self, worker: WorkerProcess, proc: psutil.Process | None) -> None:
        limit = self.settings.memory
        if proc is None or not limit:
            return
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            return
        if rss > limit:
            worker.kill_nowait("memory", f"RSS {rss} bytes over the {limit}-byte limit")

    def _count_exit(self, worker: WorkerProcess) -> None:
        """Bring state, ``crashes`` and the exit history up to date with ``worker``'s exit,
        once. The worker calls this the moment its exit is known, before it fails the calls
        in flight, so a caller holding ``WorkerCrashed`` already sees it in ``stats()``;
        :meth:`_on_exit` (the watcher, later) does the rest: logs, events, restart."""
        if worker in self._exit_kinds:
            return
        info = worker.exit
        if info is None:
            return
        kind = "crash"
        if self._worker is not None and self._worker is not worker:
            # A worker retired by a reload: its successor is serving; nothing to supervise.
            kind = "retired"
        else:
            if self._worker is worker:
                self._worker = None
            if info.reason == "shutdown":
                kind = "shutdown"
                if self.state == "active":
                    self.state = "stopped"
            else:
                self.state = "crashed"
                self.crashes += 1
                # Logged here, with the count: the failure it records may open the breaker,
                # and the log must read crash, then breaker.
                log.warning(
                    "worker.crashed",
                    plugin=self.id,
                    pid=worker.pid,
                    reason=info.reason,
                    returncode=info.returncode,
                    signal=info.signal,
                    detail=info.detail,
                )
                if info.reason in QUOTA_REASONS:
                    log.warning("quota.hit", plugin=self.id, kind=info.reason, limit=info.limit)
                self._record_failure(worker)
        self._exit_kinds[worker] = kind

    async def _on_exit(self, worker: WorkerProcess) -> None:
        info = worker.exit
        if info is None:
            if self._worker is worker:
                self._worker = None
            if self.state == "active":
                self.state = "stopped"
            return
        self._count_exit(worker)
        kind = self._exit_kinds.pop(worker, None)
        if kind == "retired":
            if info.reason != "shutdown":
                log.warning("worker.retired_exit", plugin=self.id, reason=info.reason)
            return
        if kind != "crash":
            return
        await self.runtime._emit(
            "cordon.plugin.crashed", {"plugin": self.id, "reason": info.reason}
        )
        if self.settings.restart.eager:
            self._schedule_restart()

    def _wants_restart(self) -> bool:
        return not (
            self._stopped or self._unloaded or self.runtime._closing or not self.settings.enabled
        )

    def _schedule_restart(self) -> None:
        if not self._wants_restart():
            return
        if self._restart_scope is not None:
            # One is running: the worker it started died while being adopted. Tell it to go
            # round again rather than lose this restart.
            self._restart_again = True
            return
        self._restart_scope = anyio.CancelScope()
        self.runtime._tg_soon(self._restart_after_backoff, self._restart_scope)

    async def _restart_after_backoff(self, scope: anyio.CancelScope) -> None:
        """Bring a crashed plugin back without waiting for a call: wait out the backoff and
        start a worker (the same path a call takes, under the same lock, so a call arriving
        meanwhile shares this start). A failed start is a failure like a crash: it backs off
        further, until the circuit breaker opens."""
        with scope:
            try:
                while self._wants_restart():
                    self._restart_again = False
                    try:
                        await self._ensure_worker()
                        if not self._restart_again:
                            return
                        continue
                    except PluginUnavailable:
                        return  # the breaker is open or the plugin was disabled meanwhile
                    except CordonError as exc:
                        log.warning("worker.restart_failed", plugin=self.id, error=exc.message)
                    except Exception:
                        # Not a plugin failure (the host could not spawn at all, say): no
                        # retry loop, and never an exception into the runtime's task group.
                        log.exception("worker.restart_failed", plugin=self.id)
                        return
            finally:
                if self._restart_scope is scope:
                    self._restart_scope = None

    async def stop(self) -> None:
        """Stop the worker (it restarts on the next call), and any retired by a reload; a
        start under way is cancelled (its waiters get ``PluginUnavailable``)."""
        self._stopped = True
        if self._restart_scope is not None:
            self._restart_scope.cancel()
            self._restart_scope = None
        if self._starting is not None:
            self._starting.scope.cancel()
        worker = self._worker
        async with anyio.create_task_group() as tg:
            for old in list(self._retiring):
                tg.start_soon(old.stop)
            if worker is not None:
                tg.start_soon(worker.stop)
        if self.state not in ("disabled", "discovered"):
            self.state = "stopped"

    async def reload(self) -> None:
        """Hot reload: see :meth:`Runtime.reload`."""
        self._stopped = False
        async with self._reload_lock:
            manifest = load_manifest(self.manifest.directory)
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

    def reset(self) -> None:
        """Close the circuit breaker and forget past crashes."""
        self._breaker_until = None
        self._crash_times.clear()
        self._failures = 0
        self._backoff_until = 0.0
        if self.state == "broken":
            self.state = "stopped" if self._starts else "discovered"
        log.info("breaker.reset", plugin=self.id)

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
            try:
                proc = psutil.Process(worker.pid)
                times = proc.cpu_times()
                cpu = times.user + times.system
                rss = proc.memory_info().rss
            except psutil.Error:
                pass
        last = self._exits[-1] if self._exits else None
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
        )


def _middleware_output_problem(phase: str, request: dict[str, Any], out: Any) -> str | None:
    if not isinstance(out, dict):
        return f"returned {type(out).__name__}, not an object"
    if phase == "after_response":
        return None if "result" in out else "returned a response without 'result'"
    if "arguments" not in out:
        return "returned a request without 'arguments'"
    for key in ("plugin", "name", "kind"):
        if key in out and out[key] != request[key]:
            return f"may change only the arguments, but changed {key!r}"
    return None


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


class Runtime:
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
        #: Every contribution of every loaded plugin; routing by name goes through it.
        self.registry = Registry(self)

    # -- context management ---------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
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
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self.log_sink.run_reporter)
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

    async def load(self, path: str | os.PathLike[str]) -> PluginHandle:
        """Read a plugin's manifest (importing nothing from it) and register it.

        Its worker starts on first use, or now when the plugin asks for eager activation.
        """
        if self._tg is None:
            raise RuntimeError("the runtime is not running (use `async with Runtime()`)")
        manifest = load_manifest(path)
        check_cordon_compat(manifest, CORDON_VERSION)
        return await self._load_manifest(manifest)

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

    async def _load_manifest(self, manifest: Manifest) -> PluginHandle:
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
        )
        handle = PluginHandle(self, manifest, settings, perms, host_api)
        if not settings.enabled:
            handle.state, handle.state_reason = "disabled", "enabled = false in the config"
        self._plugins[manifest.id] = handle
        await self._emit("cordon.plugin.loaded", {"plugin": manifest.id})
        # After its own "loaded" event: a plugin declaring cordon.* is not started by that.
        await handle._sync_subscription()
        eager = handle.settings.activate == "eager" or manifest.activate == "eager"
        if eager and settings.enabled:
            await handle._ensure_worker()
        return handle

    async def load_all(self, *, entry_points: bool = True) -> LoadReport:
        """Load every plugin discovery finds in ``[runtime] plugin-dirs`` (and, unless
        ``entry_points=False``, installed ``cordon.plugins`` entry points), dependencies
        first. A broken plugin — unreadable source, bad manifest, duplicate id, missing or
        incompatible dependency, failed eager start — is reported with its reason and never
        stops the others (its dependents are reported as blocked)."""
        report = LoadReport()
        found = discover(self.config.runtime.plugin_dirs, entry_points=entry_points)
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
        for pid in order:
            if pid not in manifests:
                continue
            if pid in self._plugins:
                report.skipped.append(pid)
                continue
            manifest = manifests[pid]
            blocker = next((d for d in sorted(manifest.requires) if d in broken), None)
            if blocker is not None:
                err = BlockedByDependency(
                    plugin=pid, dependency=blocker, chain=[pid, blocker], reason=broken[blocker]
                )
                broken[pid] = err.message
                report.failed.append(LoadFailure(pid, manifest.directory, err.message, err))
                continue
            try:
                await self._load_manifest(manifest)
            except CordonError as exc:
                broken[pid] = exc.message
                report.failed.append(LoadFailure(pid, manifest.directory, exc.message, exc))
                log.error("plugin.load_failed", plugin=pid, error=exc.message)
                continue
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

        await watch(self, plugin_ids, **kw)

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

    # -- routed calls: registry + middleware ----------------------------------------------

    async def invoke(
        self,
        target: str,
        arguments: Any = None,
        *,
        kind: str = "tool",
        timeout: float | None = None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Any:
        """Call ``target`` (``plugin.name``, or a name only one plugin offers) through the
        middleware chain: every ``before_request`` middleware in ``middleware-order``, the
        handler, then every ``after_response`` middleware in reverse. Starts lazy workers
        on first use. Raises :class:`AmbiguousContribution` for a clash between plugins,
        :class:`MiddlewareFailed` when a fail-closed middleware fails."""
        handle, name = self.registry.resolve(target, kind)
        request: dict[str, Any] = {
            "plugin": handle.id,
            "name": name,
            "kind": kind,
            "arguments": arguments if arguments is not None else {},
        }
        chain = await self._middleware_chain() if kind != "middleware" else []
        before = [m for m in chain if m[1].options.get("phase") != "after_response"]
        after = [m for m in chain if m[1].options.get("phase") == "after_response"]
        for mw_handle, mw in before:
            out = await self._run_middleware(mw_handle, mw, "before_request", request, None)
            if out is not None:
                request = {**request, "arguments": out["arguments"]}
        result = await handle.call(
            name, request["arguments"], kind=kind, timeout=timeout, on_progress=on_progress
        )
        response: dict[str, Any] = {"result": result}
        for mw_handle, mw in reversed(after):
            out = await self._run_middleware(mw_handle, mw, "after_response", request, response)
            if out is not None:
                response = {"result": out["result"]}
        return response["result"]

    async def call_tool(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a tool by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="tool", **kw)

    async def run_command(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a command by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="command", **kw)

    async def call_provider(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a provider by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="provider", **kw)

    async def _middleware_chain(self) -> list[tuple[PluginHandle, ContributionInfo]]:
        """Every enabled plugin's middleware: plugins in ``middleware-order``, then the rest
        by id; within a plugin by declared priority (highest first), then name. A plugin
        whose middleware is only declared (worker never ran) is started to learn phases."""
        order = self.config.runtime.middleware_order
        rank = {pid: i for i, pid in enumerate(order)}
        handles = sorted(
            (h for h in self._plugins.values() if h.settings.enabled),
            key=lambda h: (rank.get(h.id, len(order)), h.id),
        )
        chain: list[tuple[PluginHandle, ContributionInfo]] = []
        for h in handles:
            entries = [c for c in plugin_contributions(h) if c.kind == "middleware"]
            if entries and entries[0].source == "manifest":
                try:
                    await h._ensure_worker()
                except CordonError as exc:
                    self._middleware_failed(h, entries[0].name, "before_request", exc)
                    continue
                entries = [c for c in plugin_contributions(h) if c.kind == "middleware"]
            entries.sort(key=lambda c: (-int(c.options.get("priority", 0) or 0), c.name))
            chain += [(h, c) for c in entries]
        return chain

    async def _run_middleware(
        self,
        handle: PluginHandle,
        mw: ContributionInfo,
        phase: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one middleware; its output, or ``None`` when skipped (fail-open)."""
        args: dict[str, Any] = {"request": request}
        if response is not None:
            args["response"] = response
        try:
            out = await handle.call(mw.name, args, kind="middleware")
        except CordonError as exc:
            self._middleware_failed(handle, mw.name, phase, exc)
            return None
        problem = _middleware_output_problem(phase, request, out)
        if problem is not None:
            self._middleware_failed(handle, mw.name, phase, problem)
            return None
        assert isinstance(out, dict)
        return out

    def _middleware_failed(
        self, handle: PluginHandle, name: str, phase: str, why: CordonError | str
    ) -> None:
        reason = f"{type(why).__name__}: {why.message}" if isinstance(why, CordonError) else why
        if handle.settings.middleware_policy == "fail-closed":
            err = MiddlewareFailed(plugin=handle.id, middleware=name, phase=phase, reason=reason)
            if isinstance(why, CordonError):
                raise err from why
            raise err
        log.error(
            "middleware.skipped", plugin=handle.id, middleware=name, phase=phase, reason=reason
        )

    def reset(self, plugin_id: str) -> None:
        """Close a plugin's circuit breaker (an operator decision)."""
        self.get(plugin_id).reset()

    def stats(self) -> dict[str, PluginStats]:
        return {pid: handle.stats() for pid, handle in self._plugins.items()}

    # -- workers --------------------------------------------------------------------------

    def _scratch_dir(self, plugin_id: str) -> Path:
        assert self.state_dir is not None
        path = self.state_dir / "scratch" / plugin_id
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _plugin_output(self, plugin_id: str, line: bytes) -> None:
        # The worker's raw stderr is plugin output: redacted and rate-limited like its logs.
        if self.log_sink is not None:
            self.log_sink.plugin_output(plugin_id, line)

    async def _run_worker(
        self, worker: WorkerProcess, *, task_status: anyio.abc.TaskStatus[WorkerProcess]
    ) -> None:
        """A worker's whole life, then its cgroup's end: whatever it left in the group (a
        child that left its process group) is killed, and the group removed."""
        try:
            await worker.run(task_status=task_status)
        finally:
            self._cgroup_why.pop(worker, None)
            group = self._cgroups.pop(worker, None)
            if group is not None:
                with anyio.CancelScope(shield=True):
                    await group.destroy()

    def _new_worker(
        self, handle: PluginHandle, manifest: Manifest | None = None, *, spare: bool = True
    ) -> WorkerProcess:
        """A worker wired for ``manifest``: a claimed warm spare when one waits (and
        ``spare``), else a new one that :meth:`_start_worker` will spawn."""
        s = handle.settings
        m = manifest if manifest is not None else handle.manifest
        spare_worker = self._take_spare() if spare else None
        group: WorkerCgroup | None = None
        placed = False
        why = f"unavailable: {self.cgroups.why}"
        if spare_worker is not None and spare_worker in self._cgroups:
            # The spare sits in its own group since its spawn: give it this plugin's limits.
            group, placed = self._cgroups[spare_worker], True
            try:
                group.limit(m.id, memory=s.memory, processes=s.processes)
            except OSError as exc:
                group.joined = False
                group.why_not = f"unavailable: cannot set the plugin's limits: {exc.strerror}"
        elif self.cgroups.available:
            try:
                group = self.cgroups.create(m.id, memory=s.memory, processes=s.processes)
            except OSError as exc:
                why = f"unavailable: cannot create the worker's group: {exc.strerror or exc}"
                log.warning("cgroup.unavailable", plugin=m.id, why=why)
        params = InitializeParams(
            protocol=PROTOCOL_VERSION,
            plugin_id=m.id,
            plugin_dir=str(Path(m.directory).resolve()),
            entry=f"{m.entry_module}:{m.entry_attr}",
            scratch_dir=str(self._scratch_dir(m.id)),
            limits=Limits(
                memory=s.memory,
                cpu_seconds=math.ceil(s.cpu_time) if s.cpu_time else None,
                open_files=s.open_files,
                file_size=s.file_size,
                processes=s.processes,
            ),
            sandbox=SandboxPolicy(
                mode=s.sandbox, fs_read=list(s.fs_read), fs_write=list(s.fs_write)
            ),
            max_frame=s.max_message or DEFAULT_MAX_FRAME,
            host_pid=os.getpid(),
            faults=self.enable_faults,
        )
        wiring: dict[str, Any] = {
            "plugin_id": m.id,
            "params": params,
            "on_host_request": handle.host_api.handle,
            "on_host_notification": handle.host_api.notify,
            "on_stderr": functools.partial(self._plugin_output, m.id),
            "exit_probe": group.exit_reason if group is not None else None,
            "place": group.move_in if group is not None and not placed else None,
        }
        if spare_worker is not None:
            spare_worker.claim(**wiring)
            worker = spare_worker
        else:
            worker = WorkerProcess(python=self._python, **wiring)
        worker.host_requests_max = s.host_requests
        worker.host_request_bytes_max = s.host_request_memory
        if group is not None:
            self._cgroups[worker] = group
        else:
            self._cgroup_why[worker] = why
        return worker

    def _is_claimed_spare(self, worker: WorkerProcess) -> bool:
        return worker in self._claimed_spares

    async def _start_worker(self, worker: WorkerProcess) -> None:
        """Bring a worker from :meth:`_new_worker` up to initialized: a claimed spare is
        already running, a new one is spawned. Raises what the start met."""
        if self._spares_wanted:
            # Whichever it was, the pool is now one short (or was empty): refill it.
            self._tg_soon(self._fill_spares)
        if worker in self._claimed_spares:
            self._claimed_spares.discard(worker)
            await worker.ready()
        else:
            await self._tg_start(functools.partial(self._run_worker, worker))

    # -- warm spares ----------------------------------------------------------------------

    def _take_spare(self) -> WorkerProcess | None:
        while self._spares:
            spare = self._spares.pop()
            if spare.alive and spare.spare and not spare.terminated():
                self._claimed_spares.add(spare)
                return spare
        return None

    async def _fill_spares(self) -> None:
        """Start spares until ``warm-workers`` wait (one fill at a time). A spare that fails
        to start is logged and not retried here: the next claim tries again."""
        if self._filling or self._closing:
            return
        self._filling = True
        try:
            while not self._closing and len(self._spares) < self._spares_wanted:
                assert self.state_dir is not None
                group: WorkerCgroup | None = None
                if self.cgroups.available:
                    # Made and joined now, overlapping the migration with the spare's start;
                    # limited at claim (see _new_worker).
                    with contextlib.suppress(OSError):
                        group = self.cgroups.create("spare", memory=None, processes=None)
                spare = WorkerProcess(
                    plugin_id="(spare)",
                    params=None,
                    python=self._python,
                    home=str(self.state_dir / "scratch"),
                    exit_probe=group.exit_reason if group is not None else None,
                    place=group.move_in if group is not None else None,
                )
                if group is not None:
                    self._cgroups[spare] = group
                try:
                    await self._tg_start(functools.partial(self._run_worker, spare))
                except CordonError as exc:
                    log.warning("spare.failed", error=exc.message)
                    return
                # Appended even if the runtime began closing meanwhile: leaving its task
                # group kills whatever is still running.
                self._spares.append(spare)
                log.debug("spare.ready", pid=spare.pid)
                self._spare_added.set()
                self._spare_added = anyio.Event()
        finally:
            self._filling = False
