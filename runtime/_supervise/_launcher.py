"""How a worker process comes to exist, seen from the host: a started child is its pid, a
pidfd, and the host's ends of its pipes (stdin and stdout as raw fds for the channel, stderr
as a stream for the plugin's output). Two backends make one:

- :class:`SpawnLauncher`: a fresh ``python -I -m cordon.worker`` (fork + exec);
- ``ZygoteLauncher`` (``_zygote``): a fork of a pre-initialised template process, made the
  host's own child, so it is reaped and signalled exactly like a spawned one.

Either way the host reaps the child through its pidfd: :meth:`LaunchedProcess.wait` waits for
the pidfd to turn readable on the event loop and collects the exact status with
``waitid(P_PIDFD)``. asyncio's child watcher is never involved (its default, in 3.11, keeps a
``waitpid`` thread per child: 1,042 host threads at 1000 plugins).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Final, Protocol

import anyio
import anyio.abc

__all__ = [
    "PIPE_SIZE_MAX",
    "LaunchedProcess",
    "Launcher",
    "SpawnLauncher",
    "StdioPipes",
    "adopt",
    "exit_status",
    "spawn",
]

#: The capacity asked of each worker channel pipe (``F_SETPIPE_SZ``), if
#: ``/proc/sys/fs/pipe-max-size`` allows: a 1 MiB frame then crosses in one write instead of
#: sixteen 64 KiB round trips through the scheduler. Pages are only used when written, but the
#: kernel counts every pipe's *capacity* against its user's ``pipe-user-pages-soft`` (16384
#: pages by default): past it, every new pipe of that user gets 8 KiB. Sixty-four 1 MiB pipes
#: would reach it, so pipes are grown only where the quota does not bind (see _PIPE_SIZE).
PIPE_SIZE_MAX: Final = 1024 * 1024
#: Bytes asked per read of the worker's stderr (plugin output, read line by line).
STDERR_READ: Final = 65536
#: The capabilities that exempt a process from the pipe page quota (pipe.c).
CAP_SYS_ADMIN: Final = 21
CAP_SYS_RESOURCE: Final = 24


def _quota_binds() -> bool:
    """Whether ``pipe-user-pages-soft`` applies to this process (it has a non-zero value and
    we lack CAP_SYS_RESOURCE and CAP_SYS_ADMIN)."""
    try:
        with open("/proc/sys/fs/pipe-user-pages-soft") as f:
            if int(f.read()) == 0:
                return False
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, ValueError, StopIteration):
        return True
    return not caps & (1 << CAP_SYS_RESOURCE | 1 << CAP_SYS_ADMIN)


def _pipe_size() -> int:
    """The size to grow worker pipes to, or 0 to leave them at the default 64 KiB: where the
    page quota binds, a thousand workers' grown pipes would shrink everyone's new pipes."""
    if _quota_binds():
        return 0
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return min(PIPE_SIZE_MAX, int(f.read()))
    except (OSError, ValueError):
        return 0


#: Read once: the sysctls and our capabilities do not change under a running host in any
#: setup we support.
_PIPE_SIZE: Final = _pipe_size()


def _grow(fd: int) -> None:
    # Best effort: a refusal (EPERM, ENOMEM) leaves the pipe at its default 64 KiB, which
    # only costs large frames more round trips.
    if _PIPE_SIZE:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class StdioPipes:
    """The three pipes of a worker: the child's ends (``child``, for fds 0, 1, 2) and the
    host's (``wfd`` writes the channel, ``rfd`` reads it, ``efd`` reads stderr). Made by the
    host for either launcher; the child's ends are closed in the host once the child has
    them (:meth:`close_child`), the host's on any failure (:meth:`close_all`)."""

    def __init__(self) -> None:
        self.child: tuple[int, int, int] | None = None
        self.wfd = self.rfd = self.efd = -1
        self.renew()

    def renew(self) -> None:
        """Close whatever pipes this holds and make new ones."""
        self.close_all()
        fds: list[int] = []
        try:
            child_stdin, wfd = os.pipe()
            fds += [child_stdin, wfd]
            rfd, child_stdout = os.pipe()
            fds += [rfd, child_stdout]
            efd, child_stderr = os.pipe()
            fds += [efd, child_stderr]
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (wfd, rfd):
            _grow(fd)
        self.child = (child_stdin, child_stdout, child_stderr)
        self.wfd, self.rfd, self.efd = wfd, rfd, efd

    def close_child(self) -> None:
        if self.child is not None:
            for fd in self.child:
                os.close(fd)
            self.child = None

    def close_all(self) -> None:
        self.close_child()
        for fd in (self.wfd, self.rfd, self.efd):
            if fd >= 0:
                os.close(fd)
        self.wfd = self.rfd = self.efd = -1


def exit_status(info: os.waitid_result) -> int:
    """A ``waitid`` result as a ``Popen.returncode``: the exit code, or ``-signal``."""
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


class _FdReceiveStream(anyio.abc.ByteReceiveStream):
    """A pipe's read end as an anyio stream: waits on the event loop, reads with ``os.read``.
    Owns the fd."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def receive(self, max_bytes: int = STDERR_READ) -> bytes:
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    def read_now(self, limit: int) -> bytes:
        """What the pipe holds right now, up to ``limit`` bytes; never waits."""
        try:
            return os.read(self._fd, limit) if self._fd >= 0 else b""
        except OSError:
            return b""

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            anyio.notify_closing(fd)
            os.close(fd)


class LaunchedProcess(anyio.abc.Process):
    """A started worker: pid, pidfd (held until :meth:`aclose`, so the pid cannot be reused
    while the host still signals it), and its stderr stream. ``launcher`` names what started
    it. stdin and stdout are the channel's raw fds, owned by the worker (not streams here)."""

    def __init__(self, pid: int, pidfd: int, stderr_fd: int, launcher: str) -> None:
        self._pid = pid
        self.pidfd = pidfd
        self.launcher = launcher
        self._stderr = _FdReceiveStream(stderr_fd)
        self._returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def stdin(self) -> None:
        return None

    @property
    def stdout(self) -> None:
        return None

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        return self._stderr

    def stderr_now(self, limit: int = 4096) -> str:
        """Its stderr's unread bytes, up to ``limit`` (for a log line about a process whose
        stderr nobody pumps: the zygote's last words)."""
        return self._stderr.read_now(limit).decode("utf-8", "replace")

    def poll(self) -> int | None:
        """Reap the child if it has ended; its status, or ``None`` while it runs."""
        if self._returncode is None and self.pidfd >= 0:
            try:
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                # Not ours to reap (cannot happen for our launchers) or reaped elsewhere: we
                # cannot know the status, and must not wait forever for it.
                self._returncode = -signal.SIGKILL
                return self._returncode
            if info is not None:
                self._returncode = exit_status(info)
        return self._returncode

    async def wait(self) -> int:
        """Wait for the child to end and reap it (one waiter at a time: the worker's reaper)."""
        while self.poll() is None:
            # A pidfd turns readable when the process terminates; no thread, no SIGCHLD.
            await anyio.wait_readable(self.pidfd)
        assert self._returncode is not None
        return self._returncode

    def terminated(self) -> bool:
        """Has the child ended (reaped or a zombie)? Never blocks."""
        if self._returncode is not None:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def send_signal(self, sig: int) -> None:
        """Signal the child itself, through its pidfd: never a process that reused the pid."""
        if self._returncode is not None or self.pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close the stderr stream, and the pidfd once the child is reaped (until then the
        pidfd is the only safe handle on it)."""
        await self._stderr.aclose()
        if self._returncode is not None and self.pidfd >= 0:
            fd, self.pidfd = self.pidfd, -1
            anyio.notify_closing(fd)
            os.close(fd)


class Launcher(Protocol):
    """Starts a worker from its argv, env and working directory, with its three stdio fds."""

    #: ``"spawn"`` or ``"zygote"``: what ``cordon stats`` says started a worker.
    name: str

    async def start(
        self, argv: Sequence[str], *, env: dict[str, str], cwd: str, pipes: StdioPipes
    ) -> LaunchedProcess: ...

    async def aclose(self) -> None: ...


def adopt(pid: int, pipes: StdioPipes, launcher: str) -> LaunchedProcess:
    """Take a just-started child of this process: its pidfd (opened at once; only this
    process can reap it, so the pid is still this child's), the host's stderr end."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        # It cannot be gone (it is our unreaped child): only a kernel without pidfds gets
        # here, and the probe refused that kernel already. Do not leave it running.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    efd, pipes.efd = pipes.efd, -1
    return LaunchedProcess(pid, pidfd, efd, launcher)


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str,
    pipes: StdioPipes,
    pass_fds: Sequence[int] = (),
    name: str = "spawn",
) -> LaunchedProcess:
    """fork + exec ``argv`` in a new session, with only ``env``, the three stdio pipes and
    ``pass_fds``. Raises ``OSError`` if it cannot start (the pipes are then the caller's)."""
    assert pipes.child is not None
    stdin, stdout, stderr = pipes.child
    # Popen for its fork_exec (vfork where it can, close_fds, setsid, chdir, an exec error
    # reported back); never for its waiting: we reap through the pidfd, and mark the Popen
    # reaped so its finaliser never waits for the pid again.
    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    pipes.close_child()
    try:
        return adopt(popen.pid, pipes, name)
    finally:
        popen.returncode = 0


class SpawnLauncher:
    """fork + exec of the worker command: a new session, only the given env, no fd but the
    three stdio pipes. The interpreter starts and imports everything afresh (~70 ms)."""

    name = "spawn"

    async def start(
        self, argv: Sequence[str], *, env: dict[str, str], cwd: str, pipes: StdioPipes
    ) -> LaunchedProcess:
        return spawn(argv, env=env, cwd=cwd, pipes=pipes, name=self.name)

    async def aclose(self) -> None:
        return None


#: ``$CORDON_LAUNCHER``: replaces the *default* launcher (an explicit ``[runtime] launcher``
#: wins); CI runs the sandbox, quota and crash suites under ``spawn`` with it.
LAUNCHER_ENV: Final = "CORDON_LAUNCHER"
LAUNCHERS: Final = ("zygote", "spawn")


def zygote_unsupported() -> str | None:
    """Why this machine cannot fork workers from a zygote, or ``None`` if it can.

    The zygote needs: Linux on x86_64 (its raw ``clone`` uses that ABI's syscall number and
    argument order); glibc (it keeps glibc's thread descriptor right in the child, as glibc's
    ``fork`` does; the zygote checks the layout itself before its first fork and refuses to
    serve otherwise); pidfds (``pidfd_open``, ``waitid(P_PIDFD)``: Linux 5.4), which the host
    needs for spawned workers too. ``CLONE_PARENT`` works for any process but a namespace's
    init, which the zygote never is."""
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the fork server is built for Linux x86_64, not {sys.platform} {platform.machine()}"
    libc, _ = platform.libc_ver()
    if libc != "glibc":
        return f"the fork server needs glibc, not {libc or 'an unknown libc'}"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        return f"no pidfds on this kernel ({exc})"
    if not hasattr(os, "P_PIDFD"):
        return "this Python has no waitid(P_PIDFD)"
    return None


def choose_launcher(configured: str | None) -> tuple[str, str]:
    """The launcher to use, and why: ``configured`` (``[runtime] launcher``) if set, else
    ``$CORDON_LAUNCHER``, else the zygote; the zygote only where :func:`zygote_unsupported`
    finds nothing missing, spawn otherwise. A bad ``$CORDON_LAUNCHER`` is a ``ConfigError``."""
    from .._errors import ConfigError

    if configured is not None:
        wanted, source = configured, "[runtime] launcher"
    else:
        env = os.environ.get(LAUNCHER_ENV)
        if env is None or env == "":
            wanted, source = "zygote", "the default"
        elif env in LAUNCHERS:
            wanted, source = env, f"${LAUNCHER_ENV}"
        else:
            raise ConfigError(
                f"${LAUNCHER_ENV}={env[:40]!r} is not a launcher: use one of {', '.join(LAUNCHERS)}"
            )
    if wanted == "zygote":
        missing = zygote_unsupported()
        if missing is not None:
            return "spawn", f"{source} asked for zygote, but {missing}"
    return wanted, source
