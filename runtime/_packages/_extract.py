"""Writing a verified package into an empty folder. The archive is read again (it may have
been replaced since :func:`open_package` checked it), so every file is decompressed into
memory, bounded by the size already verified, and compared with the verified sha256 *before*
a byte of it reaches the disk. Files are created ``O_EXCL|O_NOFOLLOW`` under directory file
descriptors this function made itself, with modes 0644/0755 only. On any failure everything
written is removed."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._reader import ArchiveReader, MiB, check_entry, read_entry

if TYPE_CHECKING:
    from ._archive import VerifiedPackage

__all__ = ["extract"]

_DIR_MODE: Final = 0o755
_FILE_MODES: Final = (0o644, 0o755)
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Tree:
    """Directory fds below ``root``, made and opened without following any symlink."""

    def __init__(self, root: Path) -> None:
        self._fds: dict[str, int] = {"": os.open(root, _DIR_FLAGS)}

    def _dir(self, rel: str) -> int:
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        parent, _, name = rel.rpartition("/")
        pfd = self._dir(parent)
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=pfd)
        except FileExistsError:
            pass  # made for an earlier file; opened below with O_NOFOLLOW all the same
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        self._fds[rel] = fd
        os.fchmod(fd, _DIR_MODE)  # umask must not narrow (or widen) what the worker sees
        return fd

    def write(self, rel: str, data: bytes, mode: int) -> None:
        parent, _, name = rel.rpartition("/")
        fd = os.open(name, _FILE_FLAGS, mode, dir_fd=self._dir(parent))
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)
            f.write(data)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _prepare(dest: Path) -> bool:
    """Make ``dest`` (its parent must exist) or accept it empty; ``True`` if made here."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        os.mkdir(dest, _DIR_MODE)
        os.chmod(dest, _DIR_MODE)
        return True
    if not stat.S_ISDIR(st.st_mode) or os.listdir(dest):
        raise FileExistsError(errno.EEXIST, "extract needs a new or empty directory", str(dest))
    return False


def _undo(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in os.scandir(dest):
        if child.is_dir(follow_symlinks=False):
            shutil.rmtree(child.path, ignore_errors=True)
        else:
            os.unlink(child.path)


def extract(pkg: VerifiedPackage, dest: Path) -> None:
    """Write ``pkg``'s files into ``dest`` (new, or an empty directory). Raises
    :class:`PackageInvalid` if the archive no longer holds exactly the verified bytes, and
    :class:`FileExistsError` if ``dest`` is not new or empty; nothing is left behind."""
    dest = Path(dest)
    # Bound the re-read by what was verified, plus header room: a file swapped in since
    # cannot make the host hash gigabytes.
    bound = sum(f.size for f in pkg.files) + (len(pkg.files) + 2) * 4096 + 16 * MiB
    created = _prepare(dest)
    try:
        with ArchiveReader.open(Path(pkg.path), len(pkg.files) + 2, bound) as r:
            if r.sha256 != pkg.sha256:
                raise r.refuse(None, "the archive changed since it was verified")
            tree = _Tree(dest)
            try:
                for f in pkg.files:
                    if f.mode not in _FILE_MODES:
                        raise r.refuse(f.path, f"mode {f.mode:#o} is not 0o644 or 0o755")
                    try:
                        info = r.zip.getinfo(f.path)
                    except KeyError:
                        raise r.refuse(f.path, "missing since it was verified") from None
                    check_entry(r, info)
                    data, digest, size = read_entry(r, info, f.size, [f.size])
                    if digest != f.sha256 or size != f.size:
                        raise r.refuse(f.path, "changed since it was verified")
                    tree.write(f.path, data, f.mode)
            finally:
                tree.close()
    except BaseException:
        _undo(dest, created)
        raise
