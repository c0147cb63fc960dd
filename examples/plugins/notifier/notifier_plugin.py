"""An event-handler plugin: remembers the last ``build.*`` event it was sent.

The manifest declares ``[contributes] events`` for ``build.*``, so the host knows the
subscription before the plugin ever runs: a matching event starts a plugin that has not
started yet (an activation event) and is delivered once it is up. ``@plugin.on_event("build.*")``
is the handler; each event it may receive (``events:subscribe:build.*``) arrives as a call
with the keyword arguments ``topic``, ``payload`` and ``source`` (the emitting plugin's id,
``"app"`` for the host application). Delivery is asynchronous: ``rt.emit`` returns once the
event is queued, not once handlers have run.

The event is kept in the plugin's storage (granted ``storage``), so ``last_event`` answers
across worker restarts.
"""

from __future__ import annotations

from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

KEY = "last_event"


@plugin.on_event("build.*")
async def on_build(ctx: Context, topic: str, payload: Any = None, source: str = "") -> None:
    """Store and log a build event."""
    count = int(await ctx.storage.get("count", 0)) + 1
    await ctx.storage.set(KEY, {"topic": topic, "payload": payload, "source": source})
    await ctx.storage.set("count", count)
    await ctx.log.info("notifier.event", topic=topic, source=source, count=count)


@plugin.tool
async def last_event(ctx: Context) -> dict[str, Any] | None:
    """The last ``build.*`` event received (``{topic, payload, source, count}``), or null."""
    event = await ctx.storage.get(KEY)
    if event is None:
        return None
    return {**event, "count": await ctx.storage.get("count", 0)}
