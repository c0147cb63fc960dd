"""The worker's launch sequence, as ordered steps in one place.

    protect channel → preload → announce → receive config → apply limits → lock down
    → capture logging → await placement → import plugin → report ready → serve (activate
    arrives as the first request)

Each step is a function of the shared :class:`Launch` state, so the sandbox and a later
pre-forked launcher slot in by replacing or reordering entries of :data:`STEPS`, not by
rewriting the sequence. Nothing from the plugin is imported before ``lock_down`` has run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import msgspec

from cordon.protocol import (
    HELLO,
    INITIALIZE,
    LOCKED_DOWN,
    OVERSIZE,
    SUPPORTED_PROTOCOLS,
    CordonError,
    FrameSplitter,
    IncompatibleProtocol,
    InitializeParams,
    InitializeResult,
    InvalidRequest,
    Notification,
    PluginError,
    Request,
    decode_frame,
    encode_error,
    encode_notification,
    encode_result,
    error_to_wire,
)
from cordon.protocol._methods import PLACED

__all__ = ["EXIT_CODES", "STEPS", "Launch", "main", "warm"]

#: Exit statuses the host classifies; documented in the README.
EXIT_OK: Final = 0
EXIT_PARENT_GONE: Final = 70
EXIT_BAD_HANDSHAKE: Final = 71
EXIT_SANDBOX_REFUSED: Final = 72
EXIT_PLUGIN_FAILED: Final = 73
EXIT_CODES: Final = {
    EXIT_PARENT_GONE: "host went away before the worker was ready",
    EXIT_BAD_HANDSHAKE: "handshake failed",
    EXIT_SANDBOX_REFUSED: "sandbox refused to start",
    EXIT_PLUGIN_FAILED: "plugin failed to import",
}

PR_SET_PDEATHSIG: Final = 1
#: The version the worker announces in its hello. A constant, not importlib.metadata: that
#: import alone is ~20 ms of every worker's cold start. Kept equal to pyproject's version
#: (tests/test_launch_version.py checks it against the installed metadata).
CORDON_VERSION: Final = "0.1.0"


#: Made at import (in the zygote: once for every fork): a decoder's construction evaluates
#: the protocol structs' annotations, ~0.8 ms of a worker's start if left to the first decode.
_INIT_DECODER: Final = msgspec.json.Decoder(InitializeParams)


class LaunchAbort(Exception):
    def __init__(self, status: int, error: CordonError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


@dataclass
class Launch:
    rfd: int = -1
    wfd: int = -1
    splitter: FrameSplitter = field(default_factory=FrameSplitter)
    leftover: list[Any] = field(default_factory=list)
    init_id: int | str | None = None
    init: InitializeParams | None = None
    report: dict[str, str] = field(default_factory=dict)
    plugin: Any = None
    #: Plugin threads may log (one frame per record, see capture_logging) while we write.
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, frame: bytes) -> None:
        with self.write_lock:
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]


def protect_channel(st: Launch) -> None:
    """Move the RPC channel off fds 0/1 so nothing the plugin prints can corrupt it."""
    st.rfd = os.dup(0)
    st.wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    host_pid = int(os.environ.get("CORDON_HOST_PID", "0") or 0)
    if host_pid:
        # Backstop for EOF on the channel: die with the host even if we are stuck.
        global _prctl
        prctl, _prctl = _prctl or _load_prctl(), None  # no libc handle kept past this
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != host_pid:
            os._exit(EXIT_PARENT_GONE)


#: ``prctl`` from libc, loaded by the zygote's :func:`warm` for its forks (loading it is
#: ~0.1 ms of a worker's start) and dropped by each worker once used.
_prctl: Any = None


def _load_prctl() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def announce(st: Launch) -> None:
    hello = {"protocols": list(SUPPORTED_PROTOCOLS), "pid": os.getpid(), "cordon": CORDON_VERSION}
    st.write(encode_notification(HELLO, hello))


def preload(st: Launch) -> None:
    """Import what the later steps need (the event loop, the server, the sandbox) before the
    hello: a warm spare is claimable from its hello on, and a claim must not wait for these.
    A fresh worker pays the same either way. cordon's own modules only: nothing of the
    plugin, no thread started (Landlock needs a single thread)."""
    modules = sys.modules
    if _PRELOADED[0] in modules and _PRELOADED[1] in modules:
        # A zygote's fork: the template imported them. Asking again is no free lookup (the
        # package's ``from . import`` runs importlib's Python: ~85 us, ~30 copied pages).
        return
    import asyncio  # noqa: F401

    from . import _server  # noqa: F401
    from ._sandbox import _lockdown  # noqa: F401


#: What :func:`preload` imports (asyncio comes with the server).
_PRELOADED: Final = (f"{__package__}._server", f"{__package__}._sandbox._lockdown")


def warm() -> None:
    """Run by the zygote before it serves forks: first-use costs every worker's launch would
    pay alike, paid once in the template. cordon's own code only (nothing of a plugin), and
    nothing that holds an fd or a thread: each fork makes its own event loop."""
    import asyncio

    from ._plugin import warm as warm_plugin

    global _prctl
    warm_plugin()
    # The policy object asyncio.run asks for (made on first use, then shared by design).
    asyncio.get_event_loop_policy()
    # One event loop run and closed (its epoll fd and self-pipe with it), the way a worker
    # runs its own: that one then runs code and fills caches the template already ran.
    run_loop(_nothing())
    _prctl = _load_prctl()
    for entry in sys.path:
        _is_host_site(entry)


async def _nothing() -> None:
    return None


def receive_config(st: Launch) -> None:
    """Block until the host's ``initialize`` request; the host holds the deadline."""
    frames: list[Any] = []
    while not frames:
        data = os.read(st.rfd, 65536)
        if not data:
            os._exit(EXIT_PARENT_GONE)
        frames = st.splitter.feed(data)
    first, st.leftover = frames[0], frames[1:]
    msg = decode_frame(first) if first is not OVERSIZE else None
    if not isinstance(msg, Request) or msg.method != INITIALIZE:
        raise LaunchAbort(
            EXIT_BAD_HANDSHAKE, InvalidRequest("expected an 'initialize' request first")
        )
    st.init_id = msg.id
    try:
        st.init = _INIT_DECODER.decode(msg.params)
    except msgspec.DecodeError as exc:
        raise LaunchAbort(
            EXIT_BAD_HANDSHAKE, InvalidRequest(f"bad initialize params: {exc}")
        ) from None
    if st.init.protocol not in SUPPORTED_PROTOCOLS:
        raise LaunchAbort(
            EXIT_BAD_HANDSHAKE,
            IncompatibleProtocol(ours=list(SUPPORTED_PROTOCOLS), theirs=[st.init.protocol]),
        )
    st.splitter.max_frame = st.init.max_frame


def apply_limits(st: Launch) -> None:
    from ._sandbox import apply_limits as _apply

    assert st.init is not None
    st.report.update(_apply(st.init.limits))


def lock_down(st: Launch) -> None:
    from ._sandbox import lock_down as _lock_down

    assert st.init is not None
    init = st.init
    try:
        st.report.update(
            _lock_down(
                plugin_id=init.plugin_id,
                policy=init.sandbox,
                limits=init.limits,
                plugin_dir=init.plugin_dir,
                scratch_dir=init.scratch_dir,
                # The plugin's environment: readable so it can import from it, never
                # writable (one env is shared, hard-linked, by every plugin with its lock).
                read_paths=list(init.site_paths),
                keep_fds=[0, 1, 2, st.rfd, st.wfd],
            )
        )
    except CordonError as exc:
        raise LaunchAbort(EXIT_SANDBOX_REFUSED, exc) from None
    # Before anything of the plugin runs (the import is a later step): the one report the host
    # can trust, since from the import on the plugin can write to the channel itself.
    st.write(encode_notification(LOCKED_DOWN, {"sandbox": st.report}))
    with contextlib.suppress(OSError):
        os.chdir(init.scratch_dir)
    # A warm spare was spawned before it knew its plugin: home and temp files go to the
    # plugin's scratch dir, the one place it may write.
    os.environ["HOME"] = os.environ["TMPDIR"] = init.scratch_dir


def capture_logging(st: Launch) -> None:
    """From here on, standard ``logging`` records (the plugin's import included) go to the
    host as structured records; the server takes over sending them once it serves."""
    from ._logging import install

    install(st.write)


def await_placement(st: Launch) -> None:
    """When ``initialize`` said the host is still moving us into our cgroups (it sent
    ``initialize`` without waiting for the move, which then overlaps our lock-down): block
    until its ``$/placed``, so that the plugin's first line runs under the group's memory and
    task limits. Frames that came before it (``activate``, pipelined) are kept, in order,
    for the server."""
    assert st.init is not None
    if not st.init.await_placed:
        return
    kept: list[Any] = []
    frames, st.leftover = st.leftover, []
    while True:
        for i, frame in enumerate(frames):
            if isinstance(frame, bytes) and PLACED.encode() in frame:
                msg = decode_frame(frame)
                if isinstance(msg, Notification) and msg.method == PLACED:
                    st.leftover = kept + frames[i + 1 :]
                    return
            kept.append(frame)
        data = os.read(st.rfd, 65536)
        if not data:
            os._exit(EXIT_PARENT_GONE)
        frames = st.splitter.feed(data)


def import_plugin(st: Launch) -> None:
    from ._entry import import_entry_module
    from ._plugin import Plugin

    assert st.init is not None
    module_name, _, attr = st.init.entry.partition(":")
    sys.dont_write_bytecode = True
    sys.path.insert(0, st.init.plugin_dir)
    # The plugin's environment, added by hand after lock-down: ``site.addsitedir`` would run
    # the env's ``.pth`` files, and anything imported before lock-down ran unconfined. Placed
    # after the standard library (never shadowed) and before the host's site-packages, so a
    # dependency the plugin declared wins over a copy the host happens to carry (except a
    # module the worker has already imported: that one stays the worker's).
    env_paths = [p for p in st.init.site_paths if p not in sys.path]
    if env_paths:
        # Only then: placing them resolves the plugin dir's real path (an lstat per
        # component, ~0.1 ms and ~20 copied pages of a forked worker's start).
        at = next((i for i, p in enumerate(sys.path) if _is_host_site(p)), len(sys.path))
        sys.path[at:at] = env_paths
    try:
        module = import_entry_module(module_name, st.init.plugin_dir)
        plugin = getattr(module, attr or "plugin")
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))[-16384:]
        raise LaunchAbort(
            EXIT_PLUGIN_FAILED,
            PluginError(
                f"importing {st.init.entry!r} failed: {type(exc).__name__}: {exc}",
                exc_type=type(exc).__name__,
                exc_message=str(exc),
                traceback=tb,
                plugin=st.init.plugin_id,
            ),
        ) from None
    if not isinstance(plugin, Plugin):
        raise LaunchAbort(
            EXIT_PLUGIN_FAILED,
            PluginError(
                f"{st.init.entry!r} is a {type(plugin).__name__}, not a cordon.worker.Plugin",
                exc_type="TypeError",
                exc_message="entry is not a Plugin",
                plugin=st.init.plugin_id,
            ),
        )
    st.plugin = plugin


#: ``sys.path`` entry -> whether its real path is one of the interpreter's site-packages.
#: Filled for the zygote's own ``sys.path`` by :func:`warm`, so a forked worker resolves only
#: its plugin's entries (a realpath is an lstat per path component: ~36 of them otherwise).
_host_site_memo: dict[str, bool] = {}
_host_sites: frozenset[str] | None = None


def _is_host_site(entry: str) -> bool:
    global _host_sites
    known = _host_site_memo.get(entry)
    if known is None:
        if _host_sites is None:
            import site

            _host_sites = frozenset(os.path.realpath(p) for p in site.getsitepackages())
        known = _host_site_memo[entry] = os.path.realpath(entry) in _host_sites
    return known


def report_ready(st: Launch) -> None:
    result = InitializeResult(
        contributions=st.plugin.contributions(),
        sandbox=st.report,
        activate_hooks=len(st.plugin.activate_hooks),
    )
    st.write(encode_result(st.init_id, result))


def serve(st: Launch) -> None:
    from ._server import Server

    assert st.init is not None
    server = Server(
        rfd=st.rfd,
        wfd=st.wfd,
        splitter=st.splitter,
        plugin=st.plugin,
        plugin_id=st.init.plugin_id,
        scratch_dir=st.init.scratch_dir,
        faults=st.init.faults,
    )
    run_loop(server.serve(st.leftover))
    server.shutdown_threads()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` without its ``Runner``: the same new loop, set as the thread's,
    and the same ending (tasks cancelled, async generators and the default executor shut
    down, the loop closed), without the Runner's context copy and SIGINT handler (a SIGINT
    ends in ``KeyboardInterrupt`` out of here either way; the worker has its own session, and
    the host stops it by closing stdin, or SIGKILL). The Runner's first use was ~0.14 ms and
    ~45 copied pages of a forked worker's start, on the path to its first answer."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


STEPS: Final[tuple[Callable[[Launch], None], ...]] = (
    protect_channel,
    preload,
    announce,
    receive_config,
    apply_limits,
    lock_down,
    capture_logging,
    await_placement,
    import_plugin,
    report_ready,
    serve,
)


def _exit(status: int) -> NoReturn:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    # Skip interpreter teardown: plugin threads or atexit hooks must not keep us alive.
    os._exit(status)


def main() -> NoReturn:
    st = Launch()
    try:
        for step in STEPS:
            step(st)
    except LaunchAbort as abort:
        if st.wfd >= 0:
            with contextlib.suppress(OSError):
                st.write(encode_error(st.init_id, error_to_wire(abort.error)))
        print(f"cordon worker: {abort.error.message}", file=sys.stderr)
        _exit(abort.status)
    _exit(EXIT_OK)
