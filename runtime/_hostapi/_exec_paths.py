"""Where an exec argument would lead, as a path: the argument check of :mod:`._exec`.

A plugin chooses every argument of a granted command. An argument that names a file the
plugin wrote (``--kubeconfig=<scratch>/x``, ``git -C <scratch>/repo``, ``/proc/<pid>/root/...``)
makes the command read plugin-controlled configuration. The command's Landlock lock-down
refuses those opens whatever the spelling; this check refuses the *call* up front, with a
message naming the argument, and is the only line where the kernel has no Landlock.

Each argument is looked at as a path (relative ones from the run's own directory), and so is
the text after each ``=`` in it (``--opt=value``, ``key=value``) and an ``@file`` name. Its
limits: a path glued to a short option (``-fPATH``) or inside a value (``a:b``, a shell
string) is not seen.

Cost is bounded, because this runs on the host's loop for every call: symlinks are followed
like ``realpath`` does, but only through components that exist (nothing below a missing
component can be a link yet), never into ``/proc`` (a magic link there would be resolved as
the *host* sees it), at most :data:`MAX_HOPS` links, and at most :data:`MAX_LOOKUPS` lookups
and candidates per call; a call needing more is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections import deque
from collections.abc import Iterable
from typing import Final

import structlog

__all__ = ["ArgumentPaths", "TooComplex", "fresh_dir", "inside_any", "real", "remove_run_dir"]

log = structlog.get_logger("cordon")

#: Lookups (``lstat``) and candidate paths per call. A real call names a few paths of a few
#: components; 1024 keeps the worst case to a few milliseconds of the host's loop
#: (``benchmarks/bench_exec.py`` prints it).
MAX_LOOKUPS: Final = 1024
#: Symlinks followed per candidate (the kernel's own limit is 40: ELOOP past it).
MAX_HOPS: Final = 40
#: The kernel refuses longer paths (ENAMETOOLONG), so no command can open one.
PATH_MAX: Final = 4096


class TooComplex(Exception):
    """The arguments name more path components than the check will look up."""


def real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def inside_any(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class ArgumentPaths:
    """Checks a call's arguments against trees no argument may reach."""

    def __init__(self, *, denied: Iterable[str], run_base: str) -> None:
        self.denied = tuple(denied)
        self.run_base = run_base
        # Relative arguments resolve against the run's fresh dir; this stand-in for it has
        # the same depth under run_base.
        self.here = os.path.join(run_base, "run")

    def problem(self, args: Iterable[str]) -> tuple[int, str] | None:
        """``(index, why)`` for the first argument (index in ``args``) that reaches a
        denied tree, another run's directory or ``/proc``; ``None`` when none does.
        :class:`TooComplex` past the lookup budget."""
        budget = [MAX_LOOKUPS]
        for i, arg in enumerate(args):
            why = self._one(arg, budget)
            if why is not None:
                return i, why
        return None

    def _one(self, arg: str, budget: list[int]) -> str | None:
        # Only texts a command could open: at most PATH_MAX long, so only a '=' in the last
        # PATH_MAX characters starts one (found with str.find, not a per-character loop).
        starts = [0, 1] if arg.startswith("@") else [0]
        at = arg.find("=", max(0, len(arg) - PATH_MAX - 1))
        while at != -1:
            starts.append(at + 1)
            at = arg.find("=", at + 1)
        for start in starts:
            if len(arg) - start > PATH_MAX:
                continue  # no command can open it
            budget[0] -= 1
            if budget[0] < 0:
                raise TooComplex
            text = arg[start:]
            if not text:
                continue
            where = self._resolve(os.path.join(self.here, text), budget)
            if where == "/proc" or where.startswith("/proc/"):
                return "names a path under /proc (another process's files)"
            if inside_any(where, (self.here,)):
                continue
            if inside_any(where, self.denied) or inside_any(where, (self.run_base,)):
                return "names a path inside a plugin-writable or private tree"
        return None

    @staticmethod
    def _resolve(path: str, budget: list[int]) -> str:
        """``realpath`` within a budget: symlinks followed (``..`` after one is taken from
        its target), components after the first missing one taken as plain directories,
        nothing resolved inside ``/proc``."""
        parts = deque(p for p in path.split("/") if p)
        resolved = ""
        missing = False
        hops = 0
        while parts:
            name = parts.popleft()
            if name == ".":
                continue
            if name == "..":
                resolved = resolved.rsplit("/", 1)[0]
                continue
            candidate = f"{resolved}/{name}"
            if candidate == "/proc":
                missing = True  # never resolve a magic link as the host would see it
            if missing:
                resolved = candidate
                continue
            budget[0] -= 1
            if budget[0] < 0:
                raise TooComplex
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:
                missing = True
                resolved = candidate
                continue
            if not stat.S_ISLNK(mode):
                resolved = candidate
                continue
            hops += 1
            try:
                target = os.readlink(candidate)
            except OSError:
                missing = True
                resolved = candidate
                continue
            if hops > MAX_HOPS:
                return candidate  # ELOOP for the kernel too
            if target.startswith("/"):
                resolved = ""
            parts.extendleft(reversed([p for p in target.split("/") if p]))
        return resolved or "/"


# -- run directories ---------------------------------------------------------------------------

#: Mode of a run's directory: the host's user only (the command runs as that user).
RUN_DIR_MODE: Final = 0o700


def fresh_dir(base: str) -> str:
    """A new, empty directory for one run under ``base`` (made 0700 if missing)."""
    os.makedirs(base, mode=RUN_DIR_MODE, exist_ok=True)
    fresh = tempfile.mkdtemp(prefix="cordon-exec-", dir=base)
    os.chmod(fresh, RUN_DIR_MODE)
    return fresh


def _mounts_below(path: str) -> list[str]:
    """Mount points under ``path`` (a bind mount the command made), from the kernel's own
    list: a bind mount of the same filesystem shares its ``st_dev``, so stat cannot tell."""
    prefix = path.rstrip("/") + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                # Field 5 is the mount point, with space, tab, newline, backslash as \ooo.
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if point == path or point.startswith(prefix):
                    found.append(point)
    return found


def remove_run_dir(path: str) -> None:
    """Remove a run's directory whatever the command did to it (a mode 000 subdirectory, a
    read-only file: each failing parent is made writable and the removal retried). Never
    crosses into another filesystem: if the command left a mount below it (only possible
    without the Landlock lock-down, which forbids mounting), the directory is left in place
    and logged rather than the host's files under that mount deleted."""
    try:
        mounts = _mounts_below(path)
    except OSError:
        return
    if mounts:
        log.warning("exec.run_dir_kept", path=path, mounts=mounts[:10])
        return

    def retry(func: object, p: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
