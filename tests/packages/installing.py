"""Helpers for the install tests: a room (a wheelhouse, a config naming a state dir), plugin
folders with dependencies, the real ``cordon`` CLI as a subprocess, and what an install left
under the state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.packages.wheelhouse import standard_wheelhouse

__all__ = [
    "CORDON",
    "Room",
    "assert_nothing_placed",
    "leftovers",
    "make_room",
    "one_line_error",
    "pack_plugin",
    "plugin_folder",
]

CORDON = str(Path(sys.executable).parent / "cordon")
#: A CLI call builds at most one small env from a local wheelhouse; generous for a slow box.
CLI_TIMEOUT = 120.0


@dataclass
class Room:
    root: Path
    wheelhouse: Path
    state: Path
    config: Path

    def cordon(
        self,
        *args: str,
        index: bool = True,
        env: dict[str, str] | None = None,
        config: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--find-links", str(self.wheelhouse), "--offline"] if index else []
        # lock, pack and key new read no config: they touch no state dir.
        if args[0] != "key" and args[1] not in ("lock", "pack"):
            extra += ["--config", str(config or self.config)]
        return subprocess.run(
            [CORDON, *args, *extra],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            cwd=self.root,
            check=False,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )

    def config_with(
        self, name: str, state: Path | None = None, runtime: dict[str, str] | None = None
    ) -> Path:
        """A config file: ``state`` as its state dir, ``runtime`` keys as TOML values."""
        lines = ["[runtime]", f'state-dir = "{state or self.state}"']
        lines += [f"{k} = {v}" for k, v in (runtime or {}).items()]
        path = self.root / name
        path.write_text("\n".join(lines) + "\n")
        return path


def make_room(tmp_path: Path) -> Room:
    wheelhouse = standard_wheelhouse(tmp_path / "wheelhouse")
    room = Room(tmp_path, wheelhouse, tmp_path / "state", tmp_path / "cordon.toml")
    room.config_with("cordon.toml")
    return room


def plugin_folder(
    parent: Path,
    plugin_id: str,
    version: str = "1.0.0",
    *,
    dependencies: tuple[str, ...] = (),
    permissions: tuple[str, ...] = ("log",),
    folder: str | None = None,
) -> Path:
    """A plugin whose tool ``which`` returns the ``VERSION`` of each dependency it imports
    (and its own version), so a call tells which copies a worker loaded."""
    path = parent / (folder or f"{plugin_id}-{version}")
    path.mkdir(parents=True)
    deps = ", ".join(f'"{d}"' for d in dependencies)
    perms = ", ".join(f'"{p}"' for p in permissions)
    (path / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "{version}"\n'
        f'entry = "{plugin_id}_main:plugin"\npermissions = [{perms}]\n'
        f"dependencies = [{deps}]\n"
    )
    modules = [d.split("=")[0].split(">")[0].split("<")[0].strip() for d in dependencies]
    imports = "".join(f"    import {m}\n" for m in modules)
    found = ", ".join(f'"{m}": {m}.VERSION' for m in modules)
    (path / f"{plugin_id}_main.py").write_text(
        "from cordon.worker import Context, Plugin\n\nplugin = Plugin()\n\n\n"
        "@plugin.tool\nasync def which(ctx: Context) -> dict[str, str]:\n"
        f"{imports}    return {{{found}{', ' if found else ''}'self': {version!r}}}\n"
    )
    return path


def leftovers(state: Path) -> list[str]:
    """What is under the state dir beyond its empty skeleton and lock files: version dirs,
    records, links, envs, staging dirs. (The uv cache is a cache: not counted.)"""
    found: list[str] = []
    plugins = state / "plugins"
    if plugins.is_dir():
        for p in sorted(plugins.rglob("*")):
            rel = p.relative_to(state).as_posix()
            if rel in ("plugins/.lock", "plugins/.staging"):
                continue
            found.append(rel)
    envs = state / "envs"
    if envs.is_dir():
        found += [f"envs/{p.name}" for p in sorted(envs.iterdir()) if not p.name.endswith(".lock")]
    return found


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_placed(room: Room) -> None:
    assert leftovers(room.state) == []
    staging = room.state / "plugins" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def pack_plugin(room: Room, folder: Path, *extra: str) -> Path:
    proc = room.cordon("plugin", "pack", str(folder), "-o", str(room.root / "dist"), *extra)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())
