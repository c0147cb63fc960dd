"""How a manifest's ``entry`` module names a file of the plugin folder — one rule, read by the
host (validating the manifest) and by the worker (importing it), so the two never disagree.

A plugin folder holds ``plugin.toml`` and the plugin's modules. The entry's module is named
either

- **relative to the folder** (``core:plugin`` → ``<folder>/core.py``, imported as a top-level
  ``core``), as a plugin directory is usually written; or
- **through the folder's own package path**, as an installed distribution's package is
  (``greeter_pkg.core:plugin`` in ``.../site-packages/greeter_pkg/plugin.toml`` →
  ``<folder>/core.py``, imported as ``greeter_pkg.core``, so the package's ``__init__`` and its
  relative imports work as they do everywhere else).

The relative reading wins whenever the folder itself holds the module's first name (a
``<folder>/<first>`` package or ``<first>.py``); otherwise the longest leading run of names
that equals the folder's own trailing path is the package.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["split_entry_module"]


def split_entry_module(module: str, folder: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(package, rest)`` for the dotted ``module`` of a plugin in ``folder``: ``package`` is
    the leading names that are the folder's own package path (empty when ``module`` is named
    relative to the folder), ``rest`` the names below the folder (never empty)."""
    parts = tuple(module.split("."))
    if len(parts) == 1:
        # Settled without a path: every forked worker of a one-module plugin asks this.
        return (), parts
    where = Path(folder)
    first = parts[0]
    if (where / first).is_dir() or (where / f"{first}.py").is_file():
        return (), parts
    tail = where.parts
    for k in range(len(parts) - 1, 0, -1):
        if len(tail) >= k and tail[len(tail) - k :] == parts[:k]:
            return parts[:k], parts[k:]
    return (), parts
