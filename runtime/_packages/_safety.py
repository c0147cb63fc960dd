"""The rules a path inside a ``.cordon`` package must follow, shared by ``pack`` (which refuses
to write a package that would be refused) and ``open_package`` (which refuses an archive made
by anyone else). A package is extracted on the host by root-capable code, so a name is never
trusted to mean what it looks like: it must be a plain relative POSIX path, free of anything a
file system, a terminal or a case-insensitive copy could read differently."""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Iterable
from typing import Final

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "collision_key",
    "entry_name_problem",
    "find_collision",
    "zip_type_problem",
]

#: Linux's NAME_MAX: a longer component cannot be created, so refuse it before extracting.
MAX_COMPONENT_BYTES: Final = 255
#: Far below PATH_MAX once the store's prefix is added; a plugin has no use for deeper paths.
MAX_PATH_BYTES: Final = 1024


def _is_control(ch: str) -> bool:
    # C0, DEL and C1 controls, plus the bidi/format characters (category Cf) that make a name
    # display as something else in a terminal or a consent prompt.
    return unicodedata.category(ch) in ("Cc", "Cf") or ch in "\u2028\u2029"


def entry_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file's path in a package, or ``None`` when it can."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL character in name"
    if any(_is_control(ch) for ch in name):
        return "control or invisible formatting character in name"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return "name is not valid UTF-8"
    if "\\" in name:
        return "backslash in name (paths use '/')"
    if name.startswith("/"):
        return "absolute path"
    if name.endswith("/"):
        return "directory entry (a package holds regular files only)"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    parts = name.split("/")
    if ".." in parts:
        return "'..' component (path traversal)"
    if "." in parts or "" in parts:
        return "empty or '.' component"
    if any(len(p.encode("utf-8")) > MAX_COMPONENT_BYTES for p in parts):
        return f"component longer than {MAX_COMPONENT_BYTES} bytes"
    if len(parts[0]) == 2 and parts[0][1] == ":" and parts[0][0].isalpha():
        return "drive-letter path"
    # What pack leaves out, an archive may not hold either: bytecode (an unchecked-hash .pyc
    # runs instead of the source a reviewer reads) and hidden files nobody sees in a listing.
    if "__pycache__" in parts or name.endswith(".pyc"):
        return "compiled bytecode (it would run instead of the source it claims to be)"
    if any(p.startswith(".") for p in parts):
        return "hidden file or folder (pack leaves these out)"
    return None


def collision_key(name: str) -> str:
    """The name as a case-insensitive, normalisation-insensitive file system would see it:
    ``A.py``/``a.py`` and NFC/NFD spellings of ``é`` share a key. NFKC also folds
    compatibility forms (full-width letters, ligatures) that some file systems and every
    human reader treat as the same name."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def find_collision(names: Iterable[str]) -> tuple[str, str] | None:
    """The first pair of names that would land on the same file (or where one name is a file
    and also the directory of another), else ``None``. Names must already be well-formed."""
    files: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for name in names:
        key = collision_key(name)
        if key in files:
            return files[key], name
        if key in dirs:
            return dirs[key], name
        files[key] = name
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            pkey = collision_key(prefix)
            if pkey in files:
                return files[pkey], name
            dirs.setdefault(pkey, prefix + "/")
    return None


#: The MS-DOS attribute bit a zip writer sets for a directory entry.
_DOS_DIRECTORY: Final = 0x10


def zip_type_problem(external_attr: int) -> str | None:
    """Why a zip entry with these external attributes is not a regular file, else ``None``.
    The high 16 bits are the Unix ``st_mode`` when a Unix tool wrote the entry; a type there
    (symlink, device, FIFO, socket, directory) is refused whatever the writer claimed to be,
    since extractors that honour it exist."""
    mode = (external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "device file"
    if kind == stat.S_IFIFO:
        return "FIFO"
    if kind == stat.S_IFSOCK:
        return "socket"
    if kind == stat.S_IFDIR or external_attr & _DOS_DIRECTORY:
        return "directory entry (a package holds regular files only)"
    if kind not in (0, stat.S_IFREG):
        return f"unknown file type {kind:#o}"
    return None
