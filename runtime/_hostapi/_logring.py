"""The running host's memory of its plugins' recent log records, behind ``cordon logs``.

:class:`LogRing` subscribes to the runtime's
:class:`~cordon.runtime._hostapi._logsink.LogSink`, so it sees every plugin record exactly
as the host logs it — redacted, capped, rate-limited — and whatever the host's own log
level. It keeps the last :data:`RING_RECORDS` per plugin, and hands new records to followers
(``cordon logs ID --follow``).

Nothing a plugin or a follower does can make the host wait or grow without bound: the ring
is a fixed-size deque per plugin; each follower has a bounded queue, and a follower that
reads too slowly loses records (counted, and reported to it as a ``logs.dropped`` record)
instead of holding the plugin's log calls back.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from cordon.protocol import QuotaExceeded

from ._audit import iso8601

__all__ = ["FOLLOW_BUFFER", "MAX_FOLLOWERS", "RING_RECORDS", "Follower", "LogRing"]

#: Records kept per plugin. A record is capped by the sink (16 KiB by default), so a plugin's
#: ring holds at most ~4 MiB however much it logs; the last few hundred lines are what an
#: operator looks at when something just went wrong.
RING_RECORDS: Final = 256
#: Records waiting for one follower before newer ones are dropped (and counted) for it.
FOLLOW_BUFFER: Final = 256
#: Followers at once, over every plugin. A follower's queue may keep records the ring has let
#: go (at most FOLLOW_BUFFER x 16 KiB each), so their number is what bounds that memory:
#: 16 x 4 MiB in the worst case, far more terminals than an operator has open.
MAX_FOLLOWERS: Final = 16

Record = dict[str, Any]


class Follower:
    """One ``--follow``: new records of one plugin, in order; ``dropped`` counts those lost
    because this follower read too slowly (reset when reported)."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.dropped = 0
        send, receive = anyio.create_memory_object_stream[Record](FOLLOW_BUFFER)
        self._send: MemoryObjectSendStream[Record] = send
        self.receive: MemoryObjectReceiveStream[Record] = receive

    def offer(self, record: Record) -> None:
        try:
            self._send.send_nowait(record)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the follower is leaving

    def close(self) -> None:
        self._send.close()
        self.receive.close()


class LogRing:
    """Recent records per plugin, and their followers. Feed it with :meth:`add` (a
    :data:`~cordon.runtime._hostapi._logsink.LogSubscriber`)."""

    def __init__(self, size: int = RING_RECORDS) -> None:
        if size <= 0:
            raise ValueError("a log ring holds at least one record")
        self.size = size
        self._rings: dict[str, deque[Record]] = {}
        self._followers: dict[str, set[Follower]] = {}
        self._seq = 0

    def add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        plugin = fields.get("plugin")
        if not isinstance(plugin, str):
            return
        self._seq += 1
        record: Record = {
            "seq": self._seq,
            "ts": iso8601(time.time()),
            "plugin": plugin,
            "level": level,
            "event": event,
            **{k: v for k, v in fields.items() if k != "plugin"},
        }
        ring = self._rings.get(plugin)
        if ring is None:
            ring = self._rings[plugin] = deque(maxlen=self.size)
        ring.append(record)
        for follower in self._followers.get(plugin, ()):
            follower.offer(record)

    def knows(self, plugin: str) -> bool:
        """Whether ``plugin`` has logged anything since the host started."""
        return plugin in self._rings

    def recent(self, plugin: str, limit: int | None = None) -> list[Record]:
        """The plugin's last ``limit`` records (all kept, if ``None``), oldest first."""
        ring = self._rings.get(plugin, ())
        records = list(ring)
        return records if limit is None else records[max(0, len(records) - limit) :]

    def check_room(self, plugin: str) -> None:
        """:class:`QuotaExceeded` (``log-followers``) if one more follower is too many."""
        if self.followers() >= MAX_FOLLOWERS:
            raise QuotaExceeded(
                f"already {MAX_FOLLOWERS} log followers on this host; stop one first",
                kind="log-followers",
                limit=MAX_FOLLOWERS,
                plugin=plugin,
            )

    @contextlib.contextmanager
    def follow(self, plugin: str) -> Iterator[Follower]:
        """A :class:`Follower` of ``plugin``'s records from now on, until the block ends;
        :class:`QuotaExceeded` (``log-followers``) past :data:`MAX_FOLLOWERS`."""
        self.check_room(plugin)
        follower = Follower(plugin)
        self._followers.setdefault(plugin, set()).add(follower)
        try:
            yield follower
        finally:
            followers = self._followers.get(plugin)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[plugin]
            follower.close()

    def followers(self, plugin: str | None = None) -> int:
        """How many followers there are (of ``plugin``, or in all)."""
        if plugin is not None:
            return len(self._followers.get(plugin, ()))
        return sum(len(f) for f in self._followers.values())
