"""Run an allowlisted command on the host for a plugin (the worker itself cannot exec).

The threat: the plugin chooses the arguments and controls files (its scratch dir, its
``fs-write`` paths, its own source tree). A command that reads *configuration or code* from
any of those — ``$HOME/.gitconfig`` with ``core.fsmonitor``, ``$HOME/.kube/config`` with an
exec credential plugin, ``$HOME/.docker/cli-plugins/``, a repo config reached by ``git -C``,
``--kubeconfig=<scratch>/x``, ``/proc/<worker>/root/...`` — would run the plugin's code on the
host, outside every sandbox layer. Rules, all enforced here on the host:

* ``argv[0]`` is a bare command name (``git``, ``rg``): no ``/``, no ``..``, nothing but
  ``[A-Za-z0-9_.+-]``. It is resolved on the policy's ``PATH`` (the host's, unless the
  operator set one) with every entry inside a plugin-writable or denied tree, and every
  relative or empty entry, dropped.
* The permission is ``exec:<argv[0]>`` (checked by HostAPI); the operator may narrow it to
  argument patterns (:mod:`._exec_rules`), checked by :meth:`ExecPolicy.check`.
* **A fresh, empty, host-owned directory per run** (``mkdtemp``, mode 0700, under a base that
  is no plugin-writable path) is the command's ``cwd``, ``HOME`` and ``TMPDIR``; it is removed
  after the run, on success, error, timeout or cancellation alike. So no dotfile a plugin
  wrote is ever where the command looks for its own configuration.
* **The environment is an allowlist**: ``PATH`` (filtered), ``LANG=C.UTF-8``, ``HOME`` and
  ``TMPDIR`` = the fresh dir, ``GIT_CEILING_DIRECTORIES`` = the runs' base (git finds no
  repository above its run dir, such as one holding the state dir), plus what the
  operator's ``env`` table for the command sets.
  Nothing passes through from the host's environment; ``XDG_*`` are left unset, so they
  default under the fresh ``HOME``.
* **The command runs under a Landlock lock-down of its own** (:mod:`._exec_landlock`): it may
  read and execute the system but not the state dir (every scratch dir, the databases), any
  plugin directory or any ``fs-write`` path, nor open another process's ``/proc/<pid>`` (the
  host's ``environ`` included), and may write only its fresh dir, ``/dev/null`` and the
  operator's ``write`` paths; signals cannot leave it; ``no_new_privs`` is set. This is
  the layer that defends the class: however an argument, a config file or ``/proc`` spells a
  path into a plugin's files, the kernel refuses the open. With ``lockdown="require"`` (the
  runtime's choice for ``sandbox = "strict"``) a host without Landlock runs no command.
* Arguments are also checked (:mod:`._exec_paths`), for a clear early error and as a second
  layer where Landlock is missing: an argument, any text after an ``=`` in it, or an
  ``@file`` name that resolves (from the fresh cwd, following symlinks) into a
  plugin-writable or denied tree, or that names anything under ``/proc``, is refused with
  :class:`PermissionDenied`, as is a call whose arguments need more lookups than a per-call
  budget. Its limit: only those spellings are seen (not ``-fPATH`` glued to a short option,
  not a path inside a value like ``key:path``) — which is why the lock-down exists.
* Why Landlock on the command and not only argument checks: the class is "any path the
  command opens", and arguments are one of many ways to name one (config files naming
  others, environment, symlinks, ``/proc``); the kernel judges the resolved path. Why a
  launcher (``python -I -S``, ~10-20 ms a run) and not ``preexec_fn``: the host has threads.
* argv only, never a shell. stdin is ``/dev/null`` unless the call gives ``input`` (at most
  :data:`MAX_INPUT` bytes) and the operator set ``input = true`` for the command, which
  config allows only with ``allow`` patterns (stdin can be a script: :mod:`._exec_rules`).
  The host writes it concurrently with reading stdout/stderr and stops at exit or timeout,
  so a command that never reads it neither deadlocks nor holds the call.
* The command runs in its own session (process group). On timeout the whole group is killed
  and :class:`ExecTimeout` raised; a grandchild that keeps the pipes open does not keep us
  waiting past the deadline either.
* stdout and stderr are each kept up to ``max_output`` bytes; the rest is read and thrown
  away (so the command never blocks on a full pipe) and ``truncated`` is set.
* At most ``max_concurrent`` commands per policy (one policy per plugin) run at once.

What stays: ``exec:X`` is as powerful as X with the arguments a pattern admits; a daemon the
command talks to (dockerd, a Kubernetes API server) and the network are outside the
lock-down. ``cordon plugin info``/``doctor`` flag known escalators
(:data:`._exec_rules.ESCALATORS`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from subprocess import DEVNULL, PIPE
from typing import Final, Literal, TypeAlias

import anyio
import anyio.abc
import msgspec

from cordon.protocol import (
    CallTimeout,
    CommandNotFound,
    InvalidParams,
    PermissionDenied,
)

from .._errors import ConfigError, Problem
from .._settings._config import Config, PluginSettings
from .._settings._exec_rules import ExecRule, matches_any
from . import _exec_landlock as landlock
from ._exec_paths import ArgumentPaths, TooComplex, fresh_dir, remove_run_dir
from ._exec_paths import inside_any as _inside_any
from ._exec_paths import real as _real

__all__ = [
    "MAX_INPUT",
    "RUN_DIR",
    "CommandNotFound",
    "ExecConfigError",
    "ExecPolicy",
    "ExecResult",
    "ExecRule",
    "ExecTimeout",
    "Lockdown",
    "check_argv",
    "check_input",
    "policy_for_plugin",
]

#: "require": no Landlock, no command (sandbox = "strict"); "auto": use it where the kernel
#: has it; "off": never (tests' control runs only).
Lockdown: TypeAlias = Literal["require", "auto", "off"]

_COMMAND: Final = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]{0,63}")
MAX_ARGS: Final = 256
MAX_ARGV_BYTES: Final = 128 * 1024
#: After the command exits, how long its pipes may stay open (a daemonised grandchild).
PIPE_GRACE: Final = 1.0
#: The most a call may feed a command's stdin: a manifest or a patch, not a data transfer
#: (the host holds it in memory for the run; the wire frame is bounded separately).
MAX_INPUT: Final = 1024 * 1024


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
    if not _COMMAND.fullmatch(cmd) or cmd in (".", ".."):
        raise InvalidParams(
            f"argv[0] must be a bare command name (no path), got {cmd!r}", field="argv[0]"
        )
    return list(argv)


def check_input(data: str | bytes | None) -> bytes | None:
    """``data`` as the bytes to feed stdin, or :class:`InvalidParams` naming ``input`` when
    it is over :data:`MAX_INPUT` (or text that is not valid UTF-8)."""
    if data is None:
        return None
    if isinstance(data, str):
        # Cheap refusal before encoding: UTF-8 is at least one byte per character.
        if len(data) > MAX_INPUT:
            raise InvalidParams(f"input is over {MAX_INPUT} bytes", field="input")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParams("input is not valid text", field="input") from None
    if len(data) > MAX_INPUT:
        raise InvalidParams(f"input is {len(data)} bytes; the limit is {MAX_INPUT}", field="input")
    return bytes(data)


class ExecConfigError(ValueError):
    """The policy cannot be built as configured; ``field`` is the TOML key under the plugin's
    section (``exec.git.write[0]``, ``fs-write``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ExecPolicy:
    """How one plugin's ``host/exec`` calls run. The permission check is HostAPI's; the
    argument patterns and argument paths are checked by :meth:`check` (and again by
    :meth:`run`).

    ``scratch`` (``cwd`` is its old name) and ``writable`` are the plugin-writable trees,
    ``deny`` further trees the command must not read (the state dir, plugin directories).
    ``rules`` maps a command to the operator's :class:`ExecRule`. ``run_base`` is where the
    fresh per-run directories are made (a temp dir when unset); it must not lie inside a
    plugin-writable tree.
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        scratch: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        writable: Iterable[str | os.PathLike[str]] = (),
        deny: Iterable[str | os.PathLike[str]] = (),
        rules: Mapping[str, ExecRule] | None = None,
        run_base: str | os.PathLike[str] | None = None,
        lockdown: Lockdown = "auto",
        max_output: int = 1024 * 1024,
        default_timeout: float = 10.0,
        max_timeout: float = 60.0,
        max_concurrent: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if scratch is None:
            scratch = cwd
        self.scratch = os.fspath(scratch) if scratch is not None else None
        roots = [self.scratch] if self.scratch else []
        roots += [os.fspath(w) for w in writable]
        self.writable = tuple(_real(p) for p in roots)
        self.denied = tuple(dict.fromkeys((*self.writable, *(_real(os.fspath(d)) for d in deny))))
        self.rules: dict[str, ExecRule] = dict(rules or {})
        for command, rule in self.rules.items():
            for i, w in enumerate(rule.write):
                real = _real(w)
                # Either way round: a write path holding the state dir would let the command
                # rewrite scratch dirs and databases as surely as one inside them.
                if _inside_any(real, self.denied) or any(
                    _inside_any(d, (real,)) for d in self.denied
                ):
                    raise ExecConfigError(
                        f"exec.{command}.write[{i}]",
                        f"{w!r} overlaps a plugin-writable or private tree (the state dir, a "
                        "plugin directory, an fs-write path)",
                    )
        base = os.fspath(run_base) if run_base is not None else tempfile.gettempdir()
        self.run_base = _real(base)
        if _inside_any(self.run_base, self.writable):
            raise ExecConfigError(
                "fs-write", f"the exec run directory {base!r} is inside a plugin-writable path"
            )
        self._arguments = ArgumentPaths(denied=self.denied, run_base=self.run_base)
        self.lockdown: Lockdown = lockdown
        self._raw_path = path if path is not None else os.environ.get("PATH", "")
        self.max_output = max_output
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.env = dict(env) if env is not None else {}
        self._slots = anyio.Semaphore(max_concurrent)

    @functools.cached_property
    def path(self) -> str:
        """The commands' PATH: filtered on first use, not when the policy is made. Every
        plugin gets a policy at load, most never run a command, and resolving each entry
        is a dozen ``realpath`` calls: half of what a load cost the host (issue 17)."""
        return self._safe_path(self._raw_path)

    def _safe_path(self, path: str) -> str:
        """``path`` without entries a plugin could have put a program in (or that depend on
        the working directory)."""
        keep = [
            entry
            for entry in path.split(os.pathsep)
            if entry and os.path.isabs(entry) and not _inside_any(_real(entry), self.denied)
        ]
        return os.pathsep.join(dict.fromkeys(keep)) or os.defpath

    def resolve(self, command: str, *, plugin: str | None = None) -> str:
        """Absolute path of ``command`` on the policy's PATH, or :class:`CommandNotFound`."""
        found = shutil.which(command, path=self._path_for(command))
        if found is None:
            raise CommandNotFound(command=command, plugin=plugin)
        exe = os.path.abspath(found)
        if _inside_any(_real(exe), self.denied):
            # A symlink on a clean PATH entry pointing into a plugin's files.
            raise CommandNotFound(
                f"command {command!r} resolves into a plugin-writable path",
                command=command,
                plugin=plugin,
            )
        return exe

    def _path_for(self, command: str) -> str:
        rule = self.rules.get(command)
        if rule is not None and "PATH" in rule.env:
            return self._safe_path(rule.env["PATH"])
        if "PATH" in self.env:
            return self._safe_path(self.env["PATH"])
        return self.path

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

    def check(
        self, argv: Sequence[str], *, plugin: str | None = None, has_input: bool = False
    ) -> list[str]:
        """``argv`` if the operator's patterns admit it and no argument reaches into a
        plugin-writable path (and, with ``has_input``, the operator let the command be fed
        stdin), else :class:`PermissionDenied` saying which rule refused it."""
        args = check_argv(list(argv))
        command = args[0]
        rule = self.rules.get(command)
        if has_input and (rule is None or not rule.input or rule.allow is None):
            # allow is re-checked here, not only at config check: a policy built in code
            # must not feed a script to an unnarrowed command either.
            raise PermissionDenied(
                f"exec:{command}: the operator has not let this command read input from the "
                f"plugin (set [plugins.<id>.exec.{command}] input = true, with allow patterns)",
                permission=f"exec:{command}",
                plugin=plugin,
            )
        if rule is not None and rule.allow is not None and not matches_any(rule.allow, args[1:]):
            shown = ", ".join(repr(p) for p in rule.allow) or "none"
            raise PermissionDenied(
                f"exec:{command}: arguments {args[1:]!r} match none of the operator's "
                f"patterns ({shown})",
                permission=f"exec:{command}",
                plugin=plugin,
            )
        try:
            found = self._arguments.problem(args[1:])
        except TooComplex:
            raise PermissionDenied(
                f"exec:{command}: the arguments name more path components than the host "
                "checks in one call",
                permission=f"exec:{command}",
                plugin=plugin,
            ) from None
        if found is not None:
            i, why = found
            raise PermissionDenied(
                f"exec:{command}: argv[{i + 1}] {_clip(args[i + 1])} {why}",
                permission=f"exec:{command}",
                plugin=plugin,
            )
        return args

    def _env(self, command: str, fresh: str) -> dict[str, str]:
        env = {"PATH": self.path, "LANG": "C.UTF-8"}
        env.update(self.env)
        rule = self.rules.get(command)
        if rule is not None:
            env.update(rule.env)
        env["PATH"] = self._path_for(command)
        # Last, so nothing configured can move them: the run's own empty directory. git
        # looks for a repository in every parent of its cwd: not above the run's own.
        env.update(HOME=fresh, TMPDIR=fresh, PWD=fresh, GIT_CEILING_DIRECTORIES=self.run_base)
        return env

    def _lockdown_abi(self, permission: str, plugin: str | None) -> int | None:
        if self.lockdown == "off":
            return None
        try:
            return landlock.abi_version()
        except landlock.LandlockUnavailable as exc:
            if self.lockdown == "require":
                # Not SandboxUnavailable: that one is the worker launch's to report.
                raise PermissionDenied(
                    f"cannot lock the command down ({exc.strerror}); sandbox = 'strict' runs "
                    "no command without Landlock",
                    permission=permission,
                    plugin=plugin,
                ) from None
            return None

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        plugin: str | None = None,
        checked: bool = False,
        input: str | bytes | None = None,
    ) -> ExecResult:
        """Run ``argv``, feeding ``input`` (if any) to its stdin; ``checked``: the caller
        already passed it through :meth:`check` (HostAPI does, to record a refusal as
        denied), so the bounded but not free argument check is not paid twice."""
        data = check_input(input)
        if checked:
            args = list(argv)
        else:
            args = self.check(argv, plugin=plugin, has_input=data is not None)
        limit = self.timeout_for(timeout)
        exe = self.resolve(args[0], plugin=plugin)
        abi = self._lockdown_abi(f"exec:{args[0]}", plugin)
        async with self._slots:
            # Filesystem work in a thread: a run dir the command filled with a million files
            # must not hold the host's loop (and every other plugin) while it is removed.
            fresh = await anyio.to_thread.run_sync(fresh_dir, self.run_base)
            try:
                return await self._run_in(fresh, exe, args, limit, plugin, abi, data)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(remove_run_dir, fresh)

    async def _run_in(
        self,
        fresh: str,
        exe: str,
        args: list[str],
        timeout: float,
        plugin: str | None,
        abi: int | None,
        data: bytes | None,
    ) -> ExecResult:
        name = args[0]
        env = self._env(name, fresh)
        if abi is None:
            return await self._run([exe, *args[1:]], name, timeout, plugin, fresh, env, (), data)
        rule = self.rules.get(name)
        build = functools.partial(
            landlock.build_ruleset,
            abi=abi,
            deny=self.denied,
            read_write=[fresh, *(rule.write if rule is not None else ())],
        )
        # Walks the directories along each denied path: off the loop, like the run dir.
        ruleset = await anyio.to_thread.run_sync(build)
        try:
            argv = landlock.launcher_argv(ruleset, exe, args[1:])
            return await self._run(argv, name, timeout, plugin, fresh, env, (ruleset,), data)
        finally:
            os.close(ruleset)

    async def _run(
        self,
        argv: list[str],
        name: str,
        timeout: float,
        plugin: str | None,
        cwd: str,
        env: dict[str, str],
        pass_fds: tuple[int, ...],
        data: bytes | None,
    ) -> ExecResult:
        try:
            proc = await anyio.open_process(
                argv,
                stdin=DEVNULL if data is None else PIPE,
                stdout=PIPE,
                stderr=PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=pass_fds,
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

        async def feed(stream: anyio.abc.ByteSendStream | None) -> None:
            # Concurrently with the pumps: a command that writes output before it has read all
            # its input would otherwise block on a full stdout while we block on a full stdin.
            # Writes wait on the loop (never block it); a command that exits (or closes stdin)
            # without reading it all ends the feed with a broken pipe, which is its choice.
            if stream is None or data is None:
                return
            try:
                for start in range(0, len(data), _FEED_CHUNK):
                    await stream.send(data[start : start + _FEED_CHUNK])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                # EOF, so a command reading to the end finishes; cancelled on exit/timeout.
                # aclose() only starts the close (never waits on the reader): shielded, so
                # a cancelled feed still closes its end.
                with anyio.CancelScope(shield=True):
                    try:
                        await stream.aclose()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass

        try:
            with anyio.move_on_after(timeout) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed, proc.stdin)
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


#: One write to a command's stdin: the loop gets a turn between chunks of a large input.
_FEED_CHUNK: Final = 64 * 1024

#: Under the state dir: where each run's fresh directory is made.
RUN_DIR: Final = "exec"


def policy_for_plugin(
    settings: PluginSettings,
    *,
    state_dir: str | os.PathLike[str],
    scratch: str | os.PathLike[str],
    plugin_dir: str | os.PathLike[str],
    config: Config,
    plugin_id: str = "",
) -> ExecPolicy:
    """The runtime's policy for one plugin: its scratch and ``fs-write`` paths are
    plugin-writable; the state dir, every plugin directory and every plugin's ``fs-write``
    paths are denied to the command; the operator's ``exec`` tables narrow it; a strict
    sandbox requires the command's lock-down."""
    others = [config.defaults, *config.plugins.values()]
    deny = [
        os.fspath(state_dir),
        os.fspath(plugin_dir),
        *config.runtime.plugin_dirs,
        *(w for s in others for w in s.fs_write),
    ]
    try:
        return ExecPolicy(
            scratch=scratch,
            writable=settings.fs_write,
            deny=deny,
            rules=settings.exec_rules,
            run_base=os.path.join(os.fspath(state_dir), RUN_DIR),
            lockdown="require" if settings.sandbox == "strict" else "auto",
        )
    except ExecConfigError as exc:
        section = f"plugins.{plugin_id}" if plugin_id in config.plugins else "defaults"
        raise ConfigError(
            source=config.source, problems=[Problem(f"{section}.{exc.field}", exc.reason)]
        ) from None


def _clip(arg: str) -> str:
    return repr(arg if len(arg) <= 200 else arg[:200] + "...")
