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
import stat
from collections import deque
from collections.abc import Iterable
from typing import Final

__all__ = ["ArgumentPaths", "TooComplex", "inside_any", "real"]

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
