"""Ordinary code keeps working where seccomp refuses file metadata in scratch too.

The filter refuses chmod, utime and xattr writes on every file, scratch included (BPF cannot
tell which file a path or fd names; see :mod:`._seccomp`). ``shutil.copy``, ``copy2``,
``copytree`` and ``move`` across directories then fail *after* copying the contents, on
copying the mode or the times. Here those stdlib helpers learn to treat the kernel's EPERM as
"metadata not copied", exactly as ``shutil.copystat`` already treats a filesystem without
xattrs: the contents are copied, the copy keeps the mode it was created with.

Compatibility, not security: nothing here grants anything (the plugin may undo it and meets
the same EPERM). ``shutil`` costs ~11 ms to import, so it is patched when the plugin first
imports it (a one-shot meta path finder), never imported by the worker itself; the finder
and loader are duck-typed (``importlib.abc`` alone would add ~7 ms to every worker's start).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["install"]


def _tolerant(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
            return None

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def patch_shutil(shutil: ModuleType) -> None:
    """``copymode``/``copystat`` (what copy, copy2, copytree and move call through the
    module's globals) ignore the kernel's EPERM."""
    for name in ("copymode", "copystat"):
        setattr(shutil, name, _tolerant(getattr(shutil, name)))


class _Loader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        patch_shutil(module)


class _Finder:
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname != "shutil":
            return None
        from importlib.machinery import PathFinder  # loaded already: part of the bootstrap

        sys.meta_path.remove(self)  # one shot
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    shutil = sys.modules.get("shutil")
    if shutil is not None:
        patch_shutil(shutil)
    else:
        sys.meta_path.insert(0, _Finder())
