"""A plugin's worker over time: starting one (shared by every caller waiting for it, run
in the runtime's task group), launching and adopting it (the same path a reload uses),
watching it (health pings, RSS, idle stop: the rules in ``_sampler``, whose one pass for
the runtime calls back here), counting its exit, restarting it after a backoff
behind a circuit breaker, and stopping.

:class:`PluginLifecycle` is a mixin of :class:`~cordon.runtime._supervise._handle.PluginHandle`
(which owns the state it works on, made in its ``__init__``): kept apart from the calls so each
half reads on its own; one class at run time, so every attribute stays where it was.
"""

from __future__ import annotations

import copy
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import structlog

from cordon.protocol import (
    CordonError,
    PluginUnavailable,
    WorkerCrashed,
)

from ._worker import QUOTA_REASONS, ExitInfo, WorkerProcess

if TYPE_CHECKING:
    from .._settings._config import PluginSettings
    from .._settings._manifest import Manifest
    from ._handle import PluginHandle
    from ._host import PluginHost

__all__ = [
    "ACTIVATE_TIMEOUT",
    "EXIT_HISTORY",
    "PluginLifecycle",
    "restart_backoff",
]

log = structlog.get_logger("cordon")

#: on_activate hooks get this long; bounded so a hanging hook cannot wedge the first call.
ACTIVATE_TIMEOUT: Final = 30.0
#: Exit reasons remembered per plugin for PluginUnavailable and stats.
EXIT_HISTORY: Final = 10


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


class PluginLifecycle:
    """Start, watch, restart and stop a plugin's worker (a mixin of
    :class:`~cordon.runtime._supervise._handle.PluginHandle`)."""

    if TYPE_CHECKING:
        # The handle's state, made in PluginHandle.__init__ (declared for the type checker).
        runtime: PluginHost
        manifest: Manifest
        settings: PluginSettings
        id: str
        state: str
        state_reason: str | None
        sandbox: dict[str, str]
        cgroup: str
        contributions: list[Any]
        restarts: int
        crashes: int
        _worker: WorkerProcess | None
        _start_lock: anyio.Lock
        _crash_times: deque[float]
        _exits: deque[ExitInfo]
        _breaker_until: float | None
        _backoff_until: float
        _failures: int
        _exit_kinds: dict[WorkerProcess, str]
        _starts: int
        _active_calls: dict[WorkerProcess, int]
        _last_call: float
        _retiring: set[WorkerProcess]
        _starting: _Start | None
        _restart_scope: anyio.CancelScope | None
        _stopped: bool
        _unloaded: bool
        _restart_again: bool

        async def _sync_subscription(self) -> None: ...

    # -- starting -------------------------------------------------------------------------

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
        # The handle is this object: PluginLifecycle is only ever a PluginHandle's base.
        handle = cast("PluginHandle", self)
        worker = self.runtime._new_worker(handle, manifest)
        # Activation rides behind initialize (a claimed spare reads this once it runs again:
        # not before this task's next await).
        worker.activate_early = True
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
                worker = self.runtime._new_worker(handle, manifest, spare=False)
                worker.activate_early = True
        try:
            if worker.init_result is None:
                await self.runtime._start_worker(worker)
            log.info("worker.started", plugin=self.id, pid=worker.pid)
            with anyio.fail_after(ACTIVATE_TIMEOUT):
                await worker.activate()
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
        # Its idle time counts from now, not from the last call to the worker before it (the
        # call that started this one is not counted in yet).
        self._last_call = time.monotonic()
        if worker.exit is not None:
            # It died while being started: the listeners were called before they were added.
            self._exited(worker)
        else:
            worker.exit_listeners.append(self._exited)
            # Health, RSS and idleness are watched by the runtime's one pass over all workers.
            self.runtime._sampler.supervise(worker, cast("PluginHandle", self))
        await self._sync_subscription()
        await self.runtime._emit("cordon.plugin.started", {"plugin": self.id, "pid": worker.pid})

    # -- supervision ----------------------------------------------------------------------

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

    def _idle_due(self, worker: WorkerProcess, now: float) -> float | None:
        """For the fleet pass: when ``worker`` may be stopped for idleness (``None``: never,
        it is not the serving worker or there is no idle-timeout). A call in flight puts it
        off: its end moves ``_last_call``, so asking again one timeout later is never late."""
        timeout = self.settings.idle_timeout
        if timeout <= 0 or self._worker is not worker:
            return None
        if self._active_calls.get(worker):
            return now + timeout
        return self._last_call + timeout

    async def _stop_idle(self, worker: WorkerProcess) -> None:
        """Stop a worker the fleet pass found idle past ``idle-timeout`` (the next call
        starts another)."""
        timeout = self.settings.idle_timeout
        busy = self._active_calls.get(worker) or time.monotonic() - self._last_call < timeout
        if self._worker is not worker or busy:
            # A call came in since the pass looked: the pass asks again when it is due.
            self.runtime._sampler.supervise(worker, cast("PluginHandle", self))
            return
        log.info("worker.idle_stop", plugin=self.id, pid=worker.pid, idle=timeout)
        # Stopped as far as callers can tell: the next call starts a new worker.
        self.state, self.state_reason = "stopped", f"idle for {timeout} s"
        await worker.stop()

    def _exited(self, worker: WorkerProcess) -> None:
        """An exit listener (after :meth:`_count_exit`): the rest of the exit's handling —
        logs, events, a restart — runs as a task of the runtime, as the per-worker watcher
        that used to wait for the exit did."""
        self.runtime._sampler.forget(worker)
        try:
            self.runtime._tg_soon(self._on_exit, worker)
        except RuntimeError:
            pass  # the runtime has ended: there is nothing left to restart or tell

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

    def reset(self) -> None:
        """Close the circuit breaker and forget past crashes."""
        self._breaker_until = None
        self._crash_times.clear()
        self._failures = 0
        self._backoff_until = 0.0
        if self.state == "broken":
            self.state = "stopped" if self._starts else "discovered"
        log.info("breaker.reset", plugin=self.id)
