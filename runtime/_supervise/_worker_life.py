"""A worker process's life, seen from the host: spawn (its pipes and environment), the hello
and initialize phases, placement in its cgroups, a warm spare's claim, CPU sampling, the
reaping (the exit classified by ``_worker_exit``), and the
escalating stop.

None of this is on a call's path: a call goes through ``_worker_channel`` and, on asyncio,
``_worker_reader``. This part starts their tasks and, when the process ends, fails the calls
still in flight with why.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, cast

import anyio
import anyio.abc
import msgspec
import psutil
import structlog

from cordon.protocol import (
    SUPPORTED_PROTOCOLS,
    CordonError,
    IncompatibleProtocol,
    InitializeParams,
    InitializeResult,
    InternalError,
    Limits,
    WorkerCrashed,
    negotiate,
)

from .._hostapi._redact import Redactor
from ._launcher import LaunchedProcess, Launcher, SpawnLauncher, StdioPipes
from ._worker_exit import ExitInfo, _classify
from ._worker_handshake import _WorkerHandshake
from ._worker_state import (
    ExitProbe,
    HostNotificationHandler,
    HostRequestHandler,
    StderrHandler,
)

if TYPE_CHECKING:
    from ._worker import WorkerProcess

__all__ = ["HELLO_TIMEOUT", "INITIALIZE_TIMEOUT"]

log = structlog.get_logger("cordon")

#: The worker's first frame must arrive within this: interpreter start plus msgspec import is
#: ~50 ms here, but a 2-core CI box under a parallel test load can be 100x slower.
HELLO_TIMEOUT: Final = 15.0
#: Lock-down plus plugin import; bounded so a plugin that hangs at import cannot wedge load().
INITIALIZE_TIMEOUT: Final = 30.0
#: Graceful stop: how long deactivate hooks may run before we stop asking.
DEACTIVATE_TIMEOUT: Final = 5.0
#: After stdin closes, a healthy worker exits within milliseconds.
STDIN_CLOSE_WAIT: Final = 2.0
#: SIGTERM grace before SIGKILL.
TERM_WAIT: Final = 2.0
#: SIGKILL cannot be ignored; this only bounds a kernel that is slow to reap.
KILL_WAIT: Final = 5.0
#: How often a worker on its own (no runtime's ``cpu_watch``) samples its CPU time, so that a
#: SIGKILL the kernel sends at the RLIMIT_CPU hard limit (soft + 1 s) can be told from any
#: other SIGKILL. Under a runtime, ``_sampler`` does it for the whole fleet in one pass.
CPU_SAMPLE: Final = 0.25
#: Only the worker's own pipes and these variables cross into it (CORDON_LOOP_SHORTCUTS=0:
#: the worker's loop on the public asyncio API too, see worker/_loopfast.py).
ENV_ALLOWLIST: Final = ("LANG", "LC_ALL", "TZ", "CORDON_LOOP_SHORTCUTS")
#: glibc gives each new thread its own malloc arena, reserving 64 MiB of address space that
#: RLIMIT_AS counts: under the default 256 MiB limit four sync-tool threads exhausted it
#: ("can't start new thread"). Python holds the GIL anyway, so one arena costs nothing
#: measurable. glibc reads it once, at process start: it must be in the worker's env.
MALLOC_ARENA_MAX: Final = "1"
#: Blocks up to 4 MiB from the heap, and up to 8 MiB of free heap kept: a large frame's
#: buffers (read, joined, decoded, encoded) are then reused rather than mmap'd fresh and
#: page-faulted in each time. Measured on a 1 MiB echo: worker CPU 2.9 -> 1.3 ms a call;
#: a worker that never sees a large frame is unchanged (small blocks come from the heap
#: anyway), one that did keeps up to ~8 MiB more. glibc reads these at process start.
MALLOC_TUNING: Final = {"MALLOC_MMAP_THRESHOLD_": "4194304", "MALLOC_TRIM_THRESHOLD_": "8388608"}
#: The launcher of a worker nobody gave one (tests, tools): a plain spawn.
_SPAWN: Final = SpawnLauncher()


class _WorkerLife(_WorkerHandshake):
    """The process: spawn, handshake, claim, reap, stop (a mixin of ``WorkerProcess``, the
    only class it is part of: hence the casts where it hands itself out as one)."""

    #: What starts the process (the runtime's, set before ``run``); ``None``: a spawn.
    launcher: Launcher | None = None
    #: The started process (``run`` sets it): pid, pidfd, stderr; reaped through its pidfd.
    process: LaunchedProcess | None

    @property
    def alive(self) -> bool:
        """Can take new calls: not exited, not stopping, and not condemned (a kill was sent;
        the new call belongs on the replacement, not on a process about to die)."""
        return self.exit is None and not self._stopping and self._kill_reason is None

    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
        env.setdefault("LANG", "C.UTF-8")
        env["PATH"] = "/usr/bin:/bin"
        # The worker points these at its own scratch dir once it knows it (a spare does not
        # yet at spawn).
        env["HOME"] = self._home
        env["TMPDIR"] = self._home
        env["CORDON_HOST_PID"] = str(os.getpid())
        env["MALLOC_ARENA_MAX"] = MALLOC_ARENA_MAX
        env.update(MALLOC_TUNING)
        env.update(self._extra_env)
        return env

    async def run(self, *, task_status: anyio.abc.TaskStatus[WorkerProcess]) -> None:
        """Run the worker for its whole life. ``task_status.started`` fires once it is
        initialized; a failed handshake raises out of ``TaskGroup.start`` instead."""
        self._attach_loop()
        try:
            pipes = StdioPipes()
        except OSError as exc:  # out of fds (EMFILE/ENFILE): nothing was made
            raise InternalError(f"cannot start worker for {self.plugin_id!r}: {exc}") from exc
        launcher = self.launcher if self.launcher is not None else _SPAWN
        try:
            process = await launcher.start(self._argv, env=self._env(), cwd=self._home, pipes=pipes)
        except OSError as exc:
            pipes.close_all()
            raise InternalError(f"cannot start worker for {self.plugin_id!r}: {exc}") from exc
        except BaseException:
            pipes.close_all()
            raise
        # The channel's ends are the worker's from here (its reader and writer close them).
        self._wfd, self._rfd = pipes.wfd, pipes.rfd
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self.process = process
        self.pid = process.pid
        startup_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._pump_stdout)
                tg.start_soon(self._pump_stderr)
                tg.start_soon(self._writer)
                tg.start_soon(self._timer)
                tg.start_soon(self._reap)
                started = False
                try:
                    if self._params is not None and self._own_command:
                        # Our own worker command, the host's code: it speaks our protocol, so
                        # initialize goes now, into its stdin, and its launch reads it the
                        # moment it is ready to, rather than a round trip after its hello.
                        # Only the worker can read it: a zygote closed its copies of the pipes
                        # before it answered the fork request (initialize names the plugin; a
                        # fork request never does).
                        self._send_initialize(max(SUPPORTED_PROTOCOLS))
                    # Placed while the worker starts (its import waits for it: $/placed), if
                    # we know where already (a spare may: its group gets the plugin's limits
                    # at claim); otherwise on claim.
                    placing = self._place is not None
                    if placing:
                        tg.start_soon(self._run_place, process.pid)
                    await self._hello_phase()
                    if self._params is None:
                        # A warm spare: ready to be claimed; the rest starts on claim().
                        task_status.started(cast("WorkerProcess", self))
                        started = True
                        await self._claimed.wait()  # set by claim(), or by the exit (_reap)
                    if not placing:
                        tg.start_soon(self._run_place, process.pid)
                    if self.params.limits.cpu_seconds is not None:
                        tg.start_soon(self._sample_cpu)
                    await self._initialize_phase()
                except Exception as exc:
                    startup_error = exc
                    with anyio.CancelScope(shield=True):
                        self.kill_nowait("handshake", str(exc))
                        with anyio.move_on_after(KILL_WAIT):
                            await self.exited.wait()
                else:
                    self._ready.set()
                    if not started:
                        task_status.started(cast("WorkerProcess", self))
                    await self.exited.wait()
                tg.cancel_scope.cancel()
        finally:
            self._startup_failure = startup_error
            self._ready.set()
            with anyio.CancelScope(shield=True):
                if self.exit is None:
                    self.kill_nowait("shutdown")
                    await self._reap()
                await self._close_pipes()
        # A spare's start-up failure belongs to whoever claimed it (see ready()), not to the
        # task group that runs it.
        if startup_error is not None and not started:
            raise startup_error

    @property
    def params(self) -> InitializeParams:
        if self._params is None:
            raise RuntimeError("a warm spare has no plugin yet (claim it first)")
        return self._params

    def terminated(self) -> bool:
        """Has the process ended — even if not yet reaped (``exit`` is set only after the
        reap and a grace for its last stderr)? Asked of a spare before it is handed out."""
        if self.exit is not None or self.process is None:
            return self.exit is not None
        # A pidfd turns readable when the process terminates, zombie or not.
        return self.process.terminated()

    @property
    def launched_by(self) -> str | None:
        """``zygote`` or ``spawn``: what started this worker (``None`` before it started)."""
        return self.process.launcher if self.process is not None else None

    @property
    def spare(self) -> bool:
        """A warm spare nobody has claimed yet."""
        return self._params is None

    def claim(
        self,
        *,
        plugin_id: str,
        params: InitializeParams,
        on_host_request: HostRequestHandler | None = None,
        on_stderr: StderrHandler | None = None,
        on_host_notification: HostNotificationHandler | None = None,
        exit_probe: ExitProbe | None = None,
        place: Callable[[int], Awaitable[None]] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """Give a warm spare its plugin: it is placed, initialized (limits, lock-down, the
        plugin's import) and activated like any worker. Await :meth:`ready` for the outcome."""
        if self._params is not None:
            raise RuntimeError("this worker already has a plugin")
        self.plugin_id = plugin_id
        self._params = params
        self._on_host_request = on_host_request
        self._on_host_notification = on_host_notification
        self._on_stderr = on_stderr
        if redactor is not None:
            self.redactor = redactor
        if exit_probe is not None:
            self._exit_probe = exit_probe
        if place is not None:
            if self._place is not None:
                raise RuntimeError("this spare was already placed at spawn")
            self._place = place
        self.max_frame = params.max_frame
        self._splitter.max_frame = params.max_frame
        self._claimed.set()

    async def ready(self) -> None:
        """Wait until a claimed spare is initialized; raise what its start met."""
        await self._ready.wait()
        if self._startup_failure is not None:
            raise self._startup_failure
        if self.init_result is None:
            assert self.exit is not None
            raise self.exit.error(self.plugin_id)

    async def _hello_phase(self) -> None:
        try:
            with anyio.fail_after(HELLO_TIMEOUT):
                # Set by the hello, or by the exit (_reap): no task of its own to watch both.
                await self._hello_event.wait()
        except TimeoutError:
            raise self._startup_error(f"no hello within {HELLO_TIMEOUT} s") from None
        if self._hello is None:
            raise self._startup_error("exited before saying hello")
        try:
            self.protocol = negotiate(SUPPORTED_PROTOCOLS, self._hello.protocols)
        except CordonError:
            self.kill_nowait("protocol-violation", "incompatible protocol")
            raise
        sent = self._params.protocol if self._init_call is not None and self._params else None
        if sent is not None and sent != self.protocol:
            # Initialize went before the hello, in the newest protocol we speak; a worker of
            # our own command that prefers another is not the code we started.
            self.kill_nowait("protocol-violation", "incompatible protocol")
            raise IncompatibleProtocol(ours=[sent], theirs=list(self._hello.protocols))

    async def _initialize_phase(self) -> None:
        if self.exit is not None:
            raise self.exit.error(self.plugin_id)
        assert self.protocol is not None
        if self._init_call is None:
            # A spare (it learnt its plugin after its hello), or not our own worker command
            # (a stand-in peer): initialize goes now, in the protocol its hello chose.
            self._send_initialize(self.protocol)
        self._send_placed()
        await self._placed.wait()  # set by the move, or by the exit (_reap)
        if self._place_error is not None:
            raise self._startup_error(f"placing the worker failed: {self._place_error!r}")
        assert self._init_call is not None
        try:
            with anyio.fail_after(INITIALIZE_TIMEOUT):
                raw = await self._answer(self._init_call)
        except TimeoutError:
            raise self._startup_error(
                f"initialize (lock-down and plugin import) took over {INITIALIZE_TIMEOUT} s"
            ) from None
        result = msgspec.json.decode(raw, type=InitializeResult)
        if self.lockdown_report is None:
            # The launch reports its lock-down before importing the plugin; an initialize
            # answered without it was not answered by the launch.
            raise self._startup_error("the worker answered initialize without its lock-down report")
        # The result may have been written by the plugin's import (it can reach the channel
        # from then on): its layer report is replaced by the one sent before it ran.
        result.sandbox = dict(self.lockdown_report)
        self.init_result = result

    def _startup_error(self, what: str) -> CordonError:
        if self.exit is not None:
            return self.exit.error(self.plugin_id)
        return WorkerCrashed(
            plugin=self.plugin_id,
            reason="unresponsive",
            detail=what,
            stderr_tail=self._clean_tail(),
        )

    #: The runtime's one pass over all its workers (``FleetSampler.watch_cpu``), set before
    #: ``run``: it samples this worker's CPU time with everyone else's. ``None`` (a worker on
    #: its own): it samples itself every :data:`CPU_SAMPLE`.
    cpu_watch: Callable[[WorkerProcess], None] | None = None

    async def _sample_cpu(self) -> None:
        if self.cpu_watch is not None:
            self.cpu_watch(cast("WorkerProcess", self))
            return
        try:
            proc = psutil.Process(self.pid)
            while self.exit is None:
                times = proc.cpu_times()
                self.cpu_seconds = times.user + times.system
                await anyio.sleep(CPU_SAMPLE)
        except psutil.Error:
            return

    def _limit_for(self, reason: str) -> int | float | None:
        limits = self._params.limits if self._params is not None else Limits()
        return {
            "memory": limits.memory,
            "cpu": limits.cpu_seconds,
            "file-size": limits.file_size,
        }.get(reason)

    async def _reap(self) -> None:
        """Wait for the process to end (its pidfd turns readable; ``waitid`` gives the exact
        status), then fail everything still in flight with why."""
        assert self.process is not None
        returncode = await self.process.wait()
        if self.exit is not None:
            return
        if self.exit is None:
            # stderr may still hold the dying words; give the pump a moment to read them.
            with anyio.move_on_after(0.5):
                await self._stderr_done.wait()
            tail = self._clean_tail()
            kill_reason, kill_detail = self._kill_reason, self._kill_detail
            if kill_reason is None and self._exit_probe is not None:
                found = self._exit_probe(returncode)
                if found is not None:
                    kill_reason, kill_detail = found
            reason, sig = _classify(
                returncode,
                kill_reason,
                stderr_tail=tail,
                cpu_seconds=self.cpu_seconds,
                cpu_limit=self._params.limits.cpu_seconds if self._params else None,
            )
            self.exit = ExitInfo(
                reason=reason,
                returncode=returncode,
                signal=sig,
                detail=kill_detail,
                stderr_tail=tail,
                limit=self._limit_for(reason),
            )
            for listener in self.exit_listeners:
                try:
                    listener(cast("WorkerProcess", self))
                except Exception:
                    log.exception("exit_listener_failed", plugin=self.plugin_id)
            self._fail_all(self.exit.error(self.plugin_id))
            self.exited.set()
            # What the start waits for (the hello, the move, a spare's claim) will not
            # come: wake it.
            self._hello_event.set()
            self._placed.set()
            self._claimed.set()

    def _fail_all(self, exc: CordonError) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            # Not "not woken": a call whose deadline just passed was woken but has no
            # answer yet, and must see the crash rather than wait out a cancel grace.
            if p.result is None and p.error is None:
                p.error = exc
                p.wake()

    def kill_nowait(self, reason: str, detail: str | None = None) -> None:
        if self._kill_reason is None:
            self._kill_reason = reason
            self._kill_detail = detail
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        proc = self.process
        # Only while unreaped: afterwards the group id may belong to someone else.
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        # And the worker itself through its pidfd: a forked worker's group exists only once
        # it has called setsid, and the pidfd names this process whatever became of the pid.
        proc.send_signal(sig)

    async def stop(self, *, deactivate: bool = True) -> None:
        """Shielded, escalating stop: deactivate → close stdin → wait → TERM → wait → KILL."""
        if self.process is None or self.exit is not None:
            return
        self._stopping = True
        with anyio.CancelScope(shield=True):
            if deactivate and self.init_result is not None:
                with anyio.move_on_after(DEACTIVATE_TIMEOUT):
                    try:
                        await self.request("deactivate", None, timeout=None)
                    except CordonError:
                        pass
            if self._kill_reason is None:
                self._kill_reason = "shutdown"
            self._close_stdin()
            with anyio.move_on_after(STDIN_CLOSE_WAIT):
                await self.exited.wait()
                return
            self._signal_group(signal.SIGTERM)
            with anyio.move_on_after(TERM_WAIT):
                await self.exited.wait()
                return
            self._signal_group(signal.SIGKILL)
            with anyio.move_on_after(KILL_WAIT):
                await self.exited.wait()

    async def _close_pipes(self) -> None:
        assert self.process is not None
        # Its stderr stream, and its pidfd once reaped.
        with contextlib.suppress(OSError):
            await self.process.aclose()
        self._stdin_closing = True
        self._close_stdin_fd()
        self._close_stdout_fd()

    async def _pump_stdout(self) -> None:
        try:
            if self._loop is not None:
                await self._serve_reader(self._loop)
            else:
                await self._read_stdout()
        except Exception as exc:
            # Whatever the worker sent that we could not handle (a bug of ours, or input no
            # check foresaw) ends this worker, never the runtime that owns every worker.
            log.error("worker.frame_failed", plugin=self.plugin_id, error=repr(exc), exc_info=exc)
            self.kill_nowait(
                "protocol-violation", f"the host could not handle a frame: {exc!r}"[:500]
            )
        finally:
            # The channel is gone: a worker without a channel is of no use. It should be
            # exiting already; make sure.
            proc = self.process
            assert proc is not None
            if self.exit is None and proc.returncode is None:
                with anyio.move_on_after(STDIN_CLOSE_WAIT, shield=True):
                    await self.exited.wait()
            if self.exit is None and proc.returncode is None:
                if self._kill_reason is None and not self._stopping:
                    self._kill_reason = "exited"
                    self._kill_detail = "closed its protocol channel"
                self._signal_group(signal.SIGKILL)
