"""Per-worker cgroups: a kernel-side memory and task ceiling for a plugin's whole process tree.

rlimits are per process: ``RLIMIT_AS`` bounds each process on its own (a plugin allowed to fork
gets the limit once per child), and ``RLIMIT_NPROC`` is not enforced for uid 0 at all. A cgroup
bounds the *group*: every worker gets its own, with

* ``memory``: the plugin's ``memory`` quota for everything charged to the group (anonymous
  memory, page cache, tmpfs), swap included where swap is accounted. Past it the kernel's OOM
  killer SIGKILLs a process of the group; the host reads the group's ``oom_kill`` counter to
  tell that SIGKILL from any other, so the caller gets ``QuotaExceeded(kind="memory")``.
* ``pids``: ``processes`` + :data:`THREAD_ALLOWANCE` tasks (the kernel counts threads too), so
  a fork bomb stops at the ceiling even as root.

And on the way out the host kills whatever is still in the group, so a child that escaped the
worker's process group (``setsid``) does not outlive it.

Cgroups are a second line, never required: the worker's rlimits, seccomp and the RSS watchdog
do not depend on them. Where the host may not create groups (no delegation, read-only
``/sys/fs/cgroup``, cgroup v2 controllers not enabled for the host's group) cordon reports why
and carries on. Layout: v1 (one hierarchy per controller) is used when it has the controllers,
else the unified v2 hierarchy. Groups live under the host's own group, in one parent per
runtime (``cordon-<pid>-<random>``), removed when the runtime ends.

The host moves the worker in (its pid into each ``cgroup.procs``) off the event loop, right
after the spawn or fork, while the worker starts and locks down; the worker imports nothing of
the plugin until the host says the move is done (``$/placed``, asked for in ``initialize``). A
migration may wait for an RCU grace period (~10-20 ms here, when no other migration ran just
before; back to back they take ~60 µs): overlapped with the worker's own start-up it costs
little, done in the worker's launch sequence it added that to every cold start. The group
itself is made (and limited) before the fork: made after it, on the event loop or in the
mover's thread, it took 0.25 ms off one start's path but slowed 1000 starts at once (every
answer 8-15 s -> 10-28 s, A/B on this loaded box).

Cost per worker, measured here (v1, memory + pids): making the groups and writing the limits
~0.16 ms, the move ~0.06 ms, removing them ~0.16 ms. What the fleet changed: the moves queued
at once are made by one thread in one go (:class:`_Placer`) instead of a pool thread each (up
to 40 threads during a batch start); a new group's OOM counter is not read (it is 0); whether
``memory.memsw.*`` and ``memory.swap.max`` exist is found once, not tried per worker; an
exited worker's group is removed by ``rmdir`` first, reading its members only when that fails
(busy). ``CLONE_INTO_CGROUP`` (start the worker inside its group, no move at all) needs
``clone3`` and cgroup v2: Python's fork/spawn cannot pass it, and this host's memory and pids
controllers are on v1.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio

from cordon.worker._sandbox._probe import cgroup_mounts

from .._settings._units import format_size

__all__ = ["THREAD_ALLOWANCE", "CgroupSupport", "WorkerCgroup"]

#: Tasks a worker needs beyond its processes: the main thread, the sync-tool pool (8 in the
#: worker), and Python's own helper threads, with room to spare. The pids controller cannot
#: tell threads from processes, so this is the slack a fork bomb gets when ``processes > 0``.
THREAD_ALLOWANCE: Final = 32
#: After a worker exits, how long its leftover processes get to die of SIGKILL before the
#: group is left behind (an unkillable task in D state; removed with the runtime's parent).
DRAIN_TIMEOUT: Final = 2.0
#: Poll step while waiting for a killed group to empty: the kernel offers no event for it on
#: v1, and this only runs after a worker has already exited.
_DRAIN_POLL: Final = 0.01
_CONTROLLERS: Final = ("memory", "pids")


def _mounts() -> tuple[dict[str, str], str | None]:
    """``({v1 controller: mount point}, v2 mount point)``. Raises OSError."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for fstype, mount_point, ctrls in cgroup_mounts():
        if fstype == "cgroup2":
            v2 = mount_point
        for c in ctrls:
            if c in _CONTROLLERS:
                v1[c] = mount_point
    return v1, v2


def _own_groups() -> tuple[dict[str, str], str | None]:
    """This process's group path per v1 controller, and its v2 path, from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2: str | None = None
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            hier, _, rest = line.rstrip("\n").partition(":")
            ctrls, _, path = rest.partition(":")
            if hier == "0" and ctrls == "":
                v2 = path
            for c in ctrls.split(","):
                if c in _CONTROLLERS:
                    v1[c] = path
    return v1, v2


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _read_counter(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (memory.events, memory.oom_control, ...)."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


#: ``cordon-<pid namespace inode>-<pid>-<random>``: a pid means something only in its own
#: namespace, and runtimes in other containers may share this hierarchy.
_RUNTIME_GROUP: Final = re.compile(r"cordon-(\d+)-(\d+)-[0-9a-f]{6}")


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def runtime_group_name() -> str:
    return f"cordon-{_pid_namespace()}-{os.getpid()}-{secrets.token_hex(3)}"


def sweep_stale(base: Path) -> list[Path]:
    """Remove the groups a runtime left in ``base`` when it died without closing them (a
    SIGKILLed host): those of a pid of *our* pid namespace that no longer runs, once empty.
    Returns what it removed. A group that still holds a process, whose pid was reused, or
    that belongs to another namespace's runtime is left alone."""
    removed: list[Path] = []
    ours = _pid_namespace()
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _RUNTIME_GROUP.fullmatch(entry.name)
        if found is None or int(found.group(1)) != ours or not entry.is_dir():
            continue
        try:
            os.kill(int(found.group(2)), 0)
            continue  # that runtime is alive (or its pid was reused): not ours to touch
        except ProcessLookupError:
            pass
        except (OSError, OverflowError, ValueError):
            continue
        with contextlib.suppress(OSError):
            for child in entry.iterdir():
                if child.is_dir():
                    child.rmdir()
            entry.rmdir()
            removed.append(entry)
    return removed


def _why(exc: OSError) -> str:
    return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)


class _Placer:
    """Moves workers into their groups from one thread at a time: whoever gets the lock moves
    every pid queued by then in one thread hop (back to back, which keeps the kernel's
    migration fast path warm), and those queued behind find theirs done."""

    def __init__(self) -> None:
        self._queue: list[tuple[WorkerCgroup, int]] = []
        self._lock = anyio.Lock()
        self.batches = 0

    async def place(self, group: WorkerCgroup, pid: int) -> None:
        item = (group, pid)
        self._queue.append(item)
        async with self._lock:
            if not any(queued is item for queued in self._queue):
                return  # moved by the batch before
            batch, self._queue = self._queue, []
            self.batches += 1
            await anyio.to_thread.run_sync(_attach_all, batch)


def _attach_all(batch: list[tuple[WorkerCgroup, int]]) -> None:
    for group, pid in batch:
        group.attach(pid)


@dataclass
class WorkerCgroup:
    """One worker's groups (one per controller on v1, one on v2)."""

    version: str
    #: controller → group directory.
    dirs: dict[str, Path]
    memory: int | None
    tasks: int | None
    _oom_before: int = field(default=0)
    #: Whether the worker was moved in; why not, if it was not.
    joined: bool = False
    why_not: str = ""
    #: The runtime's mover (see :class:`_Placer`); ``None``: a thread of its own.
    placer: _Placer | None = None
    #: Which optional limit files this hierarchy has (found once per runtime).
    optional: dict[str, bool] = field(default_factory=dict)

    def attach(self, pid: int) -> None:
        """Move ``pid`` into every group (blocking: run it in a thread). Never raises: a group
        the worker cannot join is reported (``why_not``), never fatal."""
        try:
            for procs in sorted({d / "cgroup.procs" for d in self.dirs.values()}):
                _write(procs, str(pid))
        except OSError as exc:
            self.why_not = f"unavailable: cannot move the worker in: {_why(exc)}"
            return
        self.joined = True

    def _write_optional(self, path: Path, value: str) -> None:
        """Write a file only some kernels have (swap accounting), trying it once."""
        if self.optional.get(path.name) is False:
            return
        try:
            _write(path, value)
        except FileNotFoundError:
            self.optional[path.name] = False
        else:
            self.optional[path.name] = True

    def _set_limits(self, memory: int | None, processes: int | None, *, fresh: bool) -> None:
        """Write the memory and task limits (``None``: leave unlimited). Raises OSError."""
        tasks = None if processes is None else processes + 1 + THREAD_ALLOWANCE
        mem, pids = self.dirs["memory"], self.dirs["pids"]
        if memory is not None:
            if self.version == "v2":
                _write(mem / "memory.max", str(memory))
                self._write_optional(mem / "memory.swap.max", "0")
            else:
                _write(mem / "memory.limit_in_bytes", str(memory))
                # Only where swap is accounted; the memsw limit may not be below the
                # memory limit, so it is written second.
                self._write_optional(mem / "memory.memsw.limit_in_bytes", str(memory))
        if tasks is not None:
            _write(pids / "pids.max", str(tasks))
        self.memory, self.tasks = memory, tasks
        # A group made just now has killed nothing yet.
        self._oom_before = 0 if fresh else self.oom_kills()

    def limit(self, plugin_id: str, *, memory: int | None, processes: int | None) -> None:
        """Give a spare's group (made without limits) a plugin's limits, and its name where
        the hierarchy allows a rename — only once the spare is in (``joined``): the move,
        in a thread, opens ``cgroup.procs`` by path. Raises OSError (then the limits are not
        all set)."""
        self._set_limits(memory, processes, fresh=False)
        if not self.joined:
            return
        renamed: dict[Path, Path] = {}
        for controller, d in self.dirs.items():
            target = renamed.get(d) or d.with_name(f"{plugin_id}-{d.name.rpartition('-')[2]}")
            if d not in renamed:
                try:
                    d.rename(target)
                except OSError:
                    continue  # only cosmetic: the group works under any name
                renamed[d] = target
            self.dirs[controller] = target

    async def move_in(self, pid: int) -> None:
        """:meth:`attach` off the event loop: a migration may block for a grace period."""
        if self.placer is not None:
            await self.placer.place(self, pid)
        else:
            await anyio.to_thread.run_sync(self.attach, pid)

    def describe(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory {format_size(self.memory)}")
        if self.tasks is not None:
            parts.append(f"{self.tasks} tasks")
        return f"applied ({self.version}: {', '.join(parts) or 'accounting only'})"

    def oom_kills(self) -> int:
        """How many processes of this group the OOM killer has killed."""
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        if self.version == "v2":
            return _read_counter(mem / "memory.events", "oom_kill")
        return _read_counter(mem / "memory.oom_control", "oom_kill")

    def members(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(pids)

    def exit_reason(self, returncode: int | None) -> tuple[str, str] | None:
        """For :class:`WorkerProcess`: a SIGKILL while the OOM counter moved was the memory
        ceiling, not some other killer."""
        if returncode == -signal.SIGKILL and self.oom_kills() > self._oom_before:
            return "memory", (
                f"killed by the kernel's OOM killer at the cgroup limit ({self.memory} bytes)"
            )
        return None

    def kill_all(self) -> None:
        # cgroup v2 (5.14+) kills the group in the kernel: no window between reading a pid
        # and signalling it, in which the pid could be reused by someone else.
        for d in set(self.dirs.values()):
            try:
                _write(d / "cgroup.kill", "1")
                return
            except OSError:
                break
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _remove(self) -> bool:
        """Remove every directory of the group; False when one is still busy (members)."""
        gone = True
        for d in set(self.dirs.values()):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone

    async def destroy(self) -> None:
        """Remove the group; if something is left in it, kill that, wait (bounded) for it to
        empty, and remove it then. Usually the worker was alone and the ``rmdir`` is all."""
        if self._remove():
            return
        with anyio.move_on_after(DRAIN_TIMEOUT):
            while self.members():
                self.kill_all()
                await anyio.sleep(_DRAIN_POLL)
        self._remove()


class CgroupSupport:
    """What this host may do with cgroups, found once per runtime; makes worker groups."""

    def __init__(self, version: str, parents: dict[str, Path], why: str) -> None:
        self.version = version
        #: controller → this runtime's parent group (empty when unavailable).
        self.parents = parents
        #: Why cgroups are not used ("" when they are).
        self.why = why
        self._seq = 0
        self._placer = _Placer()
        self._optional: dict[str, bool] = {}

    @property
    def available(self) -> bool:
        return bool(self.parents)

    @classmethod
    def unavailable(cls, why: str) -> CgroupSupport:
        return cls("none", {}, why)

    @classmethod
    def detect(cls) -> CgroupSupport:
        """Find a hierarchy with memory and pids under this process's own group, and make
        this runtime's parent group in it (the only real test of writability)."""
        try:
            mounts, v2_mount = _mounts()
            own, v2_path = _own_groups()
        except OSError as exc:
            return cls.unavailable(f"cannot read the cgroup layout: {_why(exc)}")
        name = runtime_group_name()
        problems: list[str] = []
        if all(c in mounts and c in own for c in _CONTROLLERS):
            parents: dict[str, Path] = {}
            try:
                for c in _CONTROLLERS:
                    base = Path(mounts[c]) / own[c].lstrip("/")
                    sweep_stale(base)
                    parent = base / name
                    parent.mkdir()
                    parents[c] = parent
            except OSError as exc:
                for p in parents.values():
                    with contextlib.suppress(OSError):
                        p.rmdir()
                problems.append(f"v1: cannot create a group: {_why(exc)}")
            else:
                return cls("v1", parents, "")
        else:
            problems.append("v1: memory and pids controllers not both mounted")
        if v2_mount is not None and v2_path is not None:
            found = cls._detect_v2(Path(v2_mount) / v2_path.lstrip("/"), name)
            if isinstance(found, CgroupSupport):
                return found
            problems.append(f"v2: {found}")
        else:
            problems.append("v2: no unified hierarchy")
        return cls.unavailable("; ".join(problems))

    @classmethod
    def _detect_v2(cls, own: Path, name: str) -> CgroupSupport | str:
        try:
            enabled = (own / "cgroup.subtree_control").read_text().split()
        except OSError as exc:
            return f"cannot read subtree_control: {_why(exc)}"
        missing = [c for c in _CONTROLLERS if c not in enabled]
        if missing:
            try:
                _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
            except OSError as exc:
                # EBUSY: the host's own group holds processes ("no internal processes").
                return (
                    f"{', '.join(missing)} not enabled for {own} and cannot be "
                    f"({_why(exc)}); delegate a group with them to the host"
                )
        sweep_stale(own)
        parent = own / name
        try:
            parent.mkdir()
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in _CONTROLLERS))
        except OSError as exc:
            with contextlib.suppress(OSError):
                parent.rmdir()
            return f"cannot create a group: {_why(exc)}"
        return cls("v2", {c: parent for c in _CONTROLLERS}, "")

    def create(self, plugin_id: str, *, memory: int | None, processes: int | None) -> WorkerCgroup:
        """A new group for one worker of ``plugin_id``, its limits set. Raises OSError."""
        self._seq += 1
        leaf = f"{plugin_id}-{self._seq}"
        dirs: dict[str, Path] = {}
        try:
            if self.version == "v2":
                d = self.parents["memory"] / leaf
                d.mkdir()
                dirs = {c: d for c in _CONTROLLERS}
            else:
                for c in _CONTROLLERS:
                    dirs[c] = self.parents[c] / leaf
                    dirs[c].mkdir()
            group = WorkerCgroup(
                self.version, dirs, None, None, placer=self._placer, optional=self._optional
            )
            group._set_limits(memory, processes, fresh=True)
        except OSError:
            for d in set(dirs.values()):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        return group

    def close(self) -> None:
        """Remove this runtime's parent groups (their workers' groups are gone by now). Never
        raises: it runs on the way out; a group still busy is left for the operator."""
        for parent in set(self.parents.values()):
            for child in parent.glob("*/"):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
