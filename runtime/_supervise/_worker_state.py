"""What the parts of a :class:`~._worker.WorkerProcess` share: its state, set up once in
:class:`_WorkerState`'s ``__init__`` (mypy reads every attribute's type from there, for every
part), the record a call waits on (:class:`_Pending`), and the callbacks a worker is wired with.

The parts (``_worker_life``, ``_worker_stderr``, ``_worker_channel``, ``_worker_reader``) are
mixins over this class; ``_worker.py`` says why mixins rather than objects that hold one
another.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import msgspec

from cordon.protocol import (
    DEFAULT_MAX_FRAME,
    Batch,
    CordonError,
    FrameSplitter,
    Hello,
    Incoming,
    InitializeParams,
    InitializeResult,
    ProgressParams,
    Request,
    Response,
)

from .._hostapi._redact import Redactor
from ._worker_exit import ExitInfo

if TYPE_CHECKING:
    from ._worker import WorkerProcess

__all__ = [
    "HOST_REQUESTS",
    "HOST_REQUEST_BYTES",
    "ExitProbe",
    "HostNotificationHandler",
    "HostRequestHandler",
    "StderrHandler",
]

#: Used by workers the runtime gives no redactor of its own (tests, tools).
_DEFAULT_REDACTOR: Final = Redactor()

#: Lines of stderr kept for WorkerCrashed.stderr_tail.
STDERR_TAIL_LINES: Final = 20

# The defaults of the bounds on worker → host requests, which the channel enforces (see its
# _on_request): here, where each worker takes them in __init__.
#: Worker → host requests served at once per worker, unless configured (``host-requests``).
#: Past it the host stops reading that worker's channel until one finishes: each request is
#: a task and its params in host memory, and a plugin firing requests without waiting for
#: answers must not turn that into unbounded host memory or starve the other plugins.
HOST_REQUESTS: Final = 64
#: Bytes of request params held by those requests at once (``host-request-memory``); one
#: request is always admitted whatever its size (it is at most one frame), so this bounds
#: the rest.
HOST_REQUEST_BYTES: Final = 16 * 1024 * 1024

HostRequestHandler = Callable[[str, msgspec.Raw], Awaitable[Any]]
#: A worker → host notification (``host/log``), served synchronously in channel order;
#: may return background work (an audit write) for the worker's task group to run.
HostNotificationHandler = Callable[
    [str, msgspec.Raw], Callable[[], Coroutine[Any, Any, None]] | None
]
StderrHandler = Callable[[bytes], None]
#: ``(returncode) -> (reason, detail)`` for an exit the host did not cause, or ``None``.
ExitProbe = Callable[[int | None], "tuple[str, str] | None"]


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


class _WorkerState:
    """The state every part of a worker reads and writes; see the module docstring."""

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
        # Whether $/placed was sent (to a worker whose initialize went before the move was
        # done: see _worker_life's _send_placed).
        self._placed_sent = False
        # initialize and a pipelined activate, sent; their answers to come (_worker_life).
        self._init_call: tuple[int, _Pending] | None = None
        self._activation: tuple[int, _Pending] | None = None
        self._params = params
        # Where the worker starts (cwd, HOME, TMPDIR) until initialize moves it into its own
        # scratch dir: the scratch dirs' parent, the same for every worker (a spare's too).
        # So the launch names no plugin: the zygote, which serves every plugin's forks, is
        # never handed one plugin's path for a later fork to find in its memory.
        self._home = (
            home
            if home is not None
            else os.path.dirname(params.scratch_dir.rstrip("/")) or "/"
            if params
            else "/"
        )
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
        #: The worker runs cordon's own worker command (no ``argv`` given): the host's code,
        #: so it is sent initialize before its hello (see _worker_life's ``run``).
        self._own_command = argv is None
        self._extra_env = extra_env or {}
        self.process: anyio.abc.Process | None = None
        self.pid: int | None = None
        self.protocol: int | None = None
        self.init_result: InitializeResult | None = None
        #: The layers the worker reported right after its lock-down, before the plugin's
        #: import: the only report the host believes (see LOCKED_DOWN in the protocol).
        self.lockdown_report: dict[str, str] | None = None
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

    if TYPE_CHECKING:
        # What each part calls of another, declared once here so that mypy checks every
        # part on its own against the same signatures (and each definition against them).
        # Typing only: at run time these names resolve to the parts' own methods.

        # _worker_life
        def kill_nowait(self, reason: str, detail: str | None = None) -> None: ...
        def _startup_error(self, what: str) -> CordonError: ...
        @property
        def params(self) -> InitializeParams: ...

        # _worker_stderr
        async def _pump_stderr(self) -> None: ...
        def _clean_tail(self) -> list[str]: ...

        # _worker_channel
        async def request(
            self,
            method: str,
            params: Any,
            *,
            timeout: float | None,
            on_progress: Callable[[ProgressParams], Any] | None = None,
            label: str | None = None,
        ) -> msgspec.Raw: ...

        async def _writer(self) -> None: ...
        def _put(self, frame: bytes, *, newline: bool = False) -> bool: ...
        def _send_nowait(self, frame: bytes) -> None: ...
        async def _timer(self) -> None: ...
        def _close_stdin(self) -> None: ...
        def _close_stdin_fd(self) -> None: ...
        def _on_frame(self, frame: bytes | object, msg: Incoming | Batch | None = None) -> bool: ...
        def _deliver(self, msg: Response) -> None: ...
        async def _admit_waiting(self) -> None: ...

        # _worker_reader
        def _attach_loop(self) -> None: ...
        async def _serve_reader(self, loop: asyncio.AbstractEventLoop) -> None: ...
        async def _read_stdout(self) -> None: ...
        def _close_stdout_fd(self) -> None: ...
