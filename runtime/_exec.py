"""Run an allowlisted command on the host for a plugin (the worker itself cannot exec).

Rules, all enforced here on the host:

* ``argv[0]`` is a bare command name (``git``, ``rg``): no ``/``, no ``..``, nothing but
  ``[A-Za-z0-9_.+-]``. It is resolved on the policy's ``PATH`` (the host's, unless the
  operator set one), so a plugin cannot point at a file of its own.
* The permission is ``exec:<argv[0]>``, checked by the caller (HostAPI) before :meth:`run`.
* argv only, never a shell; stdin is ``/dev/null``; the environment is minimal (``PATH``,
  ``LANG``, ``HOME`` = the working directory) — the host's secrets in its environment do not
  pass through.
* The command runs in its own session (process group). On timeout the whole group is killed
  and :class:`ExecTimeout` raised; a grandchild that keeps the pipes open does not keep us
  waiting past the deadline either.
* stdout and stderr are each kept up to ``max_output`` bytes; the rest is read and thrown
  away (so the command never blocks on a full pipe) and ``truncated`` is set.
* At most ``max_concurrent`` commands per policy (one policy per plugin) run at once.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from subprocess import DEVNULL, PIPE
from typing import Final

import anyio
import anyio.abc
import msgspec

from cordon.protocol import CallTimeout, CommandNotFound, InvalidParams

__all__ = ["CommandNotFound", "ExecPolicy", "ExecResult", "ExecTimeout", "check_argv"]

_COMMAND: Final = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,63}$")
MAX_ARGS: Final = 256
MAX_ARGV_BYTES: Final = 128 * 1024
#: After the command exits, how long its pipes may stay open (a daemonised grandchild).
PIPE_GRACE: Final = 1.0


class ExecTimeout(CallTimeout):
    """The command ran past its timeout and was killed (with its process group). A
    :class:`CallTimeout`, so it arrives typed on the worker side."""

    timeout: float | None
    method: str | None
    plugin: str | None

    def _default_message(self) -> str:
        return f"{self.method!r} for plugin {self.plugin!r} timed out after {self.timeout} s"


class ExecResult(msgspec.Struct):
    returncode: int
    stdout: str
    stderr: str
    truncated: bool


def check_argv(argv: object) -> list[str]:
    """``argv`` if it is a valid command line, else :class:`InvalidParams` naming the part."""
    if not isinstance(argv, list | tuple) or not argv:
        raise InvalidParams("argv must be a non-empty list of strings", field="argv")
    if len(argv) > MAX_ARGS:
        raise InvalidParams(f"argv has over {MAX_ARGS} items", field="argv")
    total = 0
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidParams(f"argv[{i}] must be a string", field=f"argv[{i}]")
        if "\x00" in arg:
            raise InvalidParams(f"argv[{i}] contains NUL", field=f"argv[{i}]")
        try:
            total += len(arg.encode("utf-8")) + 1
        except UnicodeEncodeError:
            raise InvalidParams(f"argv[{i}] is not valid text", field=f"argv[{i}]") from None
    if total > MAX_ARGV_BYTES:
        raise InvalidParams(f"argv is over {MAX_ARGV_BYTES} bytes", field="argv")
    cmd = argv[0]
    if not _COMMAND.match(cmd) or cmd in (".", ".."):
        raise InvalidParams(
            f"argv[0] must be a bare command name (no path), got {cmd!r}", field="argv[0]"
        )
    return list(argv)


class ExecPolicy:
    """How one plugin's ``host/exec`` calls run. The permission check is not here."""

    def __init__(
        self,
        *,
        path: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_output: int = 1024 * 1024,
        default_timeout: float = 10.0,
        max_timeout: float = 60.0,
        max_concurrent: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path if path is not None else os.environ.get("PATH", os.defpath)
        self.cwd = os.fspath(cwd) if cwd is not None else tempfile.gettempdir()
        self.max_output = max_output
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.env = dict(env) if env is not None else None
        self._slots = anyio.Semaphore(max_concurrent)

    def resolve(self, command: str, *, plugin: str | None = None) -> str:
        """Absolute path of ``command`` on the policy's PATH, or :class:`CommandNotFound`."""
        found = shutil.which(command, path=self.path)
        if found is None:
            raise CommandNotFound(command=command, plugin=plugin)
        return os.path.abspath(found)

    def timeout_for(self, timeout: float | None) -> float:
        if timeout is None:
            return self.default_timeout
        if not (timeout > 0) or math.isinf(timeout) or math.isnan(timeout):
            raise InvalidParams("timeout must be a positive number", field="timeout")
        if timeout > self.max_timeout:
            raise InvalidParams(
                f"timeout {timeout} s exceeds the limit of {self.max_timeout} s", field="timeout"
            )
        return float(timeout)

    def _env(self) -> dict[str, str]:
        if self.env is not None:
            return dict(self.env)
        return {"PATH": self.path, "LANG": "C.UTF-8", "HOME": self.cwd}

    async def run(
        self, argv: Sequence[str], *, timeout: float | None = None, plugin: str | None = None
    ) -> ExecResult:
        args = check_argv(list(argv))
        limit = self.timeout_for(timeout)
        exe = self.resolve(args[0], plugin=plugin)
        async with self._slots:
            return await self._run([exe, *args[1:]], args[0], limit, plugin)

    async def _run(
        self, argv: list[str], name: str, timeout: float, plugin: str | None
    ) -> ExecResult:
        try:
            proc = await anyio.open_process(
                argv,
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=PIPE,
                cwd=self.cwd,
                env=self._env(),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandNotFound(command=name, plugin=plugin) from None
        except PermissionError:
            raise CommandNotFound(
                f"command {name!r} is not executable", command=name, plugin=plugin
            ) from None
        out = bytearray()
        err = bytearray()
        truncated = False
        open_pipes = 2
        pipes_closed = anyio.Event()

        async def pump(stream: anyio.abc.ByteReceiveStream | None, buf: bytearray) -> None:
            nonlocal truncated, open_pipes
            try:
                if stream is not None:
                    async for chunk in stream:
                        room = self.max_output - len(buf)
                        if len(chunk) > room:
                            # Keep reading (and discarding): a command blocked on a full
                            # pipe would only end by timing out.
                            truncated = True
                            chunk = chunk[: max(room, 0)]
                        buf += chunk
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                open_pipes -= 1
                if open_pipes == 0:
                    pipes_closed.set()

        try:
            with anyio.move_on_after(timeout) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, proc.stdout, out)
                    tg.start_soon(pump, proc.stderr, err)
                    await proc.wait()
                    # Output written just before exit is still in the pipes; read it. But a
                    # grandchild holding the pipes open must not hold the plugin's call.
                    with anyio.move_on_after(PIPE_GRACE):
                        await pipes_closed.wait()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                # Always, not only on timeout: whatever the command left running in its
                # session (a daemonised helper) goes with it.
                _kill_group(proc.pid)
                # aclose() waits for the (killed) process and closes the transport too; a
                # transport left to the garbage collector complains after the loop is gone.
                with anyio.move_on_after(5):
                    try:
                        await proc.aclose()
                    except (OSError, anyio.BrokenResourceError):
                        pass
        timed_out = scope.cancelled_caught
        if timed_out:
            raise ExecTimeout(timeout=timeout, method=f"exec:{name}", plugin=plugin)
        assert proc.returncode is not None
        return ExecResult(
            returncode=proc.returncode,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            truncated=truncated,
        )


def _kill_group(pgid: int) -> None:
    # The session leader may already be reaped; its id stays the group's id while any member
    # lives (POSIX does not reuse a pid that still names a process group), and ESRCH when the
    # group is gone is harmless.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
