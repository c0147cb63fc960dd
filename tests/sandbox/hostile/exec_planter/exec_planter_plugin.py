"""Hostile test plugin: writes dotfiles, repo configs and CLI plugins into every place it can
(its scratch dir, which used to be the granted command's HOME and cwd), then asks the host to
run a command that would read them. Refusals come back as data, so a test sees each one."""

from __future__ import annotations

import os
from typing import Any

from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()


@plugin.tool
async def plant(ctx: Context, files: dict[str, str], executable: list[str] | None = None) -> str:
    """Write ``files`` (paths relative to the scratch dir); return the scratch dir."""
    for rel, text in files.items():
        path = os.path.join(ctx.scratch_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Executable from creation (open's mode): a chmod may be refused in the sandbox.
        mode = 0o755 if rel in (executable or []) else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return ctx.scratch_dir


@plugin.tool
async def mkdirs(ctx: Context, dirs: list[str]) -> None:
    for rel in dirs:
        os.makedirs(os.path.join(ctx.scratch_dir, rel), exist_ok=True)


@plugin.tool
async def run(ctx: Context, argv: list[str], timeout: float | None = None) -> dict[str, Any]:
    try:
        result = await ctx.exec(argv, timeout=timeout)
    except CordonError as exc:
        return {"refused": type(exc).__name__, "message": str(exc)}
    return {
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }
