"""Per-plugin key-value storage, kept by the host in one SQLite database.

Layout: one table ``kv(ns, key, value, size)`` keyed by ``(ns, key)``, plus ``usage(ns,
bytes, keys)`` kept in step inside the same transactions. A plugin's own namespace is
``plugin:<id>``; the shared namespace (``storage:shared``) is ``shared``. The namespace is
chosen by the host from the plugin id it was constructed with, never from a key, so a key
such as ``../other/x`` is only a key with dots and slashes in the caller's own namespace.

Durability: WAL with ``synchronous=FULL`` fsyncs the log on every commit, so a write whose
call has returned survives a crash of the host process (or the machine). The quota is
checked inside the write transaction (``BEGIN IMMEDIATE`` takes the write lock first), so
two concurrent writers cannot both squeeze under it and a refused write leaves nothing.

Group commit, fair across plugins: every operation is queued under the plugin that asked
for it, and one *leader* at a time runs queued operations in batches, each batch one
``BEGIN IMMEDIATE`` ... ``COMMIT`` (one fsync) on a worker thread. A batch takes one
operation from each plugin with work in turn (round-robin) up to :data:`BATCH_MAX`, so a
plugin's write storm adds at most one batch to another plugin's wait instead of its whole
queue (one fsync per write made a 30,000-write storm stall everyone else for 13-16 s).
Each operation runs inside its own ``SAVEPOINT``: a refused write (quota, bad value) is
rolled back alone and fails alone. Nothing is acknowledged before its batch's ``COMMIT``
has returned, so "returned = durable" holds as before; if the commit fails, every
operation of the batch fails. The leader is whichever caller found no leader; once its own
operation is done it hands the role to the owner of a queued one, so no caller works off
another plugin's storm for longer than its own batch.

Threading: one connection, used from worker threads one batch at a time (an anyio
``CapacityLimiter(1)``; a ``threading.Lock`` makes the one-at-a-time rule hold for
synchronous callers too).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import msgspec

from cordon.protocol import InvalidParams, QuotaExceeded

__all__ = [
    "BATCH_MAX",
    "DEFAULT_QUOTA",
    "MAX_KEY_BYTES",
    "MAX_LIST",
    "MAX_VALUE_BYTES",
    "SHARED_NAMESPACE",
    "Storage",
    "StorageUsage",
    "check_key",
]

#: Per-plugin bytes of keys plus values, unless :meth:`Storage.set_quota` says otherwise.
DEFAULT_QUOTA: Final = 10 * 1024 * 1024
#: Keys are for naming, not for storing data.
MAX_KEY_BYTES: Final = 512
#: One value; the quota bounds the total.
MAX_VALUE_BYTES: Final = 1024 * 1024
#: Keys returned by one ``list`` call (page with ``after``).
MAX_LIST: Final = 1000
SHARED_NAMESPACE: Final = "shared"
#: Operations per transaction (one fsync). Large enough to amortise the fsync over a storm
#: (each op is a few SQLite statements, ~10-30 us), small enough that a batch stays a few
#: milliseconds: a bystander's operation waits at most about one batch.
BATCH_MAX: Final = 128

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    ns TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    keys INTEGER NOT NULL
) WITHOUT ROWID;
"""


class StorageUsage(msgspec.Struct, frozen=True):
    bytes: int
    keys: int
    quota: int


def check_key(key: object, field: str = "key") -> bytes:
    """The UTF-8 bytes of a valid key, or :class:`InvalidParams` naming ``field``.

    Any unicode is fine except: empty, NUL (C APIs and tools truncate at it), lone surrogates
    (not encodable as UTF-8, so not storable as text), and over :data:`MAX_KEY_BYTES`.
    """
    if not isinstance(key, str):
        raise InvalidParams(f"{field} must be a string", field=field)
    if not key:
        raise InvalidParams(f"{field} must not be empty", field=field)
    if "\x00" in key:
        raise InvalidParams(f"{field} must not contain NUL", field=field)
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParams(f"{field} contains a lone surrogate", field=field) from None
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidParams(
            f"{field} is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}", field=field
        )
    return raw


def _namespace(plugin_id: str, shared: bool) -> str:
    return SHARED_NAMESPACE if shared else f"plugin:{plugin_id}"


def _encode_value(value: Any) -> bytes:
    if isinstance(value, msgspec.Raw):
        # Already-validated JSON straight from the wire: store it as sent.
        return bytes(value)
    try:
        return msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise InvalidParams(f"value is not JSON-encodable: {exc}", field="value") from None


class _Op:
    """One queued operation and, once its batch committed, its outcome."""

    __slots__ = ("done", "error", "fn", "lead", "result", "woken")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        #: Set when this op's owner is to lead (run batches) rather than wait.
        self.lead = False
        #: Set once: the op is done, or its owner was made the leader.
        self.woken = anyio.Event()


class Storage:
    """The host's key-value store. Open with ``await Storage.open(path)``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        default_quota: int,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.default_quota = default_quota
        self.shared_quota = default_quota
        self._quotas: dict[str, int] = {}
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        #: ``1`` is the old behaviour (a transaction and an fsync per operation); the
        #: storage benchmark uses it to compare.
        self.batch_max = batch_max
        # Queued operations per plugin; dict order is the round-robin order (a plugin
        # served goes to the back).
        self._queues: dict[str, deque[_Op]] = {}
        self._leading = False

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        default_quota: int = DEFAULT_QUOTA,
        batch_max: int = BATCH_MAX,
    ) -> Storage:
        """Open (creating if needed) the database at ``path``."""
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        p = Path(path)
        conn = await anyio.to_thread.run_sync(cls._connect, p)
        # Built here, not in the thread: anyio primitives belong to the event loop.
        return cls(conn, p, default_quota, batch_max)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the quota check and the
        # write are one transaction and nothing commits behind our back.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            os.chmod(path, 0o600)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OSError(f"cannot put {path} in WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(close, limiter=self._limiter)

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_quota(self, plugin_id: str | None, limit: int) -> None:
        """Quota in bytes for ``plugin_id``'s namespace (``None``: the shared namespace)."""
        if plugin_id is None:
            self.shared_quota = limit
        else:
            self._quotas[plugin_id] = limit

    def quota(self, plugin_id: str, shared: bool = False) -> int:
        if shared:
            return self.shared_quota
        return self._quotas.get(plugin_id, self.default_quota)

    # -- operations -----------------------------------------------------------------------

    async def _run(self, plugin_id: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Queue ``fn`` under ``plugin_id`` and return its result once its batch committed.

        Not abandoned on cancel once its batch has started: it finishes (commit or
        rollback) and a cancelled caller just does not hear about it. A caller cancelled
        while its op is still queued takes it out of the queue: it never runs.
        """
        op = _Op(fn)
        queue = self._queues.get(plugin_id)
        if queue is None:
            queue = self._queues[plugin_id] = deque()
        queue.append(op)
        if not self._leading:
            self._leading = True
            op.lead = True
        try:
            if not op.lead:
                await op.woken.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if op.lead and not op.done:
                    # Made the leader as it was cancelled: the queue must not stall.
                    await self._lead(op)
                elif not op.done:
                    self._unqueue(plugin_id, op)
            raise
        if op.lead and not op.done:
            with anyio.CancelScope(shield=True):
                await self._lead(op)
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _unqueue(self, plugin_id: str, op: _Op) -> None:
        queue = self._queues.get(plugin_id)
        if queue is not None and op in queue:
            queue.remove(op)
            if not queue:
                del self._queues[plugin_id]

    def _take(self) -> list[_Op]:
        """The next batch: one op per plugin in turn, until :attr:`batch_max` or empty."""
        batch: list[_Op] = []
        queues = self._queues
        while queues and len(batch) < self.batch_max:
            for plugin_id in list(queues):
                queue = queues.pop(plugin_id)
                batch.append(queue.popleft())
                if queue:
                    queues[plugin_id] = queue  # to the back of the round
                if len(batch) >= self.batch_max:
                    break
        return batch

    async def _lead(self, own: _Op) -> None:
        """Run batches until ``own`` is done, then hand the role on (or drop it)."""
        try:
            while not own.done:
                batch = self._take()
                if not batch:  # pragma: no cover - own is queued or done, never neither
                    break
                try:
                    await anyio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
                finally:
                    # Whatever happened, every op of the batch has its outcome: no waiter
                    # is left behind.
                    for op in batch:
                        op.done = True
                        op.woken.set()
        finally:
            nxt = next((q[0] for q in self._queues.values()), None)
            if nxt is None:
                self._leading = False
            else:
                nxt.lead = True
                nxt.woken.set()

    def _run_batch(self, batch: list[_Op]) -> None:
        """One transaction for the whole batch; each op in its own savepoint."""
        with self._lock:
            conn = self._conn
            if conn is None:
                for op in batch:
                    op.error = RuntimeError("storage is closed")
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        op.result = op.fn(conn)
                    except Exception as exc:
                        # This op alone is undone (a quota refusal leaves nothing).
                        conn.execute("ROLLBACK TO op")
                        op.error = exc
                    conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException as exc:
                # Nothing of the batch is durable: nothing of it is acknowledged.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for op in batch:
                    if op.error is None:
                        op.result = None
                        op.error = exc
                if not isinstance(exc, Exception):
                    raise

    async def get(
        self, plugin_id: str, key: str, *, shared: bool = False, raw: bool = False
    ) -> tuple[bool, Any]:
        """``(found, value)``; with ``raw`` the value is the stored JSON as ``msgspec.Raw``."""
        check_key(key)
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._run(plugin_id, op)
        if data is None:
            return False, None
        return True, (msgspec.Raw(data) if raw else msgspec.json.decode(data))

    async def set(self, plugin_id: str, key: str, value: Any, *, shared: bool = False) -> None:
        """Store ``value`` (JSON-encodable, or ``msgspec.Raw``). Durable once this returns.

        Raises :class:`QuotaExceeded` (``kind="storage"``) when keys plus values of the
        namespace would exceed its quota; nothing is written then.
        """
        kbytes = check_key(key)
        data = _encode_value(value)
        if len(data) > MAX_VALUE_BYTES:
            raise InvalidParams(
                f"value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES}", field="value"
            )
        ns = _namespace(plugin_id, shared)
        size = len(kbytes) + len(data)
        limit = self.quota(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> None:
            # Inside the batch's write transaction: the quota check sees every write
            # committed or batched before this one.
            row = conn.execute("SELECT size FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
            old = row[0] if row is not None else 0
            urow = conn.execute("SELECT bytes FROM usage WHERE ns=?", (ns,)).fetchone()
            used = urow[0] if urow is not None else 0
            if used - old + size > limit:
                raise QuotaExceeded(
                    f"storage quota of {limit} bytes exceeded: {used} used, this write "
                    f"needs {size - old} more",
                    kind="storage",
                    limit=limit,
                    plugin=plugin_id,
                )
            conn.execute(
                "INSERT INTO kv(ns, key, value, size) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value, size=excluded.size",
                (ns, key, data, size),
            )
            conn.execute(
                "INSERT INTO usage(ns, bytes, keys) VALUES (?, ?, 1) "
                "ON CONFLICT(ns) DO UPDATE SET bytes=bytes+?, keys=keys+?",
                (ns, size, size - old, 0 if row is not None else 1),
            )

        await self._run(plugin_id, op)

    async def delete(self, plugin_id: str, key: str, *, shared: bool = False) -> bool:
        """Remove ``key``; ``True`` when it existed."""
        check_key(key)
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT size FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))
                conn.execute("UPDATE usage SET bytes=bytes-?, keys=keys-1 WHERE ns=?", (row[0], ns))
            return row is not None

        return await self._run(plugin_id, op)

    async def list(
        self,
        plugin_id: str,
        prefix: str = "",
        limit: int = 100,
        *,
        after: str | None = None,
        shared: bool = False,
    ) -> list[str]:
        """Keys starting with ``prefix``, in UTF-8 byte order, at most ``limit`` of them,
        starting after ``after`` (the last key of the previous page)."""
        if not isinstance(prefix, str) or "\x00" in prefix:
            raise InvalidParams("prefix must be a string without NUL", field="prefix")
        if prefix:
            check_key(prefix, "prefix")
        if after is not None:
            check_key(after, "after")
        if not 1 <= limit <= MAX_LIST:
            raise InvalidParams(f"limit must be 1..{MAX_LIST}", field="limit")
        ns = _namespace(plugin_id, shared)
        start = prefix if after is None or after < prefix else after
        op_ = ">" if after is not None and after >= prefix else ">="

        def op(conn: sqlite3.Connection) -> list[str]:
            # Keys sharing a prefix are contiguous in byte order (SQLite's BINARY collation
            # compares UTF-8 bytes; Python compares code points: same order), so read forward
            # from the prefix and stop at the first key that no longer has it.
            rows = conn.execute(
                f"SELECT key FROM kv WHERE ns=? AND key {op_} ? ORDER BY key LIMIT ?",
                (ns, start, limit),
            ).fetchall()
            out = []
            for (k,) in rows:
                if not k.startswith(prefix):
                    break
                out.append(k)
            return out

        return await self._run(plugin_id, op)

    async def usage(self, plugin_id: str, *, shared: bool = False) -> StorageUsage:
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("SELECT bytes, keys FROM usage WHERE ns=?", (ns,)).fetchone()
            return (row[0], row[1]) if row is not None else (0, 0)

        used, keys = await self._run(plugin_id, op)
        return StorageUsage(bytes=used, keys=keys, quota=self.quota(plugin_id, shared))

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a healthy database."""
        return await self._run("", lambda c: str(c.execute("PRAGMA integrity_check").fetchone()[0]))
