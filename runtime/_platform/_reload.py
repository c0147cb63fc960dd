"""Development helper: reload plugins when their files change (``cordon run --watch``).

Uses :func:`watchfiles.awatch` (the ``watch`` extra), imported only when watching starts, so
the runtime does not need it otherwise. Each batch of changes reloads every affected plugin
once, through :meth:`Runtime.reload` — so a broken edit is reported and the running version
keeps serving until the next good one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from cordon.protocol import CordonError

if TYPE_CHECKING:
    from .._core._runtime import Runtime

__all__ = ["ReloadOutcome", "watch"]

log = structlog.get_logger("cordon")


@dataclass(frozen=True)
class ReloadOutcome:
    """One reload triggered by a change: ``error`` is ``None`` when it succeeded."""

    plugin: str
    changed: tuple[str, ...]
    error: CordonError | None = None


def _owner(path: Path, dirs: dict[Path, str]) -> str | None:
    for directory, pid in dirs.items():
        if path == directory or directory in path.parents:
            return pid
    return None


async def watch(
    runtime: Runtime,
    plugin_ids: Iterable[str] | None = None,
    *,
    on_reload: Callable[[ReloadOutcome], Awaitable[Any] | Any] | None = None,
    stop_event: anyio.Event | None = None,
    debounce_ms: int = 400,
    ready: anyio.Event | None = None,
    force_polling: bool | None = None,
) -> None:
    """Reload ``plugin_ids`` (default: every loaded plugin) whenever files in their
    directories change, until cancelled or ``stop_event`` is set. ``on_reload`` hears every
    outcome; ``ready`` is set once the watcher is running (for tests and tools).

    ``force_polling`` polls instead of using inotify, whose backend closes its file
    descriptors on a thread of its own a moment *after* the watcher is closed.
    """
    try:
        import watchfiles
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("watching needs the 'watch' extra: pip install 'cordon[watch]'") from exc
    ids = list(plugin_ids) if plugin_ids is not None else list(runtime.plugins)
    # Manifest directories are already absolute and resolved.
    dirs = {Path(runtime.get(pid).manifest.directory): pid for pid in ids}
    if not dirs:
        return
    log.info("watch.started", plugins=sorted(dirs.values()))
    watcher = watchfiles.awatch(
        *dirs,
        stop_event=stop_event,
        debounce=debounce_ms,
        yield_on_timeout=True,
        rust_timeout=100,
        force_polling=force_polling,
        poll_delay_ms=50,
    )
    try:
        async for changes in watcher:
            if ready is not None:
                ready.set()
            touched: dict[str, list[str]] = {}
            for _, name in changes:
                pid = _owner(Path(name), dirs)
                if pid is not None:
                    touched.setdefault(pid, []).append(name)
            for pid, names in sorted(touched.items()):
                outcome = ReloadOutcome(pid, tuple(sorted(names)))
                try:
                    await runtime.reload(pid)
                except CordonError as exc:
                    log.error("watch.reload_failed", plugin=pid, error=exc.message)
                    outcome = ReloadOutcome(pid, outcome.changed, exc)
                else:
                    log.info("watch.reloaded", plugin=pid, changed=len(names))
                if on_reload is not None:
                    result = on_reload(outcome)
                    if isinstance(result, Awaitable):
                        await result
    finally:
        await watcher.aclose()
