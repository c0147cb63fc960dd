"""One worker process seen from the host: spawn, handshake, calls, and an escalating stop.

The worker's stdout carries the protocol and nothing else; its stderr is plugin output, read
line by line (bounded) and forwarded to the host log. Any byte on stdout that is not a valid
frame is a protocol violation and the worker is killed for it: a worker that can corrupt the
channel once cannot be trusted to answer correctly afterwards.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from subprocess import PIPE
from typing import Any, ClassVar, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import psutil
import structlog

from cordon.protocol import (
    CANCEL,
    DEFAULT_MAX_FRAME,
    HELLO,
    INITIALIZE,
    INVOKE,
    OVERSIZE,
    PING,
    PROGRESS,
    SUPPORTED_PROTOCOLS,
    Batch,
    CallCancelled,
    CallTimeout,
    CordonError,
    FrameSplitter,
    FrameTooLarge,
    Hello,
    Incoming,
    IncompatibleProtocol,
    InitializeParams,
    InitializeResult,
    InternalError,
    Invalid,
    InvalidParams,
    InvalidRequest,
    Limits,
    MethodNotFound,
    Notification,
    PermissionDenied,
    PluginError,
    ProgressParams,
    QuotaExceeded,
    RemoteError,
    Request,
    Response,
    SandboxUnavailable,
    WorkerCrashed,
    decode_frame,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
    error_from_wire,
    error_to_wire,
    negotiate,
)
from cordon.protocol._messages import decode_success

from .._hostapi._redact import Redactor

__all__ = [
    "CANCEL_GRACE",
    "HELLO_TIMEOUT",
    "INITIALIZE_TIMEOUT",
    "ExitInfo",
    "WorkerProcess",
]

log = structlog.get_logger("cordon")
#: Used by workers the runtime gives no redactor of its own (tests, tools).
_DEFAULT_REDACTOR: Final = Redactor()

#: The worker's first frame must arrive within this: interpreter start plus msgspec import is
#: ~50 ms here, but a 2-core CI box under a parallel test load can be 100x slower.
HELLO_TIMEOUT: Final = 15.0
#: Lock-down plus plugin import; bounded so a plugin that hangs at import cannot wedge load().
INITIALIZE_TIMEOUT: Final = 30.0
#: A cancelled call must answer within this, or the worker is recycled (a thread or a C loop
#: cannot be interrupted, and we will not leave it burning CPU behind a "cancelled" answer).
CANCEL_GRACE: Final = 1.0
#: Graceful stop: how long deactivate hooks may run before we stop asking.
DEACTIVATE_TIMEOUT: Final = 5.0
#: After stdin closes, a healthy worker exits within milliseconds.
STDIN_CLOSE_WAIT: Final = 2.0
#: SIGTERM grace before SIGKILL.
TERM_WAIT: Final = 2.0
#: SIGKILL cannot be ignored; this only bounds a kernel that is slow to reap.
KILL_WAIT: Final = 5.0
#: A single stderr line is cut here; the rest of it is dropped and counted.
STDERR_LINE_MAX: Final = 4096
#: Lines of stderr kept for WorkerCrashed.stderr_tail.
STDERR_TAIL_LINES: Final = 20
#: Characters of each of those lines shown (cleaned lazily, when the worker ends: bounded
#: work once per exit, none per line).
STDERR_TAIL_CHARS: Final = 512
#: The stderr pump lets the event loop run once handling the lines of one read has taken
#: this long, so a read full of costly lines (each is redacted on the loop) holds the loop
#: for at most this plus one line's cleaning, never the whole read's.
STDERR_YIELD_AFTER: Final = 0.002
#: Bytes queued for the worker's stdin before callers wait (and host answers and cancel
#: notices are dropped): backpressure, not a memory leak.
SEND_BUFFER: Final = 4 * 1024 * 1024
#: Bytes per read of the worker's stdout: a pipe's whole default capacity, so a pipelined
#: burst still arrives in one syscall. Not more: ``os.read`` allocates the full size first,
#: and above glibc's 128 KiB mmap threshold that was an mmap + mremap + munmap and fresh
#: zeroed pages on every read, which cost a sequential call ~25 us on each side.
READ_SIZE: Final = 64 * 1024
#: Worker → host requests served at once per worker, unless configured (``host-requests``).
#: Past it the host stops reading that worker's channel until one finishes: each request is
#: a task and its params in host memory, and a plugin firing requests without waiting for
#: answers must not turn that into unbounded host memory or starve the other plugins.
HOST_REQUESTS: Final = 64
#: Bytes of request params held by those requests at once (``host-request-memory``); one
#: request is always admitted whatever its size (it is at most one frame), so this bounds
#: the rest.
HOST_REQUEST_BYTES: Final = 16 * 1024 * 1024
#: Per request, on top of its params: the task, the decoded message, the audit record.
HOST_REQUEST_OVERHEAD: Final = 1024
#: How often the CPU time of a worker with a cpu-time limit is sampled, so that a SIGKILL the
#: kernel sends at the RLIMIT_CPU hard limit (soft + 1 s) can be told from any other SIGKILL.
CPU_SAMPLE: Final = 0.25
#: Exit reasons that are a resource limit: in-flight calls get QuotaExceeded(kind=reason).
QUOTA_REASONS: Final = ("memory", "cpu", "file-size")
#: Only the worker's own pipes and these variables cross into it.
ENV_ALLOWLIST: Final = ("LANG", "LC_ALL", "TZ")
#: glibc gives each new thread its own malloc arena, reserving 64 MiB of address space that
#: RLIMIT_AS counts: under the default 256 MiB limit four sync-tool threads exhausted it
#: ("can't start new thread"). Python holds the GIL anyway, so one arena costs nothing
#: measurable. glibc reads it once, at process start: it must be in the worker's env.
MALLOC_ARENA_MAX: Final = "1"

#: What a worker may answer a call with. Anything else (say, a forged WorkerCrashed or
#: PluginUnavailable) is reported as the PluginError it really is.
_WORKER_MAY_RAISE: Final = (
    PluginError,
    InvalidParams,
    MethodNotFound,
    CallCancelled,
    PermissionDenied,
    QuotaExceeded,
    FrameTooLarge,
    InvalidRequest,
    SandboxUnavailable,
    IncompatibleProtocol,
    RemoteError,
)

#: Errors only the launch (hello, initialize: lock-down before any plugin code) may report.
#: From a running plugin they are a claim about the host it cannot know (and would send the
#: operator off to weaken the sandbox): they arrive as a PluginError.
_LAUNCH_ONLY: Final = (SandboxUnavailable, IncompatibleProtocol)

HostRequestHandler = Callable[[str, msgspec.Raw], Awaitable[Any]]
#: A worker → host notification (``host/log``), served synchronously in channel order;
#: may return background work (an audit write) for the worker's task group to run.
HostNotificationHandler = Callable[
    [str, msgspec.Raw], Callable[[], Coroutine[Any, Any, None]] | None
]
StderrHandler = Callable[[bytes], None]
#: ``(returncode) -> (reason, detail)`` for an exit the host did not cause, or ``None``.
ExitProbe = Callable[[int | None], "tuple[str, str] | None"]


@dataclass(slots=True)
class ExitInfo:
    """How a worker ended: the classified reason plus the raw status."""

    reason: str
    returncode: int | None
    signal: int | None
    detail: str | None
    stderr_tail: list[str]
    at: float = field(default_factory=time.time)
    #: The configured limit behind a quota reason (bytes for memory, seconds for cpu, ...).
    limit: int | float | None = None

    def error(self, plugin_id: str) -> CordonError:
        """What an in-flight call sees: :class:`QuotaExceeded` when the worker died of a
        resource limit (reason ``memory``, ``cpu``, ``file-size``: killed by the kernel for it,
        died of a MemoryError, or killed by the RSS watchdog), :class:`WorkerCrashed`
        otherwise. The quota error's message carries the exit status and detail."""
        if self.reason in QUOTA_REASONS:
            how = f"signal {self.signal}" if self.signal else f"exit code {self.returncode}"
            extra = f": {self.detail}" if self.detail else ""
            last = f"; last output: {self.stderr_tail[-1]}" if self.stderr_tail else ""
            return QuotaExceeded(
                f"plugin {plugin_id!r} exceeded its {self.reason} quota ({self.limit}); "
                f"its worker died ({how}){extra}{last}",
                kind=self.reason,
                limit=self.limit,
                plugin=plugin_id,
            )
        return WorkerCrashed(
            plugin=plugin_id,
            reason=self.reason,
            returncode=self.returncode,
            signal=self.signal,
            stderr_tail=self.stderr_tail,
            detail=self.detail,
        )


class _Pending:
    """A call waiting for its answer: ``wake`` it once ``result`` or ``error`` is set (or
    ``expired``). This one works on any anyio backend."""

    __slots__ = ("_event", "error", "expired", "on_progress", "result")

    def __init__(self, on_progress: Callable[[ProgressParams], Any] | None) -> None:
        self.result: msgspec.Raw | None = None
        self.error: CordonError | None = None
        #: Set by the deadline timer: the call's timeout passed before an answer came.
        self.expired = False
        self.on_progress = on_progress
        self._event = anyio.Event()

    def wake(self) -> None:
        self._event.set()

    def woken(self) -> bool:
        return self._event.is_set()

    def wait(self) -> Awaitable[Any]:
        return self._event.wait()

    def rearm(self) -> None:
        """Wait again (after the deadline timer woke the caller)."""
        self._event = anyio.Event()


class _FuturePending(_Pending):
    """The same on anyio's asyncio backend: a bare future costs a fifth of an
    ``anyio.Event`` (no backend lookup, no ``asyncio.Event`` with its waiter list), and
    cancelling the waiting task cancels the future, so cancel scopes work unchanged."""

    __slots__ = ("_fut",)

    def __init__(
        self,
        on_progress: Callable[[ProgressParams], Any] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.result = None
        self.error = None
        self.expired = False
        self.on_progress = on_progress
        # Not loop.create_future(): that is this same call behind a Python method.
        self._fut: asyncio.Future[None] = asyncio.Future(loop=loop)

    def wake(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def woken(self) -> bool:
        # A future cancelled with its waiter (a cancel scope) was not woken by an answer.
        fut = self._fut
        return fut.done() and not fut.cancelled()

    def wait(self) -> Awaitable[Any]:
        return self._fut

    def rearm(self) -> None:
        self._fut = self._fut.get_loop().create_future()


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop when anyio runs on its asyncio backend, else ``None`` (trio). anyio
    names the backend through its cancellation class (sniffio is not a dependency here)."""
    if anyio.get_cancelled_exc_class() is not asyncio.CancelledError:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _died_of_memory_error(stderr_tail: list[str]) -> bool:
    """The last traceback the worker printed ends in MemoryError (an unhandled one, or the
    interpreter's fatal "Cannot recover from MemoryError")."""
    return any(
        line.startswith("MemoryError") or ("Fatal Python error" in line and "MemoryError" in line)
        for line in stderr_tail[-5:]
    )


def _classify(
    returncode: int | None,
    kill_reason: str | None,
    *,
    stderr_tail: list[str] | None = None,
    cpu_seconds: float | None = None,
    cpu_limit: float | None = None,
) -> tuple[str, int | None]:
    """The exit reason: the host's own kill reason first; then SIGXCPU (RLIMIT_CPU soft),
    SIGKILL with the sampled CPU time at the limit (RLIMIT_CPU hard), SIGXFSZ (only if the
    plugin un-ignored it; CPython ignores it, so writes fail with EFBIG instead), a traceback
    ending in MemoryError; otherwise ``signal`` or ``exited``."""
    sig = -returncode if returncode is not None and returncode < 0 else None
    if kill_reason:
        return kill_reason, sig
    if sig == signal.SIGXCPU:
        return "cpu", sig
    if (
        sig == signal.SIGKILL
        and cpu_limit is not None
        and cpu_seconds is not None
        and cpu_seconds >= cpu_limit
    ):
        return "cpu", sig
    if sig == signal.SIGXFSZ:
        return "file-size", sig
    if returncode != 0 and stderr_tail and _died_of_memory_error(stderr_tail):
        return "memory", sig
    if sig is not None:
        return "signal", sig
    return "exited", None


class WorkerProcess:
    """A running worker. Created by :meth:`spawn`; ends when its process does."""

    #: Use the asyncio-only channel paths when anyio runs on asyncio (tests turn this off to
    #: exercise the generic ones, which trio would get).
    _asyncio_fast_path: ClassVar[bool] = True

    def __init__(
        self,
        *,
        plugin_id: str,
        params: InitializeParams | None,
        on_host_request: HostRequestHandler | None = None,
        on_stderr: StderrHandler | None = None,
        on_host_notification: HostNotificationHandler | None = None,
        python: str | None = None,
        argv: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        exit_probe: ExitProbe | None = None,
        place: Callable[[int], Awaitable[None]] | None = None,
        home: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """``params=None`` makes a warm spare: it starts and says hello, then waits (``run``
        reports it started at that point) until :meth:`claim` gives it a plugin; its
        ``home`` is the directory it starts in until then."""
        self.plugin_id = plugin_id
        # Asked, for an exit the host did not cause, whether something outside the process
        # saw why (a cgroup's OOM killer): the SIGKILL alone does not say.
        self._exit_probe = exit_probe
        # Run with the pid as soon as the process exists (moving it into its cgroups), while
        # the interpreter starts; initialize, which lets plugin code in, waits for it.
        self._place = place
        self._placed = anyio.Event()
        self._place_error: BaseException | None = None
        self._params = params
        self._home = home if home is not None else params.scratch_dir if params else "/"
        self._claimed = anyio.Event()
        if params is not None:
            self._claimed.set()
        # Set when run has finished starting (initialized, or failed: _startup_failure).
        self._ready = anyio.Event()
        self._startup_failure: BaseException | None = None
        self.max_frame = params.max_frame if params is not None else DEFAULT_MAX_FRAME
        self._on_host_request = on_host_request
        self._on_host_notification = on_host_notification
        self._on_stderr = on_stderr
        #: Everything the plugin says that the host turns into text (its errors, its stderr
        #: tail) is redacted and neutralised with this, once, where it enters the host.
        self.redactor = redactor or _DEFAULT_REDACTOR
        #: Called (synchronously) the moment the exit is known, before any call in flight
        #: is failed with it: whoever keeps statistics is current when callers see it.
        self.exit_listeners: list[Callable[[WorkerProcess], None]] = []
        # ``argv`` replaces the worker command; tests use it to stand up misbehaving peers.
        self._argv = argv or [python or sys.executable, "-I", "-m", "cordon.worker"]
        self._extra_env = extra_env or {}
        self.process: anyio.abc.Process | None = None
        self.pid: int | None = None
        self.protocol: int | None = None
        self.init_result: InitializeResult | None = None
        self.exit: ExitInfo | None = None
        self.exited = anyio.Event()
        self.started_at = time.monotonic()
        self.last_activity = time.monotonic()
        self._kill_reason: str | None = None
        self._kill_detail: str | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._hello: Hello | None = None
        self._hello_event = anyio.Event()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.stderr_dropped = 0
        # The worker's stdin is our own non-blocking pipe: a call on an idle channel is
        # written at once; otherwise frames queue in _out for the writer task.
        self._wfd = -1
        self._out = bytearray()
        # Its stdout too. On asyncio a reader callback resolves callers directly (see
        # _on_readable); anything but a response goes through _backlog to the pump task.
        self._rfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The asyncio loop's ready queue, when it has one (see _on_readable).
        self._run_queue: deque[asyncio.Handle] | None = None
        #: ``loop.time`` without its Python method, where that is all it is.
        self._clock: Callable[[], float] = time.monotonic
        self._splitter = FrameSplitter(self.max_frame)
        self._reading = False
        self._backlog: deque[tuple[bytes | object, Incoming | Batch | None]] = deque()
        self._stdout_eof = False
        self._reader_error: Exception | None = None
        self._reader_wake = anyio.Event()
        self._stdin_closing = False
        self._broken = False
        self._writer_wake = anyio.Event()
        self._drained: anyio.Event | None = None
        # Every call's deadline in one heap, served by one timer task (see request and _timer).
        self._deadlines: list[tuple[float, int]] = []
        self._timer_at = math.inf
        self._timer_wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stderr_done = anyio.Event()
        self._stopping = False
        #: Host-side fault injection (cordon.testing.delay_replies): responses from
        #: the worker are held this many seconds before they reach their callers.
        self.reply_delay = 0.0
        #: CPU seconds (user + system) last sampled; sampled only with a cpu-time limit.
        self.cpu_seconds: float | None = None
        #: The bounds on worker → host requests (see _on_request); the runtime sets them
        #: from the plugin's config.
        self.host_requests_max = HOST_REQUESTS
        self.host_request_bytes_max = HOST_REQUEST_BYTES
        self._host_inflight = 0
        self._host_bytes = 0
        # Requests of the frame being handled that did not fit: at most one frame's worth
        # (one request, or one batch's), since the pump admits them all before it reads on.
        self._host_waiting: deque[Request] = deque()
        self._host_slot = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Can take new calls: not exited, not stopping, and not condemned (a kill was sent;
        the new call belongs on the replacement, not on a process about to die)."""
        return self.exit is None and not self._stopping and self._kill_reason is None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

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
        env.update(self._extra_env)
        return env

    async def run(self, *, task_status: anyio.abc.TaskStatus[WorkerProcess]) -> None:
        """Run the worker for its whole life. ``task_status.started`` fires once it is
        initialized; a failed handshake raises out of ``TaskGroup.start`` instead."""
        self._loop = loop = _asyncio_loop() if self._asyncio_fast_path else None
        if loop is not None:
            ready = getattr(loop, "_ready", None)
            self._run_queue = ready if isinstance(ready, deque) else None
            if type(loop).time is not asyncio.BaseEventLoop.time:
                self._clock = loop.time
        child_stdin, self._wfd = os.pipe()
        try:
            self._rfd, child_stdout = os.pipe()
        except BaseException:
            os.close(child_stdin)
            self._close_stdin_fd()
            raise
        try:
            process = await anyio.open_process(
                self._argv,
                stdin=child_stdin,
                stdout=child_stdout,
                stderr=PIPE,
                env=self._env(),
                cwd=self._home,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_stdin_fd()
            self._close_stdout_fd()
            raise InternalError(f"cannot start worker for {self.plugin_id!r}: {exc}") from exc
        except BaseException:
            self._close_stdin_fd()
            self._close_stdout_fd()
            raise
        finally:
            os.close(child_stdin)
            os.close(child_stdout)
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
                # Placed while the interpreter starts, if we know where already (a spare
                # may: its group gets the plugin's limits at claim); otherwise on claim.
                placing = self._place is not None
                if placing:
                    tg.start_soon(self._run_place, process.pid)
                try:
                    await self._hello_phase()
                    if self._params is None:
                        # A warm spare: ready to be claimed; the rest starts on claim().
                        task_status.started(self)
                        started = True
                        await self._wait_or_exit(self._claimed)
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
                        task_status.started(self)
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
        if self.exit is not None or self.pid is None:
            return self.exit is not None
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return True
        try:
            # A pidfd turns readable when the process terminates, zombie or not.
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        finally:
            os.close(fd)

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
                await self._wait_or_exit(self._hello_event)
        except TimeoutError:
            raise self._startup_error(f"no hello within {HELLO_TIMEOUT} s") from None
        if self._hello is None:
            raise self._startup_error("exited before saying hello")
        try:
            self.protocol = negotiate(SUPPORTED_PROTOCOLS, self._hello.protocols)
        except CordonError:
            self.kill_nowait("protocol-violation", "incompatible protocol")
            raise

    async def _initialize_phase(self) -> None:
        if self.exit is not None:
            raise self.exit.error(self.plugin_id)
        assert self.protocol is not None
        self.params.protocol = self.protocol
        await self._wait_or_exit(self._placed)
        if self._place_error is not None:
            raise self._startup_error(f"placing the worker failed: {self._place_error!r}")
        try:
            with anyio.fail_after(INITIALIZE_TIMEOUT):
                raw = await self.request(INITIALIZE, self.params, timeout=None)
        except TimeoutError:
            raise self._startup_error(
                f"initialize (lock-down and plugin import) took over {INITIALIZE_TIMEOUT} s"
            ) from None
        self.init_result = msgspec.json.decode(raw, type=InitializeResult)

    async def _run_place(self, pid: int) -> None:
        try:
            if self._place is not None:
                await self._place(pid)
        except Exception as exc:
            self._place_error = exc
        finally:
            self._placed.set()

    async def _wait_or_exit(self, event: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_exit() -> None:
                await self.exited.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_exit)
            await event.wait()
            tg.cancel_scope.cancel()

    def _startup_error(self, what: str) -> CordonError:
        if self.exit is not None:
            return self.exit.error(self.plugin_id)
        return WorkerCrashed(
            plugin=self.plugin_id,
            reason="unresponsive",
            detail=what,
            stderr_tail=self._clean_tail(),
        )

    async def _sample_cpu(self) -> None:
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
        """Wait for the process to end, then fail everything still in flight with why."""
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
                    listener(self)
                except Exception:
                    log.exception("exit_listener_failed", plugin=self.plugin_id)
            self._fail_all(self.exit.error(self.plugin_id))
            self.exited.set()

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
        # Only while unreaped: afterwards the pid (and group id) may belong to someone else.
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(signal.Signals(sig))

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
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    await stream.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
        self._stdin_closing = True
        self._close_stdin_fd()
        self._close_stdout_fd()

    # -- the channel ----------------------------------------------------------------------

    def _put(self, frame: bytes) -> bool:
        """Hand a frame to the channel without waiting. On an idle channel with no other
        call in flight it is written at once (a sequential caller waits on exactly this
        frame); otherwise it is queued and the writer task sends everything queued in one
        write. False: the queue is full or stdin is closing; nothing was taken."""
        if self._broken:
            return True  # the worker is gone; _reap fails the calls waiting on it
        out = self._out
        if self._stdin_closing or len(out) >= SEND_BUFFER:
            return False
        if not out and len(self._pending) <= 1:
            try:
                n = os.write(self._wfd, frame)
            except BlockingIOError:
                n = 0
            except OSError:
                self._broken = True
                return True
            if n == len(frame):
                return True
            frame = frame[n:]
        if not out:
            self._writer_wake.set()
        out += frame
        return True

    async def _writer(self) -> None:
        """Write what :meth:`_put` queued: a pipelined burst leaves in one write, and a full
        pipe is waited out here rather than by the callers. Ends (closing stdin) once
        :meth:`_close_stdin` was called and everything queued before it is written."""
        out = self._out
        try:
            while True:
                if not out:
                    if self._stdin_closing:
                        return
                    await self._writer_wake.wait()
                    self._writer_wake = anyio.Event()
                    continue
                try:
                    n = os.write(self._wfd, out)
                except BlockingIOError:
                    await anyio.wait_writable(self._wfd)
                    continue
                except OSError:
                    self._broken = True
                    out.clear()
                    return
                del out[:n]
                if self._drained is not None and len(out) < SEND_BUFFER:
                    self._drained.set()
                    self._drained = None
        finally:
            if self._drained is not None:
                self._drained.set()
                self._drained = None
            self._stdin_closing = True
            self._close_stdin_fd()

    def _close_stdin(self) -> None:
        """EOF for the worker (how it is told to shut down), after what is queued."""
        self._stdin_closing = True
        self._writer_wake.set()

    def _close_stdin_fd(self) -> None:
        if self._wfd >= 0:
            fd, self._wfd = self._wfd, -1
            os.close(fd)

    def _close_stdout_fd(self) -> None:
        if self._reading and self._loop is not None:
            # Never leave a callback registered on a number the next open() may reuse.
            self._reading = False
            self._loop.remove_reader(self._rfd)
        if self._rfd >= 0:
            fd, self._rfd = self._rfd, -1
            os.close(fd)

    async def _send(self, frame: bytes) -> None:
        if len(frame) > self.max_frame:
            raise FrameTooLarge(limit=self.max_frame, size=len(frame))
        while not self._put(frame):
            if self._stdin_closing:
                await self.exited.wait()
                assert self.exit is not None
                raise self.exit.error(self.plugin_id) from None
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def _send_nowait(self, frame: bytes) -> None:
        # Dropped when the queue is full or stdin is closing, as it always was.
        self._put(frame)

    def _prune_deadlines(self) -> None:
        """Answered calls leave their deadline in the heap (see :meth:`request`, which
        pushes each call's and wakes the timer for an earlier one); drop those now and
        then. One timer task serves every call's deadline: a cancel scope per call cost
        more than the rest of the call's bookkeeping together."""
        self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
        heapq.heapify(self._deadlines)

    async def _timer(self) -> None:
        """Wake each call whose deadline passed with ``expired`` set; the caller then asks
        the worker to cancel (see :meth:`_cancel_after_timeout`)."""
        while True:
            now = anyio.current_time()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                _, ident = heapq.heappop(heap)
                pending = self._pending.get(ident)
                if pending is not None and not pending.woken():
                    pending.expired = True
                    pending.wake()
            self._timer_wake = anyio.Event()
            self._timer_at = heap[0][0] if heap else math.inf
            with anyio.CancelScope(deadline=self._timer_at):
                await self._timer_wake.wait()

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

    async def _read_stdout(self) -> None:
        """The generic reader (any anyio backend): every frame handled in this task."""
        fd = self._rfd
        splitter = self._splitter
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            self.last_activity = time.monotonic()
            for frame in splitter.feed(data):
                if not self._on_frame(frame):
                    return
                if self._host_waiting:
                    await self._admit_waiting()

    async def _serve_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio: :meth:`_on_readable` runs as a reader callback and resolves the callers'
        futures itself, so an answer costs no task wake-up of ours (the subprocess
        transport's stream took two loop passes per read). Whatever is not a response
        (hello, progress, a host request, a violation) is handed to this task, in order,
        and reading pauses until it is handled: progress callbacks, host requests and
        anyio calls need a task, and a call's progress must not overtake its answer."""
        fd = self._rfd
        try:
            self._resume_reading()
            while True:
                await self._reader_wake.wait()
                self._reader_wake = anyio.Event()
                if self._reader_error is not None:
                    raise self._reader_error
                backlog = self._backlog
                while backlog:
                    frame, msg = backlog.popleft()
                    if not self._on_frame(frame, msg):
                        return
                    if self._host_waiting:
                        # Reading stays paused meanwhile: backpressure on the worker.
                        await self._admit_waiting()
                if self._stdout_eof:
                    return
                self._resume_reading()
        finally:
            if self._reading:
                self._reading = False
                loop.remove_reader(fd)

    def _resume_reading(self) -> None:
        assert self._loop is not None
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._rfd, self._on_readable)

    def _pause_reading(self) -> None:
        """Stop the callback and wake the pump task (backlog, EOF, or a failure)."""
        if self._reading:
            self._reading = False
            assert self._loop is not None
            self._loop.remove_reader(self._rfd)
        self._reader_wake.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._rfd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stdout_eof = True
            self._pause_reading()
            return
        self.last_activity = time.monotonic()
        try:
            frames = self._splitter.feed(data)
            pending = self._pending
            for i, frame in enumerate(frames):
                msg: Incoming | Batch | None = None
                if frame is not OVERSIZE and self.reply_delay <= 0:
                    assert isinstance(frame, bytes)
                    ok = decode_success(frame)
                    if ok is not None:
                        # The common case, decoded by the narrow struct alone. Only the
                        # asyncio path reads here, so every call waits on a future.
                        call = pending.pop(ok.id, None)
                        if call is not None:
                            assert isinstance(call, _FuturePending)
                            call.result = ok.result
                            fut = call._fut
                            if not fut.done():  # call.wake()
                                fut.set_result(None)
                                ready = self._run_queue
                                if ready and i == len(frames) - 1:
                                    # Nothing follows in this read, so the caller goes on
                                    # now rather than on the loop's next pass: it sends
                                    # its next request from this read (one loop pass and
                                    # one epoll_wait less per sequential call). The step
                                    # run is the one set_result just queued for this
                                    # future (the task's own wake-up), so the task runs as
                                    # it would a moment later; only its order relative to
                                    # callbacks already queued changes, as with 3.12's
                                    # eager tasks. Never from inside a task, which asyncio
                                    # refuses to enter another from (a reader callback
                                    # never is).
                                    handle = ready[-1]
                                    args = handle._args
                                    if args and args[0] is fut and asyncio.current_task() is None:
                                        ready.pop()
                                        handle._run()
                        continue
                    msg = decode_frame(frame)
                    if isinstance(msg, Response):
                        self._deliver(msg)
                        continue
                backlog = self._backlog
                backlog.append((frame, msg))
                backlog.extend((rest, None) for rest in frames[i + 1 :])
                self._pause_reading()
                return
        except Exception as exc:
            # A bug here must end the worker's run as it would in a task, not be logged
            # by the loop and forgotten.
            self._reader_error = exc
            self._pause_reading()

    def _violation(self, detail: str) -> bool:
        log.warning("worker.protocol_violation", plugin=self.plugin_id, detail=detail)
        self.kill_nowait("protocol-violation", detail)
        return False

    def _on_frame(self, frame: bytes | object, msg: Incoming | Batch | None = None) -> bool:
        if frame is OVERSIZE:
            return self._violation(f"sent a frame over the {self.max_frame}-byte limit")
        assert isinstance(frame, bytes)
        if msg is None:
            msg = decode_frame(frame)
        if isinstance(msg, Response):
            self._on_response(msg)
            return True
        if isinstance(msg, Request):
            self._on_request(msg)
            return True
        if isinstance(msg, Notification):
            self._on_notification(msg)
            return True
        if isinstance(msg, Batch):
            for item in msg.items:
                if isinstance(item, Invalid):
                    return self._violation(f"sent an invalid message: {item.error.message}")
            for item in msg.items:
                if isinstance(item, Response):
                    self._on_response(item)
                elif isinstance(item, Request):
                    self._on_request(item)
                elif isinstance(item, Notification):
                    self._on_notification(item)
            return True
        assert isinstance(msg, Invalid)
        preview = self.redactor.clean_message(frame[:80].decode("utf-8", "replace"), 80)
        return self._violation(f"wrote garbage on the protocol channel: {preview!r}")

    def _on_response(self, msg: Response) -> None:
        if self.reply_delay > 0 and self._tg is not None:
            self._tg.start_soon(self._deliver_later, msg, self.reply_delay)
            return
        self._deliver(msg)

    async def _deliver_later(self, msg: Response, delay: float) -> None:
        await anyio.sleep(delay)
        self._deliver(msg)

    def _deliver(self, msg: Response) -> None:
        pending = self._pending.pop(msg.id, None) if isinstance(msg.id, int) else None
        if pending is None:
            # A response to nothing we asked (or already gave up on): harmless, ignored.
            return
        if msg.error is not None:
            # Every string in it is the plugin's: redacted and neutralised here, where a
            # worker's error enters the host, so no caller, log or terminal sees it raw.
            pending.error = self.redactor.clean_error(self._vet(error_from_wire(msg.error)))
        else:
            pending.result = msg.result
        pending.wake()

    def _vet(self, exc: CordonError) -> CordonError:
        """A worker's error is a claim, not a fact: only errors a worker can honestly raise
        pass as themselves, and the plugin they name is always the one on this channel."""
        # The exact class: auto-registered host classes may subclass an allowed one
        # (UnknownContribution is a MethodNotFound) and must not be forgeable through it.
        if type(exc) not in _WORKER_MAY_RAISE or (
            self.init_result is not None and type(exc) in _LAUNCH_ONLY
        ):
            return PluginError(
                f"plugin raised {type(exc).__name__}: {exc.message}",
                exc_type=type(exc).__name__,
                exc_message=exc.message,
                plugin=self.plugin_id,
            )
        if "plugin" in exc._fields:
            setattr(exc, "plugin", self.plugin_id)  # noqa: B010 - not every class has it
        return exc

    def _on_notification(self, msg: Notification) -> None:
        if msg.method == HELLO and self._hello is None:
            try:
                self._hello = msgspec.json.decode(msg.params, type=Hello)
            except msgspec.DecodeError:
                self.kill_nowait("protocol-violation", "malformed hello")
                return
            self._hello_event.set()
        elif msg.method == PROGRESS:
            try:
                prog = msgspec.json.decode(msg.params, type=ProgressParams)
            except msgspec.DecodeError:
                return
            pending = self._pending.get(prog.id) if isinstance(prog.id, int) else None
            if pending is not None and pending.on_progress is not None:
                try:
                    pending.on_progress(prog)
                except Exception:
                    log.exception("progress_callback_failed", plugin=self.plugin_id)
        elif self._on_host_notification is not None and self._hello is not None:
            # A log record (host/log as a notification): served now, in channel order, so
            # it is in the host's log before the result the worker sent after it.
            try:
                follow_up = self._on_host_notification(msg.method, msg.params)
            except Exception:
                log.exception("host_notification_failed", plugin=self.plugin_id)
                return
            if follow_up is not None and self._tg is not None:
                self._tg.start_soon(follow_up)

    # -- worker → host requests -------------------------------------------------------------
    #
    # Bounded per worker: at most host_requests_max served at once, holding at most
    # host_request_bytes_max of params (one is always admitted). A request that does not
    # fit waits in _host_waiting and the pump, which is the only reader of the channel,
    # admits it before it reads another byte: so past the bound the host stops reading
    # this worker (its pipe fills, its writes block or buffer in its own memory) instead of
    # buffering. A slot is held until the answer is queued for the worker's stdin, so a
    # worker that does not read its answers is stopped the same way.
    #
    # No deadlock: the same channel carries the worker's answers to the host's own calls,
    # which wait unread while reading is paused; but no host request handler waits on a
    # worker's answer (storage, config, log, exec are the host's own work; events.emit only
    # queues), so every slot frees by itself and reading resumes. A worker that does not
    # read its stdin stalls only itself; its host calls end by their own timeouts.

    def _host_fits(self, msg: Request) -> bool:
        if self._host_inflight >= self.host_requests_max:
            return False
        return self._host_inflight == 0 or (
            self._host_bytes + len(msg.params) + HOST_REQUEST_OVERHEAD
            <= self.host_request_bytes_max
        )

    def _on_request(self, msg: Request) -> None:
        if self._host_waiting or not self._host_fits(msg):
            self._host_waiting.append(msg)
            return
        self._start_host_request(msg)

    def _start_host_request(self, msg: Request) -> None:
        assert self._tg is not None
        size = len(msg.params) + HOST_REQUEST_OVERHEAD
        self._host_inflight += 1
        self._host_bytes += size
        self._tg.start_soon(self._serve_host_request, msg, size)

    async def _admit_waiting(self) -> None:
        """Start the waiting requests as slots free; the channel is not read meanwhile."""
        waiting = self._host_waiting
        while waiting:
            if self._host_fits(waiting[0]):
                self._start_host_request(waiting.popleft())
                continue
            self._host_slot = anyio.Event()
            await self._host_slot.wait()

    async def _serve_host_request(self, msg: Request, size: int) -> None:
        try:
            try:
                if self._on_host_request is None:
                    raise MethodNotFound(f"method {msg.method!r} not found", method=msg.method)
                result = await self._on_host_request(msg.method, msg.params)
                frame = encode_result(msg.id, result)
            except CordonError as exc:
                frame = encode_error(msg.id, error_to_wire(exc))
            except Exception as exc:
                log.exception("host_api_failed", plugin=self.plugin_id, method=msg.method)
                frame = encode_error(msg.id, error_to_wire(InternalError(f"host error: {exc}")))
            if len(frame) > self.max_frame:
                frame = encode_error(
                    msg.id, error_to_wire(FrameTooLarge(limit=self.max_frame, size=len(frame)))
                )
            try:
                # Waits while the worker's stdin queue is full: the answer is never dropped,
                # and the slot stays taken until the worker takes its answers.
                await self._send(frame)
            except CordonError:
                pass  # the worker is gone; nobody is left to answer
        finally:
            self._host_inflight -= 1
            self._host_bytes -= size
            self._host_slot.set()

    async def _pump_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        stderr = self.process.stderr
        buf = b""
        skipping = False
        try:
            while True:
                try:
                    data = await stderr.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                buf += data
                since = time.perf_counter()
                while True:
                    if time.perf_counter() - since > STDERR_YIELD_AFTER:
                        # Each line is cleaned (redacted) on the loop: let other plugins'
                        # work run between lines rather than after the whole read.
                        await anyio.lowlevel.checkpoint()
                        since = time.perf_counter()
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > STDERR_LINE_MAX:
                            if not skipping:
                                self._line(buf[:STDERR_LINE_MAX] + b" [truncated]")
                            self.stderr_dropped += len(buf) - STDERR_LINE_MAX
                            skipping = True
                            buf = b""
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if skipping:
                        skipping = False
                        continue
                    if len(line) > STDERR_LINE_MAX:
                        self.stderr_dropped += len(line) - STDERR_LINE_MAX
                        line = line[:STDERR_LINE_MAX] + b" [truncated]"
                    self._line(line)
            if buf and not skipping:
                self._line(buf[:STDERR_LINE_MAX])
        finally:
            self._stderr_done.set()

    def _clean_tail(self) -> list[str]:
        return [self.redactor.clean_message(line, STDERR_TAIL_CHARS) for line in self._stderr_tail]

    def _line(self, line: bytes) -> None:
        self._stderr_tail.append(line[: 2 * STDERR_TAIL_CHARS].decode("utf-8", "replace"))
        if self._on_stderr is not None:
            try:
                self._on_stderr(line)
            except Exception:
                log.exception("stderr_handler_failed", plugin=self.plugin_id)

    # -- calls ----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Any,
        *,
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
        label: str | None = None,
    ) -> msgspec.Raw:
        """Send a request and wait for its answer.

        On ``timeout`` the worker is asked to cancel; if it has not answered within
        :data:`CANCEL_GRACE` it is killed (reason ``timeout``). If the caller is cancelled,
        the worker is told (``$/cancel``) and the cancellation propagates unchanged.
        """
        if self.exit is not None:
            raise self.exit.error(self.plugin_id)
        self._next_id += 1
        ident = self._next_id
        loop = self._loop
        pending: _Pending
        fut: asyncio.Future[None] | None = None
        if loop is not None:
            pending = _FuturePending(on_progress, loop)
            fut = pending._fut  # to await it without pending.wait()'s call
        else:
            pending = _Pending(on_progress)
        self._pending[ident] = pending
        try:
            frame = encode_request(ident, method, params)
            if len(frame) > self.max_frame or not self._put(frame):
                await self._send(frame)
            if timeout is not None:
                # anyio's clock is the loop's: read it directly on asyncio (no backend lookup).
                deadline = (self._clock() if loop is not None else anyio.current_time()) + timeout
                deadlines = self._deadlines
                heapq.heappush(deadlines, (deadline, ident))
                if deadline < self._timer_at:
                    self._timer_wake.set()
                elif len(deadlines) > 2 * len(self._pending) + 64:
                    self._prune_deadlines()
            await (fut if fut is not None else pending.wait())
            if pending.expired and pending.result is None and pending.error is None:
                assert timeout is not None
                await self._cancel_after_timeout(ident, pending, label or method, timeout)
        except anyio.get_cancelled_exc_class():
            if pending.result is None and pending.error is None:
                self._send_nowait(encode_notification(CANCEL, {"id": ident}))
            raise
        finally:
            self._pending.pop(ident, None)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _cancel_after_timeout(
        self, ident: int, pending: _Pending, method: str, timeout: float
    ) -> None:
        pending.rearm()  # the timer woke the first wait
        self._send_nowait(encode_notification(CANCEL, {"id": ident}))
        with anyio.move_on_after(CANCEL_GRACE):
            await pending.wait()
        if not pending.woken() or isinstance(pending.error, WorkerCrashed):
            self.kill_nowait("timeout", f"{method} ignored cancellation after {timeout} s")
        pending.error = CallTimeout(timeout=timeout, method=method, plugin=self.plugin_id)
        pending.wake()

    def invoke(
        self,
        name: str,
        arguments: Any,
        *,
        kind: str = "tool",
        timeout: float | None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Coroutine[Any, Any, msgspec.Raw]:
        """``await`` it: :meth:`request` for ``invoke``. Hands out request's own coroutine
        rather than awaiting it in one more (every tool call passes here)."""
        params = {"name": name, "kind": kind, "arguments": arguments}
        return self.request(INVOKE, params, timeout=timeout, on_progress=on_progress, label=name)

    async def ping(self, timeout: float) -> bool:
        try:
            with anyio.fail_after(timeout):
                await self.request(PING, None, timeout=None)
        except (TimeoutError, CordonError):
            return False
        return True
