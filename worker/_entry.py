"""Importing the manifest's entry module, named either relative to the plugin folder or through
the folder's own package path (the rule: :mod:`cordon.protocol._entry`).

For the package form (``greeter_pkg.core`` in ``.../greeter_pkg/``) the package is bound to
the plugin folder itself: ``greeter_pkg`` is made from ``<folder>/__init__.py`` (a namespace
package if there is none) with ``__path__ = [<folder>]``, so ``greeter_pkg.core`` and the
package's relative imports resolve inside the folder. The folder's parent (``site-packages``,
holding every other installed distribution) is never put on ``sys.path``, and nothing outside
the folder is read; parent packages of a nested one (``a`` of ``a.b``) are bound as empty
namespace packages rather than executed. A name already imported (``cordon``, a stdlib
module) is never replaced: the import then fails as it would have.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

from cordon.protocol._entry import split_entry_module

__all__ = ["import_entry_module"]


def _namespace(name: str, folder: Path) -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(folder)]
    return module


def _bind_package(names: tuple[str, ...], folder: Path) -> None:
    for i in range(1, len(names) + 1):
        name = ".".join(names[:i])
        if name in sys.modules:
            return  # never shadow what is already imported
        where = folder if i == len(names) else folder.parents[len(names) - i - 1]
        init = where / "__init__.py"
        if i == len(names) and init.is_file():
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[str(where)]
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            sys.modules[name] = _namespace(name, where)
        if i > 1:
            setattr(sys.modules[".".join(names[: i - 1])], names[i - 1], sys.modules[name])


def import_entry_module(module_name: str, plugin_dir: str) -> types.ModuleType:
    """The entry's module, imported from ``plugin_dir`` (already first on ``sys.path``)."""
    package, _below = split_entry_module(module_name, plugin_dir)
    if package:
        _bind_package(package, Path(plugin_dir))
    return importlib.import_module(module_name)
