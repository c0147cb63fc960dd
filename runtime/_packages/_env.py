"""A plugin's environment: a venv built by ``uv`` from the plugin's lock, keyed by the lock's
content hash and shared by every plugin with the same lock.

* Built with ``uv venv`` (the host's interpreter) and ``uv pip install --require-hashes
  --no-build --no-deps``: exactly the locked wheel files, nothing built, nothing resolved, so no
  package's code runs during the build. ``--link-mode hardlink`` from a cache on the same
  filesystem: twenty plugins sharing a library store its files once.
* Atomic: built in ``envs_root/.build-<key>-*/`` and renamed to ``envs_root/<key>`` only once
  installed, verified and made read-only; a SIGKILL at any moment leaves either no env or the
  whole env under the key. Leftover build dirs are removed by the next build of that key.
* One builder per key: an ``flock`` on ``envs_root/.<key>.lock`` serialises processes; the
  second finds the env complete and reuses it. The wait is bounded by the holder's own uv
  deadlines (and the kernel drops the lock when the holder dies).
* Read-only afterwards (``a-w``, files and dirs). That is against accidents only: the files are
  hard links shared with the uv cache and other envs, so the guarantee that a plugin cannot
  poison them is the worker's Landlock ruleset, which grants the env read access only.
* ``.pth`` files are inert: the worker does not run the env's ``python`` and never calls
  ``site.addsitedir``; it appends :attr:`PluginEnv.site_packages` to ``sys.path`` itself, so
  a wheel's ``.pth`` (and uv's ``_virtualenv.pth``) is never executed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from ._errors import EnvBuildError
from ._lock import (
    IndexOptions,
    Lock,
    LockedWheel,
    check_lock,
    current_platform,
    current_python,
    index_args,
)
from ._uv import UvTimeout, redact, run_uv

__all__ = [
    "ENV_INSTALL_TIMEOUT",
    "ENV_MARKER",
    "VENV_TIMEOUT",
    "PluginEnv",
    "compile_sources",
    "env_for",
    "env_size",
    "envs_disk_usage",
    "prune_envs",
    "remove_tree",
]

#: ``uv venv`` only copies a few files and queries the interpreter.
VENV_TIMEOUT = 60.0
#: ``uv pip install`` downloads every locked wheel on a cold cache; ten minutes covers large
#: wheels on a slow link and still ends a stalled download.
ENV_INSTALL_TIMEOUT = 600.0
#: Compiling an env's or a plugin's modules (no network, only the parser): generous for the
#: largest wheels; past it, what is left uncompiled is compiled by each worker's import.
COMPILE_TIMEOUT = 300.0
#: Written last into a built env, before the rename: its presence under the key means complete.
ENV_MARKER = "cordon-env.json"

_KEY = re.compile(r"[0-9a-f]{64}")
#: Quiet (errors too: a module that does not compile fails in the worker, naming itself).
_COMPILEALL = (sys.executable, "-I", "-S", "-m", "compileall", "-q", "-q")
_BUILD_PREFIX = ".build-"


class PluginEnv(msgspec.Struct, frozen=True):
    key: str  # == lock.content_hash()
    path: str  # the venv root
    site_packages: str  # what the worker appends to sys.path (read-only to it)


class _Marker(msgspec.Struct, frozen=True):
    key: str
    site_packages: str  # relative to the env root (the env is renamed after it is written)
    wheels: tuple[str, ...]


def env_for(
    lock: Lock,
    *,
    envs_root: Path,
    cache_dir: Path,
    options: IndexOptions,
    progress: bool = False,
) -> PluginEnv:
    """The environment for ``lock``: reused when already built, else built atomically."""
    # The lock's fields become lines of uv's requirements file: whatever built this Lock (a
    # package, a caller), only well-formed names, versions, file names and hashes go there.
    check_lock(Path(f"<lock {lock.content_hash()[:12]}>"), lock)
    key = lock.content_hash()
    here = (current_python(), current_platform())
    if (lock.python, lock.platform) != here:
        # Its wheels were chosen for another interpreter's tags: relock rather than install
        # files picked for a machine this is not.
        raise EnvBuildError(
            f"environment {key}: the lock is for Python {lock.python} on {lock.platform}, "
            f"this host runs Python {here[0]} on {here[1]}; lock again here",
            key=key,
        )
    envs_root.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = envs_root / key
    with _key_lock(envs_root, key) as lock_fd:
        _remove_leftovers(envs_root, key)
        if (env := _complete(final, key)) is not None:
            return env
        if final.exists() or final.is_symlink():
            remove_tree(final)  # not ours (no marker): never reuse what we did not finish
        build = Path(tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{key}-", dir=envs_root))
        try:
            venv = build / "env"
            site = _build(lock, key, venv, build, cache_dir, options, progress, lock_fd)
            _verify(lock, key, site)
            compile_sources(site, final / site.relative_to(venv))
            marker = _Marker(
                key, str(site.relative_to(venv)), tuple(w.filename for w in lock.wheels)
            )
            (venv / ENV_MARKER).write_bytes(msgspec.json.encode(marker))
            _make_read_only(venv)
            _fsync_dir(venv)
            os.rename(venv, final)
            _fsync_dir(envs_root)
        finally:
            remove_tree(build)
    env = _complete(final, key)
    if env is None:  # pragma: no cover - we just renamed it into place
        raise EnvBuildError(f"environment {key} vanished after its build", key=key)
    return env


def _build(
    lock: Lock,
    key: str,
    venv: Path,
    build: Path,
    cache_dir: Path,
    options: IndexOptions,
    progress: bool,
    lock_fd: int | None,
) -> Path:
    # --relocatable: the venv is renamed after the build, so its scripts must not embed the
    # build path (the worker does not run them, but an operator inspecting the env might).
    _uv(
        ["venv", str(venv), "--python", sys.executable, "--relocatable", "--quiet"],
        key,
        cache_dir,
        VENV_TIMEOUT,
        build,
        progress=False,
        lock_fd=lock_fd,
    )
    reqs = build / "requirements.txt"
    reqs.write_text("".join(_requirement_line(w, options) for w in lock.wheels), encoding="utf-8")
    if lock.wheels:
        args = [
            "pip",
            "install",
            "--python",
            str(venv / "bin" / "python"),
            "--requirement",
            str(reqs),
            "--require-hashes",
            "--no-build",
            "--no-deps",
            "--link-mode",
            "hardlink",
            *index_args(options),
        ]
        if not progress:
            args.append("--quiet")
        _uv(args, key, cache_dir, ENV_INSTALL_TIMEOUT, build, progress=progress, lock_fd=lock_fd)
    sites = sorted((venv / "lib").glob("python*/site-packages"))
    if len(sites) != 1:
        raise EnvBuildError(f"environment {key}: no single site-packages in {venv}", key=key)
    return sites[0]


def _requirement_line(wheel: LockedWheel, options: IndexOptions) -> str:
    """The install line for one locked wheel. Found by its file name in a local find-links
    dir, it is named by path (``name @ file:///…whl``): uv installs that very file, even when
    the dir also holds a better-ranked wheel of the version published after the lock. From an
    index, by version: uv picks the file by the same tag order the lock used, and a file that
    is not the locked one fails ``--require-hashes`` (a refusal, never another file)."""
    pin = f" --hash=sha256:{wheel.sha256}\n"
    for link in options.find_links:
        local = link.removeprefix("file://")
        if "://" in local or Path(wheel.filename).name != wheel.filename:
            continue
        if (path := Path(local) / wheel.filename).is_file():
            return f"{wheel.name} @ {path.resolve().as_uri()}{pin}"
    return f"{wheel.name}=={wheel.version}{pin}"


def _uv(
    args: list[str],
    key: str,
    cache_dir: Path,
    timeout: float,
    cwd: Path,
    *,
    progress: bool,
    lock_fd: int | None,
) -> None:
    keep = () if lock_fd is None else (lock_fd,)
    try:
        result = run_uv(
            args, cache_dir=cache_dir, timeout=timeout, cwd=cwd, progress=progress, keep_fds=keep
        )
    except UvTimeout as exc:
        raise EnvBuildError(f"environment {key}: {exc}", key=key, detail=str(exc)) from None
    if result.returncode != 0:
        detail = redact(result.stderr or result.stdout) or f"uv exited with {result.returncode}"
        raise EnvBuildError(
            f"environment {key}: uv {args[0]} {args[1]} failed: {detail}", key=key, detail=detail
        )


def _verify(lock: Lock, key: str, site: Path) -> None:
    """Every distribution Python would see in the env (``.dist-info`` and ``.egg-info``, as
    ``importlib.metadata`` finds them) is one the lock names, at its locked version, and every
    locked one is there: a wheel smuggling another library's metadata is refused."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    def norm(version: str) -> str:
        try:
            return str(Version(version))
        except InvalidVersion:
            return version

    installed = sorted(
        (canonicalize_name(d.metadata["Name"] or ""), norm(d.version or ""))
        for d in distributions(path=[str(site)])
    )
    wanted = sorted((w.name, norm(w.version)) for w in lock.wheels)
    if installed != wanted:
        detail = f"installed {installed}, locked {wanted}"
        raise EnvBuildError(
            f"environment {key} does not match its lock: {detail}", key=key, detail=detail
        )


def _complete(final: Path, key: str) -> PluginEnv | None:
    try:
        marker = msgspec.json.decode((final / ENV_MARKER).read_bytes(), type=_Marker)
    except (OSError, msgspec.DecodeError):
        return None
    site = final / marker.site_packages
    if marker.key != key or final.is_symlink() or not site.is_dir():
        return None
    return PluginEnv(key=key, path=str(final), site_packages=str(site))


@contextmanager
def _key_lock(envs_root: Path, key: str, *, wait: bool = True) -> Iterator[int | None]:
    """Hold the key's ``flock``; yields its fd, or ``None`` when ``wait`` is false and
    another process holds it."""
    fd = os.open(envs_root / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)  # releases the flock


def _remove_leftovers(envs_root: Path, key: str) -> None:
    """Build dirs of ``key`` left by a killed builder (we hold the key's lock: none is live)."""
    for stale in envs_root.glob(f"{_BUILD_PREFIX}{key}-*"):
        remove_tree(stale)


def compile_sources(tree: Path, shown_as: Path) -> None:
    """Write bytecode beside every module under ``tree``, naming the files as under
    ``shown_as`` (where the tree is renamed to, so tracebacks name the installed files).

    Why: a worker may write neither its plugin's folder nor its env, so without this every
    worker start compiles each module it imports from them. Not ``uv pip install
    --compile-bytecode``: uv compiles with the env's interpreter and its ``site``, which
    runs the ``.pth`` files a wheel carries, on the host. Here: the host's interpreter with
    ``-I -S`` (no site, no .pth), in a child process so the parser never reads a package's
    text in the installer's own process. A module that does not compile is left without
    bytecode; its import fails in the worker, where the error names it."""
    try:
        subprocess.run(
            [*_COMPILEALL, "-d", str(shown_as), str(tree)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pass  # killed by run(); each .pyc is written whole (temp file, rename) or not at all


def _make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o222)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(root, 0o555)


def remove_tree(path: Path) -> None:
    """Remove a tree that may be read-only (our envs are): make its dirs writable first."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o700)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def env_size(env: PluginEnv) -> int:
    """Bytes of disk the env uses, each inode counted once (hard links within it once)."""
    return envs_disk_usage([env])


def envs_disk_usage(envs: Iterable[PluginEnv]) -> int:
    """Bytes of disk used by several envs together, each inode counted once: files
    hard-linked between them (through the uv cache) count once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for env in envs:
        for dirpath, dirnames, filenames in os.walk(env.path):
            for name in (*dirnames, *filenames):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def prune_envs(envs_root: Path, keep: set[str]) -> list[str]:
    """Remove every env whose key is not in ``keep`` (and its leftovers); return the removed
    keys. An env being built right now (its key locked) is left for the next prune."""
    removed: list[str] = []
    if not envs_root.is_dir():
        return removed
    keys = {p.name for p in envs_root.iterdir() if _KEY.fullmatch(p.name)}
    keys |= {p.name[1:-5] for p in envs_root.glob(".*.lock") if _KEY.fullmatch(p.name[1:-5])}
    keys |= {p.name[len(_BUILD_PREFIX) :][:64] for p in envs_root.glob(f"{_BUILD_PREFIX}*")}
    for key in sorted(keys - keep):
        if not _KEY.fullmatch(key):
            continue
        with _key_lock(envs_root, key, wait=False) as held:
            if held is None:
                continue
            _remove_leftovers(envs_root, key)
            if os.path.lexists(envs_root / key):
                remove_tree(envs_root / key)
                removed.append(key)
            # The lock file stays (empty): unlinking it while another process waits on it
            # would let a third create a fresh one and build the same key beside it.
    return removed
