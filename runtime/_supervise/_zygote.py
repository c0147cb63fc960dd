"""The zygote, seen from the host: start the template process (``cordon.worker._zygote``) on
first use, ask it for forks, and stop it with the runtime.

A fork request sends the worker's env and cwd with its three stdio fds over a
``SOCK_SEQPACKET`` socketpair and waits (bounded: :data:`FORK_TIMEOUT`) for the pid. The
child is the host's own (``CLONE_PARENT``): the host opens its pidfd at once and from then on
it is reaped and signalled exactly like a spawned worker (``_launcher.LaunchedProcess``). The
zygote never learns how its children end and holds nothing of theirs.

If the zygote dies (killed, or it fails a request), it is restarted for the next start, at
most :data:`RESTARTS` times per runtime; past that, and whenever it cannot start at all, the
worker is spawned instead, with a log line saying why.
"""

from __future__ import annotations

import array
import contextlib
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final

import anyio
import msgspec
import structlog

from cordon.protocol import InternalError

from ._launcher import LaunchedProcess, SpawnLauncher, StdioPipes, adopt, spawn

__all__ = ["FORK_TIMEOUT", "RESTARTS", "ZygoteLauncher"]

log = structlog.get_logger("cordon")

#: A fork is ~2 ms; the zygote's start is an interpreter and the worker's imports (~100 ms,
#: far more on a loaded 2-core CI box). Past these the zygote is presumed wedged: it is
#: killed and the worker spawned.
FORK_TIMEOUT: Final = 10.0
START_TIMEOUT: Final = 30.0
#: Zygote restarts per runtime after it died. A zygote that keeps dying is not worth a
#: restart per plugin start: past this every start is a spawn.
RESTARTS: Final = 3
#: A reply is a small JSON object.
REPLY_MAX: Final = 4096
#: Characters of a dead zygote's stderr (a traceback's end) put in the log line.
STDERR_SHOWN: Final = 1000
#: How long a stopping zygote may take to leave after its socket closed, before SIGKILL.
STOP_WAIT: Final = 2.0


class _Zygote:
    """One running template process: its socket and the process itself (our child)."""

    def __init__(self, sock: socket.socket, process: LaunchedProcess) -> None:
        self.sock = sock
        self.process = process
        #: The end of its stderr, read once it has exited (a traceback, if it died of one).
        self.last_words = ""

    async def request(self, payload: bytes, fds: Sequence[int]) -> dict[str, Any]:
        sock = self.sock
        while True:
            try:
                sock.sendmsg(
                    [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
                break
            except BlockingIOError:
                await anyio.wait_writable(sock)
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        while True:
            try:
                data = self.sock.recv(REPLY_MAX)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            if not data:
                raise ConnectionError("the zygote closed its socket")
            answer = msgspec.json.decode(data)
            if not isinstance(answer, dict):
                raise ConnectionError(f"the zygote answered {answer!r}")
            return answer

    async def stop(self) -> None:
        """Close the socket (the zygote leaves on EOF), then reap it; SIGKILL if it lingers."""
        with contextlib.suppress(OSError):
            anyio.notify_closing(self.sock)
        self.sock.close()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(STOP_WAIT):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            self.last_words = self.process.stderr_now()[-STDERR_SHOWN:].strip()
            await self.process.aclose()


class ZygoteLauncher:
    """Forks workers from a zygote; spawns them when it cannot (see the module docstring).
    ``python`` is the interpreter of the zygote (and of the fallback spawns); ``env`` the
    zygote's own allow-listed environment."""

    name = "zygote"

    def __init__(self, python: str | None = None) -> None:
        self._python = python or sys.executable
        self._zygote: _Zygote | None = None
        self._lock = anyio.Lock()
        self._restarts = 0
        self._broken: str | None = None
        self._spawn = SpawnLauncher()
        #: The zygote's pid while it runs (tests and ``cordon doctor`` look at it).
        self.pid: int | None = None
        #: Forks served (a spawned fallback is not counted).
        self.forks = 0

    async def _start(self, env: dict[str, str]) -> _Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pipes = StdioPipes()
            try:
                process = spawn(
                    [self._python, "-I", "-m", "cordon.worker._zygote", str(theirs.fileno())],
                    env=env,
                    cwd="/",
                    pipes=pipes,
                    pass_fds=(theirs.fileno(),),
                    name=self.name,
                )
            except OSError as exc:
                ours.close()
                raise InternalError(f"cannot start the zygote: {exc}") from exc
            finally:
                # Its stdin reads EOF, its stdout is a closed pipe: it speaks on its socket.
                # Its stderr (a traceback if it dies) is kept by the process, for the log.
                pipes.close_all()
        finally:
            theirs.close()
        ours.setblocking(False)
        zygote = _Zygote(ours, process)
        try:
            with anyio.fail_after(START_TIMEOUT):
                hello = await zygote.reply()
        except BaseException as exc:
            await zygote.stop()
            if isinstance(exc, TimeoutError | ConnectionError | ValueError):
                said = zygote.last_words
                raise InternalError(
                    f"the zygote did not start: {exc!r} (status {zygote.process.returncode})"
                    + (f": {said}" if said else "")
                ) from None
            raise
        if "ready" not in hello:
            await zygote.stop()
            raise InternalError(f"the zygote refused to serve: {hello.get('error')}")
        return zygote

    async def _zygote_for(self, env: dict[str, str]) -> _Zygote | None:
        z = self._zygote
        if z is not None and z.process.poll() is not None:
            log.warning(
                "zygote.died",
                pid=z.process.pid,
                status=z.process.returncode,
                stderr=z.process.stderr_now()[-STDERR_SHOWN:],
            )
            await self._drop()
            if self._restarts >= RESTARTS:
                self._broken = f"the zygote died {RESTARTS + 1} times"
            self._restarts += 1
        if self._broken is not None:
            return None
        if self._zygote is None:
            try:
                self._zygote = await self._start(env)
            except InternalError as exc:
                self._broken = exc.message
                log.warning("zygote.unavailable", why=exc.message, fallback="spawn")
                return None
            self.pid = self._zygote.process.pid
        return self._zygote

    async def _drop(self) -> None:
        z, self._zygote, self.pid = self._zygote, None, None
        if z is not None:
            await z.stop()

    async def start(
        self, argv: Sequence[str], *, env: dict[str, str], cwd: str, pipes: StdioPipes
    ) -> LaunchedProcess:
        if list(argv) != self.worker_argv():
            # Not the worker command (a test's stand-in peer, another interpreter): only a
            # spawn runs exactly what was asked.
            return await self._spawn.start(argv, env=env, cwd=cwd, pipes=pipes)
        # One request at a time (a reply names no request). Waiting for the turn may be
        # cancelled; the turn itself is shielded and bounded (START_TIMEOUT, FORK_TIMEOUT): a
        # caller cancelled between request and reply would leave the reply to be read as the
        # next fork's, and a forked child nobody adopted.
        async with self._lock:
            with anyio.CancelScope(shield=True):
                process = await self._fork_or_spawn(argv, env=env, cwd=cwd, pipes=pipes)
        return process

    @property
    def broken(self) -> str | None:
        """Why every start is now a spawn (the zygote could not start, or died too often)."""
        return self._broken

    def worker_argv(self) -> list[str]:
        return [self._python, "-I", "-m", "cordon.worker"]

    async def _fork_or_spawn(
        self, argv: Sequence[str], *, env: dict[str, str], cwd: str, pipes: StdioPipes
    ) -> LaunchedProcess:
        assert pipes.child is not None
        zygote = await self._zygote_for(_zygote_env(env))
        if zygote is None:
            return await self._spawn.start(argv, env=env, cwd=cwd, pipes=pipes)
        payload = msgspec.json.encode({"env": env, "cwd": cwd})
        try:
            with anyio.fail_after(FORK_TIMEOUT):
                answer = await zygote.request(payload, pipes.child)
        except (TimeoutError, OSError, ValueError) as exc:
            # Wedged or dead mid-request: it may have forked a child that has these pipes,
            # so the spawned replacement gets new ones (that child, if any, reads EOF and
            # leaves). The zygote is replaced at the next start.
            log.warning("zygote.failed", error=repr(exc), fallback="spawn")
            await self._drop()
            self._restarts += 1
            if self._restarts > RESTARTS:
                self._broken = f"the zygote failed {self._restarts} times"
            pipes.renew()
            return await self._spawn.start(argv, env=env, cwd=cwd, pipes=pipes)
        pid = answer.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            # Refused before forking (nothing has the pipes but us).
            log.warning("zygote.refused", error=str(answer.get("error")), fallback="spawn")
            return await self._spawn.start(argv, env=env, cwd=cwd, pipes=pipes)
        pipes.close_child()
        self.forks += 1
        return adopt(pid, pipes, self.name)

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


def _zygote_env(worker_env: dict[str, str]) -> dict[str, str]:
    """The zygote's environment: a worker's minus what is per worker (home, temp dir)."""
    env = {k: v for k, v in worker_env.items() if k not in ("HOME", "TMPDIR")}
    env["HOME"] = env["TMPDIR"] = "/"
    return env
