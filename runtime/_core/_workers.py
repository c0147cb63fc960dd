"""Workers for the :class:`~cordon.runtime.Runtime`'s plugins: wiring a new one for a
plugin (its initialize params, limits, sandbox policy, host API callbacks, cgroup, redactor),
claiming a warm spare instead when one waits, spawning it in the runtime's task group and
removing its cgroup when it ends, and keeping ``warm-workers`` spares started. A mixin of
``Runtime``; the plugin handles reach it through
:class:`~cordon.runtime._supervise._host.PluginHost`."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import structlog

from cordon.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    CordonError,
    InitializeParams,
    Limits,
    SandboxPolicy,
)

from .._errors import ConfigError, Problem
from .._packages._errors import NotInstalled
from .._packages._store import installed_at_dir, plugins_root
from .._settings._manifest import Manifest
from .._supervise._cgroup import CgroupSupport, WorkerCgroup
from .._supervise._handle import PluginHandle
from .._supervise._launcher import Launcher
from .._supervise._sampler import FleetSampler
from .._supervise._worker import WorkerProcess

if TYPE_CHECKING:
    from .._hostapi._logsink import LogSink
    from .._settings._config import Config

__all__ = ["WorkerPool"]

log = structlog.get_logger("cordon")

#: Worker starts (spawn or fork, lock-down, the plugin's import, up to initialized) under way
#: at once; the rest wait their turn, first come first served. A start is CPU work (~80 ms of
#: interpreter and imports for a spawn): a thousand at once on two CPUs share them evenly, so
#: the first is ready only when nearly all are (67-84 s for 1000). Two per CPU keep the CPUs
#: busy while one start waits on I/O, and the first plugins answer while the rest start.
START_CONCURRENCY: Final = max(2, 2 * (os.cpu_count() or 1))
#: A start holding its turn longer than this gives it up (and carries on): a plugin whose
#: import sleeps or grinds must not hold back the others' starts. A hello plugin takes
#: ~0.1 s; under a full batch, each of START_CONCURRENCY gets a share of the CPUs.
START_SLOT_LEASE: Final = 1.0
#: The host holds ~4 descriptors per worker (its two channel pipes, stderr, the pidfd).
FDS_PER_WORKER: Final = 4


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (an unprivileged process may;
    the common default soft limit of 1024 stops a host at ~250 workers). Returns the
    ``(soft, hard)`` now in force. Workers are unaffected: each sets its own ``open-files``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("rlimit.nofile_not_raised", soft=soft, hard=hard, error=str(exc))
            return soft, hard
        log.debug("rlimit.nofile_raised", soft=soft, to=hard, workers=hard // FDS_PER_WORKER)
        soft = hard
    return soft, hard


class _Lease:
    """A start's turn: given back once, by the start's end or by its lease's expiry."""

    __slots__ = ("expires", "held", "slots")

    def __init__(self, slots: anyio.Semaphore, expires: float) -> None:
        self.slots = slots
        self.expires = expires
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()


class WorkerPool:
    """New workers, warm spares and their cgroups (a mixin of ``Runtime``)."""

    if TYPE_CHECKING:
        # The runtime's state, made in Runtime.__init__ and __aenter__.
        enable_faults: bool
        config: Config
        state_dir: Path | None
        _explicit_state_dir: Path | None
        log_sink: LogSink | None
        cgroups: CgroupSupport
        _python: str | None
        _closing: bool
        _cgroups: dict[WorkerProcess, WorkerCgroup]
        _cgroup_why: dict[WorkerProcess, str]
        _spares: list[WorkerProcess]
        _claimed_spares: set[WorkerProcess]
        _spares_wanted: int
        _filling: bool
        _spare_added: anyio.Event
        _sampler: FleetSampler
        _start_slots: anyio.Semaphore
        _leases: deque[_Lease]
        _lease_keeper: bool
        _store_resolved: Path | None
        launcher: Launcher | None

        def _tg_soon(self, fn: Callable[..., Any], *args: Any) -> None: ...
        async def _tg_start(self, fn: Callable[..., Any]) -> Any: ...

    def _scratch_dir(self, plugin_id: str) -> Path:
        assert self.state_dir is not None
        path = self.state_dir / "scratch" / plugin_id
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _store_dir(self) -> Path:
        """Where installed plugins live: the state dir this runtime was given, else the
        configured one, even when the runtime keeps its own state in a temp dir (no config
        file): the place ``cordon plugin install`` writes to."""
        if self._explicit_state_dir is not None and self.state_dir is not None:
            return self.state_dir
        # Resolved once per runtime (its config never changes): resolving walks the path a
        # stat per component, and every start asks (~30 µs each, twice per start).
        if self._store_resolved is None:
            self._store_resolved = Path(self.config.runtime.state_dir).expanduser().resolve()
        return self._store_resolved

    def _check_store_unwritable(self, plugin_id: str, fs_write: Sequence[str]) -> None:
        """Refuse an ``fs-write`` grant that reaches the store of installed plugins: their
        version dirs and environments (hard-linked through the uv cache, so one inode is in
        many envs) are shared code, and a plugin able to write there rewrites what other
        plugins run. The store's parts that exist are checked, in both directions."""
        if not fs_write:
            return  # nothing granted: nothing to resolve (most plugins, at every start)
        store = self._store_dir()
        shared = [store / p for p in ("plugins", "envs", "uv-cache")]
        shared = [p.resolve() for p in shared if p.exists()]
        problems = []
        for i, granted in enumerate(fs_write):
            w = Path(granted).resolve()
            hit = next((p for p in shared if p.is_relative_to(w) or w.is_relative_to(p)), None)
            if hit is not None:
                problems.append(
                    Problem(
                        f"plugins.{plugin_id}.fs-write[{i}]",
                        f"{granted!r} reaches {hit}, the installed plugins' code and "
                        "environments (shared by every plugin): grant a narrower path",
                    )
                )
        if problems:
            raise ConfigError(
                f"plugin {plugin_id!r} may not start: an fs-write grant reaches the installed "
                f"plugins under {store}",
                problems=problems,
            )

    def _site_paths(self, m: Manifest, folder: Path) -> list[str]:
        """The environment of the installed version ``m`` was read from (``[]`` for a plugin
        not in the store, or one without dependencies): read from that version's record, so
        a worker of the previous version, still draining, keeps its own. ``folder`` is
        ``m.directory`` resolved."""
        store = self._store_dir()
        if not folder.is_relative_to(plugins_root(store).resolve()):
            # Not in the store: installed_at_dir would find no record either.
            return []
        record = installed_at_dir(store, folder)
        if record is None:
            raise NotInstalled(
                f"plugin {m.id!r} at {m.directory} is not wholly installed (its record or "
                "environment is missing; see the log): reinstall it",
                plugin=m.id,
            )
        return [record.site_packages] if record.site_packages else []

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
        # Before a spare is claimed: a broken install or an unsafe grant refuses here with
        # nothing to undo.
        self._check_store_unwritable(m.id, s.fs_write)
        folder = Path(m.directory).resolve()
        site_paths = self._site_paths(m, folder)
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
            plugin_dir=str(folder),
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
            site_paths=site_paths,
        )
        wiring: dict[str, Any] = {
            "plugin_id": m.id,
            "params": params,
            "on_host_request": handle.host_api.handle,
            "on_host_notification": handle.host_api.notify,
            "on_stderr": functools.partial(self._plugin_output, m.id),
            "exit_probe": group.exit_reason if group is not None else None,
            "place": group.move_in if group is not None and not placed else None,
            # The operator's [runtime] redact-patterns apply to what the plugin sends back
            # (error messages, stderr tails), not only to its logs.
            "redactor": self.log_sink.redactor if self.log_sink else None,
        }
        if spare_worker is not None:
            spare_worker.claim(**wiring)
            worker = spare_worker
        else:
            worker = WorkerProcess(python=self._python, **wiring)
            worker.launcher = self.launcher
            worker.cpu_watch = self._sampler.watch_cpu
        worker.host_requests_max = s.host_requests
        worker.host_request_bytes_max = s.host_request_memory
        worker.max_frame_values = s.max_frame_values
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
        if self._spares_wanted and not self._filling:
            # Whichever it was, the pool is now one short (or was empty): refill it. Not a
            # task per start while a fill runs: that fill sees the shortfall itself.
            self._tg_soon(self._fill_spares)
        async with self._start_turn():
            if worker in self._claimed_spares:
                self._claimed_spares.discard(worker)
                await worker.ready()
            else:
                await self._tg_start(functools.partial(self._run_worker, worker))

    @contextlib.asynccontextmanager
    async def _start_turn(self) -> AsyncIterator[None]:
        """One of :data:`START_CONCURRENCY` turns to start a worker, waited for in order and
        held until the start ends or for :data:`START_SLOT_LEASE`, whichever comes first."""
        slots = self._start_slots
        try:
            # A free turn is free of waiters (a release hands it to the first waiter): take it
            # without acquire's two loop passes (its checkpoints), once per start.
            slots.acquire_nowait()
        except anyio.WouldBlock:
            await slots.acquire()
        lease = _Lease(slots, anyio.current_time() + START_SLOT_LEASE)
        try:
            # Every lease is as long, so the queue is in expiry order: one keeper task for
            # all of them, instead of a timer task (and its cancellation) per start.
            self._leases.append(lease)
            if not self._lease_keeper:
                self._tg_soon(self._keep_leases)
                self._lease_keeper = True
            yield
        finally:
            lease.give_back()

    async def _keep_leases(self) -> None:
        """Give back each turn still held at its lease's end; return once none is held."""
        leases = self._leases
        try:
            while leases:
                head = leases[0]
                if not head.held:
                    leases.popleft()
                    continue
                wait = head.expires - anyio.current_time()
                if wait > 0:
                    await anyio.sleep(wait)  # the lease's own time, not a poll
                    continue
                leases.popleft()
                head.give_back()
        finally:
            self._lease_keeper = False

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
                spare.launcher = self.launcher
                spare.cpu_watch = self._sampler.watch_cpu
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
