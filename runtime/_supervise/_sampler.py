"""One periodic pass over every worker of a runtime: CPU time for the cpu-time limit's exit
classification, the RSS watchdog, the idle stop, and the health check of the workers that
need one. A single task per runtime, instead of a sampler task, a watcher task and their
timers per worker: an idle worker costs the host a read of two small ``/proc`` files every
``health-interval`` (~25 µs) and nothing else.

What is read, and why it is enough (every figure from the kernel, never from the worker):

* ``/proc/<pid>/stat``: the process state, its CPU time (user + system, all threads) and its
  resident set. One read serves the CPU sample, the RSS watchdog and ``rt.stats()``.
* ``/proc/<pid>/status``, for one number: how many times the worker's main thread — the one
  running its event loop, which answers pings — has gone to sleep of its own accord
  (``voluntary_ctxt_switches``). Exact, unlike the CPU time, which ``stat`` gives in whole
  clock ticks; and unlike the times it was put on a CPU (``schedstat``), not moved by the
  scheduler preempting it (answering one ping is one voluntary sleep, and one or two times
  on a CPU depending on whether the host's wake-up preempted it).

**CPU time** only matters for telling a SIGKILL the kernel sends at the RLIMIT_CPU hard limit
(soft + 1 s) from any other SIGKILL: the host needs one sample at or past the soft limit
before the worker dies. A process cannot burn CPU faster than there are CPUs, so after a
sample of ``c`` seconds the next one is due when the limit could first be reached,
``(limit - c) / CPUs`` later, but never sooner than :data:`CPU_SAMPLE`; once a sample has
reached the limit, the question is settled and sampling stops. The health check's read of
``stat`` is a sample too, so an idle worker with the default 30 s limit costs no read of its
own for it (it was sampled four times a second).

The checks fall due on a grid (a tenth of ``health-interval`` for health, :data:`GRID` for the
rest), so a thousand idle workers cost two wake-ups a second, each checking a hundred.

**Health.** A worker with calls in flight is not pinged: each call has its deadline (a
worker that ignores its cancel is recycled). Nor is one that sent a frame within the last
``health-interval`` (it just proved its loop alive). An idle worker is pinged only when
something in it may have changed since it last answered:

* it has not answered a ping since its last activity (one ping after each quiet-down);
* its main thread has woken and slept again since — anything from a timer firing to a task
  waking — or its CPU time moved (another thread ran);
* the kernel shows it stopped (SIGSTOP, a tracer).

Why this still finds a hung worker: to hang, the loop thread must be somewhere other than its
wait for the channel, and to get there it must wake up and run code — a timer, a task, a
signal handler, a thread handing it work — then block or spin. Blocking is one more
voluntary sleep of the main thread (counted exactly); spinning moves the CPU time. The next
pass sees either and pings, and a worker that does not answer within ``health-timeout`` is
killed as ``unresponsive``, as before. A main thread that has not slept again since it went
back to wait after answering has not woken: it is still waiting for the channel and would
answer the next frame. The one blind spot: code that starts hanging in the very loop
iteration that answered the ping (a timer due within those microseconds), which the next
call's deadline then catches. Where ``/proc/<pid>/status`` has no such count, every idle
worker is pinged every ``health-interval``, as before this pass existed.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc

if TYPE_CHECKING:
    from .._settings._config import PluginSettings
    from ._worker import WorkerProcess

__all__ = ["CPU_SAMPLE", "FleetSampler", "ProcStat", "Supervised", "read_stat", "read_switches"]

#: The shortest time between two CPU samples of a worker near its cpu-time limit: the kernel
#: SIGKILLs one second of CPU after the soft limit, which takes a spinning worker at least
#: 1 / CPUs seconds of wall time (0.5 s here), so a sample lands in between.
CPU_SAMPLE: Final = 0.25
#: Due times are rounded up to this grid, so workers whose checks fall close together are
#: handled in one wake-up of the pass rather than one each (at most 20 wake-ups a second).
GRID: Final = 0.05
#: A worker's health checks are due on a coarser grid, a tenth of its ``health-interval``
#: (0.5 s by default): a thousand idle workers then cost two wake-ups a second, each checking
#: a hundred, and no check is later than a tenth of an interval.
HEALTH_SLOTS: Final = 10
#: A CPU-time sample is never further apart than this, whatever the limit: it bounds how
#: stale ``cpu_seconds`` gets for a worker with a very high limit.
CPU_SAMPLE_MAX: Final = 60.0
#: The most CPUs a worker's threads can burn at once (an upper bound: every CPU).
_CPUS: Final = os.cpu_count() or 1
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_TICK: Final = os.sysconf("SC_CLK_TCK")
#: ``/proc/<pid>/stat`` states of a process that runs no code until someone resumes it.
_STOPPED: Final = frozenset(b"Tt")
#: ... and of one that has ended (not reaped yet): its reaping tells the rest.
_ENDED: Final = frozenset(b"ZXx")


@dataclass(slots=True, frozen=True)
class ProcStat:
    """What one read of ``/proc/<pid>/stat`` says."""

    #: The state letter (``R``, ``S``, ``D``, ``T``, ``Z``, ...) as its byte value.
    state: int
    #: User + system CPU seconds of every thread (in whole clock ticks).
    cpu_seconds: float
    rss_bytes: int

    @property
    def stopped(self) -> bool:
        return self.state in _STOPPED

    @property
    def ended(self) -> bool:
        return self.state in _ENDED


def _read(path: str) -> bytes | None:
    # os.open/os.read: a third of the cost of open().read() (no file object, no buffer).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, CPU time and RSS, or ``None`` when it is gone."""
    data = _read(f"/proc/{pid}/stat")
    if not data:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after
    # the last one. Field n is then fields[n - 3].
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
        return ProcStat(fields[0][0], ticks / _TICK, int(fields[21]) * _PAGE)
    except (IndexError, ValueError):
        return None


_VOLUNTARY: Final = b"\nvoluntary_ctxt_switches:"


def read_switches(pid: int) -> int | None:
    """How many times ``pid``'s main thread has gone to sleep of its own accord (its
    voluntary context switches), or ``None`` (gone, or not reported)."""
    data = _read(f"/proc/{pid}/status")
    if not data:
        return None
    at = data.find(_VOLUNTARY)
    if at < 0:
        return None
    start = at + len(_VOLUNTARY)
    try:
        return int(data[start : data.find(b"\n", start)])
    except ValueError:
        return None


class Supervised(Protocol):
    """What the pass needs of the plugin handle whose worker it supervises."""

    id: str
    settings: PluginSettings
    health_checks: int

    def _idle_due(self, worker: WorkerProcess, now: float) -> float | None:
        """When ``worker`` is next due to be stopped for idleness (``<= now``: now); ``None``
        when it never is (no idle-timeout, or not the serving worker)."""
        ...

    async def _stop_idle(self, worker: WorkerProcess) -> None: ...


class _Entry:
    """One worker as the pass sees it."""

    __slots__ = (
        "confirmed",
        "cpu_due",
        "cpu_limit",
        "due",
        "expect",
        "handle",
        "health_due",
        "idle_due",
        "pinging",
        "seen_activity",
        "stopping",
        "worker",
    )

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.due = math.inf
        self.cpu_limit: float | None = None
        self.cpu_due = math.inf
        self.handle: Supervised | None = None
        self.health_due = math.inf
        self.idle_due = math.inf
        #: ``(voluntary sleeps, cpu seconds)`` after the worker last answered a ping, with no
        #: frame from it since: while both stay the same, it is still waiting on its channel.
        self.confirmed: tuple[int, float] | None = None
        #: The main thread's voluntary sleeps once it has answered a ping and gone back to
        #: wait: the next pass takes ``confirmed`` if that is still the count (else pings).
        self.expect: int | None = None
        #: ``worker.last_activity`` when ``confirmed`` was taken.
        self.seen_activity = -1.0
        self.pinging = False
        self.stopping = False


def _on_grid(t: float, grid: float = GRID) -> float:
    return math.ceil(t / grid) * grid


def _health_due(now: float, interval: float) -> float:
    return _on_grid(now + interval, max(GRID, interval / HEALTH_SLOTS))


def _gone(worker: WorkerProcess) -> bool:
    """Reaped (or never started): its pid may now be someone else's."""
    proc = worker.process
    return worker.exit is not None or proc is None or proc.returncode is not None


class FleetSampler:
    """The runtime's one pass over its workers (see the module docstring). :meth:`run` it in
    the runtime's task group; workers come in through :meth:`watch_cpu` (a worker with a
    cpu-time limit, from its start) and :meth:`supervise` (a plugin's serving worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[WorkerProcess, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._wake = anyio.Event()
        self._sleeping_until = math.inf
        self._tg: anyio.abc.TaskGroup | None = None
        #: Wake-ups that did work, and worker checks made (for tests and benchmarks).
        self.passes = 0
        self.checks = 0
        #: Set (and replaced) after every pass: tests wait on passes, never on time.
        self.passed = anyio.Event()
        #: Whether this kernel reports voluntary switches (else every idle worker is pinged).
        self.switches = read_switches(os.getpid()) is not None

    # -- registration -------------------------------------------------------------------

    def _entry(self, worker: WorkerProcess) -> _Entry:
        entry = self._entries.get(worker)
        if entry is None:
            entry = self._entries[worker] = _Entry(worker)
        return entry

    def watch_cpu(self, worker: WorkerProcess) -> None:
        """Sample ``worker``'s CPU time against its cpu-time limit from now on (its
        ``cpu_seconds``, which the exit classification reads)."""
        limit = worker.params.limits.cpu_seconds
        if limit is None or _gone(worker):
            return
        entry = self._entry(worker)
        entry.cpu_limit = float(limit)
        entry.cpu_due = self._clock()
        self._schedule(entry)

    def supervise(self, worker: WorkerProcess, handle: Supervised) -> None:
        """RSS watchdog, health checks and the idle stop for ``handle``'s worker, until it
        exits."""
        if _gone(worker):
            return
        entry = self._entry(worker)
        entry.handle = handle
        entry.stopping = False
        now = self._clock()
        entry.health_due = _health_due(now, handle.settings.health_interval)
        idle = handle._idle_due(worker, now)
        entry.idle_due = idle if idle is not None else math.inf
        self._schedule(entry)

    def forget(self, worker: WorkerProcess) -> None:
        entry = self._entries.pop(worker, None)
        if entry is not None:
            entry.due = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def _schedule(self, entry: _Entry) -> None:
        due = _on_grid(min(entry.cpu_due, entry.health_due, entry.idle_due))
        if due == entry.due:
            return
        entry.due = due
        if math.isinf(due):
            return
        self._seq += 1
        # Stale heap items (an entry rescheduled since) are skipped when popped.
        heapq.heappush(self._heap, (due, self._seq, entry))
        if due < self._sleeping_until:
            self._wake.set()

    # -- the pass -------------------------------------------------------------------------

    async def run(self) -> None:
        """The pass, until cancelled (with the runtime's task group)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    await self._sleep()
                    self._pass(self._clock())
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _sleep(self) -> None:
        heap = self._heap
        while heap and heap[0][2].due != heap[0][0]:
            heapq.heappop(heap)
        until = heap[0][0] if heap else math.inf
        delay = until - self._clock()
        if delay <= 0:
            return
        self._sleeping_until = until
        self._wake = anyio.Event()
        try:
            with anyio.move_on_after(delay):
                await self._wake.wait()
        finally:
            self._sleeping_until = math.inf

    def _pass(self, now: float) -> None:
        heap = self._heap
        worked = False
        while heap and heap[0][0] <= now:
            due, _, entry = heapq.heappop(heap)
            if entry.due != due:
                continue  # rescheduled or forgotten since
            entry.due = math.inf
            worked = True
            self._check(entry, now)
            if entry.worker in self._entries:
                self._schedule(entry)
        if worked:
            self.passes += 1
            passed, self.passed = self.passed, anyio.Event()
            passed.set()

    def _check(self, entry: _Entry, now: float) -> None:
        worker = entry.worker
        if _gone(worker):
            self.forget(worker)
            return
        self.checks += 1
        assert worker.pid is not None
        stat: ProcStat | None = None
        if entry.cpu_limit is not None and entry.cpu_due <= now:
            stat = read_stat(worker.pid)
            entry.cpu_due = self._sample_cpu(worker, entry.cpu_limit, stat, now)
        handle = entry.handle
        if handle is None:
            return
        settings = handle.settings
        if entry.health_due <= now:
            entry.health_due = _health_due(now, settings.health_interval)
            if worker.alive and not entry.stopping:
                if stat is None:
                    stat = read_stat(worker.pid)
                    if entry.cpu_limit is not None and stat is not None:
                        # The same reading serves as the CPU sample: the next is due later.
                        entry.cpu_due = self._sample_cpu(worker, entry.cpu_limit, stat, now)
                if stat is not None and not stat.ended:
                    self._rss_watchdog(worker, settings.memory, stat)
                    if worker.alive and self._needs_ping(entry, worker, stat, now):
                        self._spawn(self._ping, entry)
        if entry.idle_due <= now:
            idle = handle._idle_due(worker, now)
            entry.idle_due = math.inf if idle is None else idle
            if idle is not None and idle <= now and worker.alive and not entry.stopping:
                entry.stopping = True
                entry.idle_due = math.inf
                self._spawn(handle._stop_idle, worker)

    # -- the parts of a check -------------------------------------------------------------

    @staticmethod
    def _sample_cpu(
        worker: WorkerProcess, limit: float, stat: ProcStat | None, now: float
    ) -> float:
        """Record the worker's CPU time; return when the next sample is due."""
        if stat is None:
            return math.inf
        worker.cpu_seconds = stat.cpu_seconds
        if stat.cpu_seconds >= limit:
            return math.inf  # settled: a SIGKILL from here on is the cpu limit's
        left = (limit - stat.cpu_seconds) / _CPUS
        return now + min(CPU_SAMPLE_MAX, max(CPU_SAMPLE, left))

    @staticmethod
    def _rss_watchdog(worker: WorkerProcess, limit: int | None, stat: ProcStat) -> None:
        if limit and stat.rss_bytes > limit:
            worker.kill_nowait("memory", f"RSS {stat.rss_bytes} bytes over the {limit}-byte limit")

    def _needs_ping(self, entry: _Entry, worker: WorkerProcess, stat: ProcStat, now: float) -> bool:
        """The health rule of the module docstring."""
        if entry.pinging or worker.in_flight:
            return False
        if stat.stopped:
            return True
        interval = entry.handle.settings.health_interval if entry.handle else 0.0
        if worker.last_activity != entry.seen_activity:
            # It said something since it last answered a ping: alive just now, but what it
            # did since is unknown; the next quiet pass asks.
            entry.confirmed = entry.expect = None
            if now - worker.last_activity < interval:
                return False
        if not self.switches:
            return True
        assert worker.pid is not None
        sleeps = read_switches(worker.pid)
        if sleeps is None:
            return True
        if entry.expect is not None:
            # The first pass after a ping: quiet from here if answering it was all it did
            # (the CPU time read now includes the answer's last microseconds).
            answered_only = sleeps == entry.expect
            entry.expect = None
            if answered_only:
                entry.confirmed = (sleeps, stat.cpu_seconds)
                return False
            return True
        return entry.confirmed is None or (sleeps, stat.cpu_seconds) != entry.confirmed

    async def _ping(self, entry: _Entry) -> None:
        worker, handle = entry.worker, entry.handle
        assert handle is not None and worker.pid is not None
        entry.pinging = True
        try:
            before = read_switches(worker.pid) if self.switches else None
            handle.health_checks += 1
            timeout = handle.settings.health_timeout
            if not await worker.ping(timeout):
                if worker.exit is None:
                    worker.kill_nowait("unresponsive", f"no answer to ping within {timeout} s")
                return
            if before is not None:
                # Answering is one more sleep once it goes back to wait; more than that shows
                # at the next pass as a change, and it is asked again.
                entry.expect = before + 1
                entry.seen_activity = worker.last_activity
        finally:
            entry.pinging = False

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        # A ping may take health-timeout and a stop seconds: never inside the pass.
        if self._tg is not None:
            self._tg.start_soon(fn, *args)
