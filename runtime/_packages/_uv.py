"""Running ``uv``: every call with a deadline, its output captured, and an environment built
from an allowlist so no host secret (tokens, cloud credentials, the operator's config) reaches
it or its error messages. ``uv`` is imported lazily: ``import cordon.runtime`` stays lean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["UvResult", "UvTimeout", "redact", "run_uv", "uv_env"]

#: What ``uv`` may see of the host's environment: locale (its messages), TLS trust (a
#: corporate CA) and proxies (the only way out on some networks). Everything else (tokens,
#: ``UV_*`` settings of the operator's shell, ``PIP_*``, ``HOME`` with its ``.netrc`` and
#: ``uv.toml``) is dropped: the lock must depend on the options given, nothing ambient.
ENV_ALLOWLIST = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)

#: Longest piece of uv's output carried in an error: its resolver explanations are a few lines;
#: a wall of output would bury the reason (the head and tail are kept).
DETAIL_LIMIT = 2000

#: Runs uv with a parent-death signal: if the host dies (even by SIGKILL) mid-build, uv dies
#: with it instead of writing on, orphaned and with no deadline, into a build dir the next
#: builder is about to remove. Set in a fresh interpreter that then execs uv (the signal
#: survives exec), not in a ``preexec_fn``, which is unsafe in a threaded host.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)  # the parent died before the signal was armed\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


class UvTimeout(Exception):
    """``uv`` outran its deadline (and was killed with its process group)."""


class UvResult:
    __slots__ = ("returncode", "stderr", "stdout")

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def redact(text: str) -> str:
    """Strip credentials from URLs (``https://user:token@host`` → ``https://***@host``) and
    cut to :data:`DETAIL_LIMIT` characters, keeping the head and the tail."""
    text = _USERINFO.sub(r"\g<scheme>***@", text.strip())
    if len(text) > DETAIL_LIMIT:
        half = DETAIL_LIMIT // 2
        text = text[:half] + "\n[…]\n" + text[-half:]
    return text


def uv_env(cache_dir: Path, *, progress: bool = False) -> dict[str, str]:
    env = {k: v for k in ENV_ALLOWLIST if (v := os.environ.get(k)) is not None}
    env.update(
        PATH=os.defpath,
        HOME=str(cache_dir),  # uv wants a home; the cache dir holds nothing of the operator's
        UV_CACHE_DIR=str(cache_dir),
        UV_NO_CONFIG="1",  # no uv.toml / pyproject settings from the cwd or the home
        UV_PYTHON_DOWNLOADS="never",  # the host's interpreter or nothing
    )
    if not progress:
        env["UV_NO_PROGRESS"] = "1"
    return env


def run_uv(
    args: Sequence[str],
    *,
    cache_dir: Path,
    timeout: float,
    cwd: Path | None = None,
    progress: bool = False,
    keep_fds: Sequence[int] = (),
) -> UvResult:
    """Run ``uv ARGS`` with the allowlisted environment. stdout is always captured; stderr too,
    unless ``progress`` and the host's stderr is a terminal (then uv draws its bar there).
    On the deadline the whole process group is killed and :class:`UvTimeout` raised.
    ``keep_fds`` are inherited by uv: a build passes its ``flock``ed fd, so the key stays
    locked until uv itself is gone, not just its parent."""
    from uv import find_uv_bin

    show = progress and sys.stderr.isatty()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), find_uv_bin(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=None if show else subprocess.PIPE,
        env=uv_env(cache_dir, progress=show),
        cwd=cwd or cache_dir,
        text=True,
        errors="replace",
        # Its own group, so a deadline kills uv and anything it started (an interpreter
        # query) at once, and a Ctrl-C meant for the host does not race our cleanup.
        start_new_session=True,
        pass_fds=tuple(keep_fds),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise UvTimeout(f"uv {args[0] if args else ''} took longer than {timeout:g} s") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return UvResult(proc.returncode, out or "", err or "")
