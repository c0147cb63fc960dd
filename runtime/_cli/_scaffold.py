"""``cordon new plugin NAME``: a new plugin folder that loads, runs and tests from the start.

The generated test does not import the plugin module: it loads the folder through
:class:`~cordon.runtime.Runtime`, so the plugin runs in its real sandboxed worker — the only
place its code will ever run — and a missing permission or a non-JSON return value fails the
author's first ``pytest``, not a user's first call.

**Why a ``cordon.toml`` too.** A plugin gets a permission only when its manifest asks for it
*and* the operator grants it, and cordon grants nothing by default: the built-in defaults are
for untrusted code. The scaffold's plugin asks for ``log``, so without a grant its log
requests are refused (once every call failed with ``PermissionDenied: plugin 'NAME' lacks
permission 'log'``; its info records never reach the operator either way). Rather than
weaken the defaults for every plugin an operator will ever run (granting ``log`` to all),
:func:`write_grants` writes the operator's side for this one plugin: a
``[plugins.NAME]`` section granting exactly what its manifest requests, in the ``cordon.toml``
of the folder the command ran in (created, with ``plugin-dirs`` pointing at the new plugin's
parent, when there is none; appended to when there is one without a section for NAME; never
touched when it already has one or the result would not parse). The grant is visible and
editable, as every grant should be.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from packaging.version import Version

from cordon.protocol import CordonError

from .._platform._versions import CORDON_VERSION
from .._settings._manifest import MANIFEST_FILENAME
from .._settings._validate import PLUGIN_ID

__all__ = ["ConfigNote", "ScaffoldError", "scaffold_plugin", "write_grants"]

_SUFFIX: Final = "_plugin"
#: What the scaffold's plugin asks for (its manifest) and therefore what is granted to it.
REQUESTED: Final = ("log",)
CONFIG_FILENAME: Final = "cordon.toml"


class ScaffoldError(CordonError):
    """The plugin folder cannot be created: ``reason`` says why, ``path`` where (if known)."""

    code = -32044
    _fields = ("name", "path", "reason")
    name: str | None
    path: str | None
    reason: str | None

    def _default_message(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"cannot create plugin {self.name!r}{where}: {self.reason}"


def _suggest(name: str) -> str | None:
    """A valid id close to ``name`` (``"My Tool"`` -> ``"my-tool"``), if there is one."""
    guess = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")
    guess = re.sub(r"^[^a-z]+", "", guess)[:64].rstrip("-_")
    return guess if guess and guess != name and PLUGIN_ID.fullmatch(guess) else None


def _check_name(name: str) -> None:
    if PLUGIN_ID.fullmatch(name):
        return
    hint = f' (try "{s}")' if (s := _suggest(name)) else ""
    raise ScaffoldError(
        name=name,
        reason=(
            "a plugin id starts with a lower-case letter and has at most 64 lower-case "
            f"letters, digits, '-' and '_'{hint}"
        ),
    )


def _module_name(plugin_id: str) -> str:
    # Suffixed so the module never shadows a stdlib or third-party module of the same name
    # (a plugin called "json" must not make `import json` find itself).
    base = plugin_id.replace("-", "_")
    return base if base.endswith(_SUFFIX) else base + _SUFFIX


def _title(plugin_id: str) -> str:
    return " ".join(word.capitalize() for word in re.split(r"[-_]+", plugin_id) if word)


def _requires_cordon() -> str:
    # `^` of the running major.minor: while cordon is 0.x every minor may break plugins, and
    # after 1.0 only a major may, which is exactly what `^` expresses for both.
    major, minor = (*Version(CORDON_VERSION).release, 0)[:2]
    return f"^{major}.{minor}"


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _manifest(plugin_id: str, module: str) -> str:
    return f"""\
[plugin]
id = "{plugin_id}"
name = "{_title(plugin_id)}"
version = "0.1.0"
description = "TODO: one line on what {plugin_id} does."
entry = "{module}:plugin"
requires-cordon = "{_requires_cordon()}"
# Everything the plugin may ask the host for; an operator's config can only narrow this.
permissions = {_toml_list(REQUESTED)}

[contributes]
tools = [{{ name = "greet", description = "Greet someone by name." }}]
"""


def _module(plugin_id: str) -> str:
    return f'''\
"""{_title(plugin_id)}: a cordon plugin.

This module runs only inside its own sandboxed worker process. Everything it needs from the
host (logging, storage, events, ...) goes through ``ctx``, and only as far as the permissions
in plugin.toml allow.
"""

from __future__ import annotations

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    await ctx.log.info("greeting", name=name)  # allowed by the "log" permission
    return f"Hello {{name}}" + ("!" if excited else "")
'''


def _test(plugin_id: str, module: str) -> str:
    return f'''\
"""Runs {plugin_id} the way cordon will: loaded by the runtime into its sandboxed worker.

The test never imports {module}.py itself; calls go over the same channel a host uses.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cordon.runtime import Runtime

PLUGIN_DIR = Path(__file__).resolve().parent
# What an operator writes in cordon.toml: a plugin gets only what it asks for *and* is granted.
CONFIG = {{"plugins": {{"{plugin_id}": {{"grant": {_toml_list(REQUESTED)}}}}}}}


@pytest.mark.anyio
async def test_greet_answers_through_the_sandbox() -> None:
    with anyio.fail_after(30):
        async with Runtime(CONFIG) as rt:
            p = await rt.load(PLUGIN_DIR)
            assert await p.call("greet", {{"name": "Ada"}}) == "Hello Ada"
            assert await p.call("greet", {{"name": "Ada", "excited": True}}) == "Hello Ada!"
'''


def _readme(plugin_id: str, module: str) -> str:
    return f"""\
# {_title(plugin_id)}

A [cordon](https://pypi.org/project/cordon/) plugin.

- `{MANIFEST_FILENAME}`: id, version, entry point and the permissions it asks for.
- `{module}.py`: the plugin's code; it runs in a sandboxed worker process.
- `test_{module}.py`: loads the plugin through the runtime and calls it; run `pytest`.
"""


def scaffold_plugin(name: str, dest: Path) -> Path:
    """Create ``dest/NAME/`` holding a working plugin whose id is ``name``, and return it.

    ``dest`` (the folder to create the plugin in) is created if missing; the plugin folder
    itself must not exist — nothing is ever overwritten. Raises :class:`ScaffoldError` for an
    invalid id or an existing folder.
    """
    _check_name(name)
    module = _module_name(name)
    target = Path(dest) / name
    try:
        Path(dest).mkdir(parents=True, exist_ok=True)
        # mkdir, not exists(): refusing and claiming the folder is one atomic step, so two
        # concurrent scaffolds cannot both write into the same folder.
        target.mkdir()
    except FileExistsError:
        raise ScaffoldError(name=name, path=str(target), reason="it already exists") from None
    except OSError as err:
        raise ScaffoldError(name=name, path=str(target), reason=str(err)) from None
    try:
        (target / MANIFEST_FILENAME).write_text(_manifest(name, module), encoding="utf-8")
        (target / f"{module}.py").write_text(_module(name), encoding="utf-8")
        (target / f"test_{module}.py").write_text(_test(name, module), encoding="utf-8")
        (target / "README.md").write_text(_readme(name, module), encoding="utf-8")
    except BaseException:
        # The folder is ours (created above), so a half-written plugin never stays behind.
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class ConfigNote:
    """What :func:`write_grants` did to ``path``: ``created``, ``appended``, or ``unchanged``
    (then ``why``, and the ``section`` to add by hand)."""

    path: Path
    action: str
    section: str
    why: str = ""


def _grant_section(plugin_id: str) -> str:
    return (
        f"\n# Written by `cordon new plugin {plugin_id}`: grants exactly what its manifest\n"
        f"# requests (cordon grants nothing by default). Edit to narrow it.\n"
        f"[plugins.{plugin_id}]\ngrant = {_toml_list(REQUESTED)}\n"
    )


def write_grants(plugin_id: str, plugin_parent: Path, where: Path) -> ConfigNote:
    """Grant the scaffolded ``plugin_id`` what it requests in ``where/cordon.toml`` (see the
    module docstring); ``plugin_parent`` is the folder the plugin was created in."""
    path = where / CONFIG_FILENAME
    section = _grant_section(plugin_id)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        rel = os.path.relpath(plugin_parent.resolve(), where.resolve())
        header = f'[runtime]\nplugin-dirs = ["{Path(rel).as_posix()}"]\n'
        try:
            # "x": never clobber a file that appeared since we looked.
            with path.open("x", encoding="utf-8") as f:
                f.write(header + section)
        except FileExistsError:
            return write_grants(plugin_id, plugin_parent, where)
        return ConfigNote(path, "created", section)
    try:
        existing = tomllib.loads(current)
        tomllib.loads(current + "\n" + section)
    except tomllib.TOMLDecodeError as exc:
        return ConfigNote(path, "unchanged", section, f"it is not valid TOML as it is: {exc}")
    plugins = existing.get("plugins")
    if isinstance(plugins, dict) and plugin_id in plugins:
        return ConfigNote(path, "unchanged", section, f"it already has [plugins.{plugin_id}]")
    with path.open("a", encoding="utf-8") as f:
        f.write(("" if current.endswith("\n") or not current else "\n") + section)
    return ConfigNote(path, "appended", section)
