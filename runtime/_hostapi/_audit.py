"""The audit trail: every host API call a plugin makes, allowed or not, persisted.

One row per call: who (the plugin id of the channel), what (method), a summary of the
arguments (key, topic, argv — redacted and neutralised, capped), whether the permission check
allowed it, the outcome (``ok`` or the error type), and when.

Writes are *group-committed*: :meth:`AuditTrail.record` appends to an in-memory batch; the
first caller to find no write in progress writes the batch (and whatever arrives while it
writes) in one transaction, everybody else returns at once. So a plugin flooding
``host/log`` costs one insert per batch rather than one fsync per line. Consecutive
identical records of a plugin (same method, summary, decision, outcome) collapse into one
row with a ``count`` and a ``ts``..``last_ts`` span — in the batch and onto the row last
written — which keeps a flood of one call from flooding the table. The batch is
bounded; what does not fit is counted and written as an ``audit.overflow`` row.

The database is its own file (``audit.db``) so audit writes never contend with storage
writes for SQLite's single write lock. It runs WAL with ``synchronous=NORMAL``: a host crash
loses nothing that was committed; a power cut may lose the last moments. Audit is a record,
not a transaction the plugin was promised.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
import msgspec

from ._redact import Redactor

__all__ = ["AuditEntry", "AuditTrail", "iso8601"]

MAX_SUMMARY: Final = 300
MAX_METHOD: Final = 100
#: Records waiting for the disk before new ones are counted instead of kept.
MAX_PENDING: Final = 10_000
#: Rows kept per plugin; older ones are pruned.
MAX_ROWS_PER_PLUGIN: Final = 100_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    plugin TEXT NOT NULL,
    method TEXT NOT NULL,
    summary TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_plugin ON audit(plugin, id);
"""


def iso8601(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO 8601 in UTC to the millisecond, e.g.
    ``2026-11-29T10:04:27.123Z``: what a person reads, sortable as text."""
    when = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return when.removesuffix("+00:00") + "Z"


class AuditEntry(msgspec.Struct):
    """One audited call (or ``count`` identical consecutive ones, ``ts`` to ``last_ts``)."""

    ts: float
    plugin: str
    method: str
    summary: str
    allowed: bool
    outcome: str
    count: int = 1
    last_ts: float = 0.0

    def key(self) -> tuple[str, str, str, bool, str]:
        return (self.plugin, self.method, self.summary, self.allowed, self.outcome)


class AuditTrail:
    """Open with ``await AuditTrail.open(path)``; close with :meth:`close`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        redactor: Redactor | None = None,
        max_pending: int = MAX_PENDING,
        max_rows_per_plugin: int = MAX_ROWS_PER_PLUGIN,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self._redactor = redactor or Redactor()
        self._max_pending = max_pending
        self._max_rows = max_rows_per_plugin
        self._pending: list[AuditEntry] = []
        self._overflow: dict[str, int] = {}
        self._flush_lock = anyio.Lock()
        self._db_lock = threading.Lock()
        self._inserted_since_prune: dict[str, int] = {}
        # Per plugin: index of its last entry in _pending, and (key, rowid) of its last
        # written row, so "the same call again" extends a row instead of adding one even when
        # calls arrive one at a time (a plugin awaiting each log call in a loop).
        self._last_pending: dict[str, int] = {}
        self._last_row: dict[str, tuple[tuple[str, str, str, bool, str], int]] = {}

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        redactor: Redactor | None = None,
        max_pending: int = MAX_PENDING,
        max_rows_per_plugin: int = MAX_ROWS_PER_PLUGIN,
    ) -> AuditTrail:
        p = Path(path)

        def open_db() -> sqlite3.Connection:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False, timeout=10)
            try:
                os.chmod(p, 0o600)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            return conn

        conn = await anyio.to_thread.run_sync(open_db)
        return cls(
            conn,
            p,
            redactor=redactor,
            max_pending=max_pending,
            max_rows_per_plugin=max_rows_per_plugin,
        )

    async def close(self) -> None:
        await self.flush()

        def close() -> None:
            with self._db_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(close)

    async def __aenter__(self) -> AuditTrail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing --------------------------------------------------------------------------

    def add(
        self, plugin: str, method: str, summary: str, *, allowed: bool, outcome: str = "ok"
    ) -> None:
        """Queue a record without writing it (the next :meth:`record`/:meth:`flush` does)."""
        now = time.time()
        clean = self._redactor.clean_text(summary[: MAX_SUMMARY * 4])
        if len(clean) > MAX_SUMMARY:
            clean = clean[:MAX_SUMMARY] + "…"
        entry = AuditEntry(
            ts=now,
            plugin=plugin,
            method=self._redactor.clean_text(method[:MAX_METHOD]),
            summary=clean,
            allowed=allowed,
            outcome=outcome,
            last_ts=now,
        )
        pending = self._pending
        last = self._last_pending.get(plugin)
        if last is not None and last < len(pending) and pending[last].key() == entry.key():
            pending[last].count += 1
            pending[last].last_ts = now
        elif len(pending) < self._max_pending:
            self._last_pending[plugin] = len(pending)
            pending.append(entry)
        else:
            self._overflow[plugin] = self._overflow.get(plugin, 0) + 1

    async def record(
        self, plugin: str, method: str, summary: str, *, allowed: bool, outcome: str = "ok"
    ) -> None:
        """Record one call. Returns at once when another caller is already writing (it will
        write this record too); otherwise writes the batch."""
        self.add(plugin, method, summary, allowed=allowed, outcome=outcome)
        if self._flush_lock.locked():
            return
        await self.flush()

    async def flush(self) -> None:
        """Write everything recorded so far."""
        # Shielded: a cancelled caller must not leave records stranded in memory; the write
        # is short and bounded.
        with anyio.CancelScope(shield=True):
            async with self._flush_lock:
                while self._pending or self._overflow:
                    batch, self._pending = self._pending, []
                    self._last_pending.clear()
                    overflow, self._overflow = self._overflow, {}
                    now = time.time()
                    for plugin, n in overflow.items():
                        batch.append(
                            AuditEntry(
                                ts=now,
                                plugin=plugin,
                                method="audit.overflow",
                                summary=f"{n} records dropped: audit writes fell behind",
                                allowed=False,
                                outcome="dropped",
                                count=n,
                                last_ts=now,
                            )
                        )
                    await anyio.to_thread.run_sync(self._write, batch)

    def _write(self, batch: list[AuditEntry]) -> None:
        with self._db_lock:
            conn = self._conn
            if conn is None:
                return
            conn.execute("BEGIN")
            try:
                last_row = dict(self._last_row)
                for e in batch:
                    prev = last_row.get(e.plugin)
                    if prev is not None and prev[0] == e.key():
                        conn.execute(
                            "UPDATE audit SET count=count+?, last_ts=? WHERE id=?",
                            (e.count, e.last_ts, prev[1]),
                        )
                        continue
                    cur = conn.execute(
                        "INSERT INTO audit(ts, last_ts, plugin, method, summary, allowed, "
                        "outcome, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.ts,
                            e.last_ts,
                            e.plugin,
                            e.method,
                            e.summary,
                            int(e.allowed),
                            e.outcome,
                            e.count,
                        ),
                    )
                    assert cur.lastrowid is not None
                    last_row[e.plugin] = (e.key(), cur.lastrowid)
                for e in batch:
                    self._inserted_since_prune[e.plugin] = (
                        self._inserted_since_prune.get(e.plugin, 0) + 1
                    )
                for plugin, n in list(self._inserted_since_prune.items()):
                    # Pruning costs an index walk; do it once per ~1% of the cap.
                    if n >= max(1, self._max_rows // 100):
                        conn.execute(
                            "DELETE FROM audit WHERE plugin=? AND id <= (SELECT id FROM audit "
                            "WHERE plugin=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                            (plugin, plugin, self._max_rows),
                        )
                        del self._inserted_since_prune[plugin]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # Only after the commit: a rolled-back row must not be "extended" later.
            self._last_row = last_row

    # -- reading --------------------------------------------------------------------------

    async def read(self, plugin_id: str, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` records for ``plugin_id``, newest first."""
        await self.flush()

        def op() -> list[AuditEntry]:
            with self._db_lock:
                if self._conn is None:
                    raise RuntimeError("audit trail is closed")
                rows = self._conn.execute(
                    "SELECT ts, plugin, method, summary, allowed, outcome, count, last_ts "
                    "FROM audit WHERE plugin=? ORDER BY id DESC LIMIT ?",
                    (plugin_id, max(0, limit)),
                ).fetchall()
            return [
                AuditEntry(
                    ts=r[0],
                    plugin=r[1],
                    method=r[2],
                    summary=r[3],
                    allowed=bool(r[4]),
                    outcome=r[5],
                    count=r[6],
                    last_ts=r[7],
                )
                for r in rows
            ]

        return await anyio.to_thread.run_sync(op)
