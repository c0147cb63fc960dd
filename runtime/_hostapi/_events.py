"""The host's event bus: topics, globbed subscriptions, permission-scoped both ways.

* **Emitting** ``topic`` needs ``events:emit:<topic>`` (checked by the plugin's HostAPI before
  it calls :meth:`EventBus.emit`). Topics under ``cordon.`` are the host's own lifecycle
  events (``cordon.plugin.started`` ...): only the runtime emits them, with source
  ``"cordon"``; no grant lets a plugin emit one.
* **Receiving** an event on ``topic`` needs ``events:subscribe:<topic>``, checked here per
  event against the subscriber's :class:`PermissionSet`, so a subscription glob wider than the
  grant simply sees less. Lifecycle events need no permission to receive. Subscribers with
  no permission set (the host's own) receive everything their glob matches.

Topics are dot-separated words (``build.done``, ``git/push.ok``): letters, digits, ``_``,
``-`` between ``.`` or ``/`` separators; no glob characters, so permission checks on them are
exact. Subscription globs use :func:`fnmatch.fnmatchcase` (``*`` crosses dots).

Delivery never makes the emitter wait: each subscription has its own bounded queue and its
own delivery task, so one subscriber's events arrive in the order they were emitted. When a
queue is full the new event is dropped *for that subscriber*, counted
(``Subscription.dropped``) and logged (``event.dropped`` once when a subscriber starts
dropping, ``event.queue_recovered`` with the count once it accepts events again, so a flood
costs two log lines, not one per event); other subscribers are unaffected. A delivery that
raises or exceeds ``deliver_timeout`` is counted as failed and the next event is delivered.
Payloads are shared between subscribers: treat them as read-only.

A subscription may hold several globs (a plugin's, one per topic it handles) and a ``gate``:
while the gate says no (the plugin is disabled, say) the subscription takes no events and
is not counted by :meth:`EventBus.emit`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from cordon.protocol import InvalidParams

from .._settings._permissions import PermissionSet

__all__ = [
    "LIFECYCLE_PREFIX",
    "LIFECYCLE_SOURCE",
    "Deliver",
    "EventBus",
    "Gate",
    "Subscription",
    "check_glob",
    "check_topic",
]

log = structlog.get_logger("cordon")

LIFECYCLE_SOURCE: Final = "cordon"
LIFECYCLE_PREFIX: Final = "cordon."
MAX_TOPIC: Final = 200
_TOPIC: Final = re.compile(r"[A-Za-z0-9_\-]+(?:[./][A-Za-z0-9_\-]+)*")
_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\-/\[\]!]{1,200}")

#: ``await deliver(topic, payload, source)``
Deliver = Callable[[str, Any, str], Awaitable[None]]
#: Whether a subscriber takes events now.
Gate = Callable[[], bool]
_Event = tuple[str, Any, str]


def check_glob(topic_glob: object) -> str:
    """``topic_glob`` if it is a valid subscription glob, else :class:`InvalidParams`."""
    if not isinstance(topic_glob, str) or not _GLOB.fullmatch(topic_glob):
        raise InvalidParams(f"{topic_glob!r} is not a topic glob", field="topic")
    return topic_glob


def check_topic(topic: object, field: str = "topic") -> str:
    """``topic`` if it is a valid concrete topic, else :class:`InvalidParams`."""
    if not isinstance(topic, str) or not topic:
        raise InvalidParams(f"{field} must be a non-empty string", field=field)
    if len(topic) > MAX_TOPIC or not _TOPIC.fullmatch(topic):
        raise InvalidParams(
            f"{field} must be up to {MAX_TOPIC} characters of words (letters, digits, _ and -) "
            "separated by . or /",
            field=field,
        )
    return topic


class Subscription:
    """One ``subscribe`` call. ``close()`` ends it; queued events are discarded."""

    def __init__(
        self,
        bus: EventBus,
        subscriber_id: str,
        topic_globs: tuple[str, ...],
        deliver: Deliver,
        permissions: PermissionSet | None,
        queue_size: int,
        gate: Gate | None = None,
    ) -> None:
        self.bus = bus
        self.subscriber_id = subscriber_id
        self.topic_globs = topic_globs
        self.deliver = deliver
        self.permissions = permissions
        self.gate = gate
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.closed = False
        # Drops since the queue last accepted an event: logged as one episode.
        self._dropping = 0
        send, recv = anyio.create_memory_object_stream[_Event](queue_size)
        self._send: MemoryObjectSendStream[_Event] = send
        self._recv: MemoryObjectReceiveStream[_Event] = recv

    @property
    def topic_glob(self) -> str:
        """The globs as one string, for display."""
        return ", ".join(self.topic_globs)

    def set_globs(self, topic_globs: tuple[str, ...]) -> None:
        """Replace the globs in place: queued events stay queued, none falls between."""
        for g in topic_globs:
            check_glob(g)
        self.topic_globs = topic_globs

    def wants(self, topic: str, source: str) -> bool:
        if not any(fnmatchcase(topic, g) for g in self.topic_globs):
            return False
        if self.gate is not None and not self.gate():
            return False
        if self.permissions is None:
            return True
        if source == LIFECYCLE_SOURCE and topic.startswith(LIFECYCLE_PREFIX):
            return True
        return self.permissions.allows(f"events:subscribe:{topic}")

    def offer(self, event: _Event) -> bool:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                log.warning(
                    "event.dropped",
                    subscriber=self.subscriber_id,
                    topic=event[0],
                    queue=self.bus.queue_size,
                    why="the subscriber's queue is full; dropping until it drains",
                )
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        if self._dropping:
            log.warning(
                "event.queue_recovered",
                subscriber=self.subscriber_id,
                dropped=self._dropping,
                dropped_total=self.dropped,
            )
            self._dropping = 0
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self._send.close()
            self._recv.close()

    async def _run(self, timeout: float) -> None:
        try:
            async for topic, payload, source in self._recv:
                try:
                    with anyio.fail_after(timeout):
                        await self.deliver(topic, payload, source)
                    self.delivered += 1
                except Exception as exc:
                    self.failed += 1
                    log.warning(
                        "event.delivery_failed",
                        subscriber=self.subscriber_id,
                        topic=topic,
                        error=f"{type(exc).__name__}: {exc}",
                    )
        except anyio.ClosedResourceError:
            pass

    def stats(self) -> dict[str, Any]:
        return {
            "subscriber": self.subscriber_id,
            "topic": self.topic_glob,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": self._send.statistics().current_buffer_used,
        }


class EventBus:
    """``async with EventBus() as bus:`` — the bus owns the delivery tasks and ends them
    when the block ends."""

    def __init__(self, *, queue_size: int = 256, deliver_timeout: float = 30.0) -> None:
        self.queue_size = queue_size
        self.deliver_timeout = deliver_timeout
        self._subs: list[Subscription] = []
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> EventBus:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg = self._tg
        assert tg is not None
        self._tg = None
        for sub in list(self._subs):
            sub.close()
        tg.cancel_scope.cancel()
        return await tg.__aexit__(*exc_info)

    def subscribe(
        self,
        subscriber_id: str,
        topic_glob: str | tuple[str, ...],
        deliver: Deliver,
        *,
        permissions: PermissionSet | None = None,
        gate: Gate | None = None,
    ) -> Subscription:
        """Deliver events whose topic matches ``topic_glob`` (one glob or several; and, when
        ``permissions`` is given, which it allows as ``events:subscribe:<topic>``; and while
        ``gate()`` is true, when given) to ``deliver``, one at a time, in order."""
        if self._tg is None:
            raise RuntimeError("the event bus is not running (use `async with EventBus()`)")
        globs = (topic_glob,) if isinstance(topic_glob, str) else tuple(topic_glob)
        for g in globs:
            check_glob(g)
        sub = Subscription(self, subscriber_id, globs, deliver, permissions, self.queue_size, gate)
        self._subs.append(sub)
        self._tg.start_soon(sub._run, self.deliver_timeout)
        return sub

    def unsubscribe_all(self, subscriber_id: str) -> None:
        """End every subscription of ``subscriber_id`` (on unload)."""
        for sub in [s for s in self._subs if s.subscriber_id == subscriber_id]:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    async def emit(self, topic: str, payload: Any, *, source: str) -> int:
        """Queue ``topic`` for every subscriber that may see it; returns how many took it
        (delivered to or queued for; a full queue's drop is not counted).

        Never waits on a subscriber. Checks the topic's shape; the *emit* permission is the
        caller's to check (the runtime's own lifecycle events need none).
        """
        check_topic(topic)
        queued = 0
        event = (topic, payload, source)
        for sub in list(self._subs):
            if sub.wants(topic, source) and sub.offer(event):
                queued += 1
        # A checkpoint: an emitter in a tight loop still lets delivery tasks run.
        await anyio.lowlevel.checkpoint()
        return queued

    def stats(self) -> list[dict[str, Any]]:
        return [s.stats() for s in self._subs]
