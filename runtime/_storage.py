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

Threading: one connection, used from worker threads one operation at a time (an anyio
``CapacityLimiter(1)`` queues callers without parking a thread each; a ``threading.Lock``
makes the one-at-a-time rule hold for synchronous callers too).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import msgspec

from cordon.protocol import InvalidParams, QuotaExceeded

__all__ = [
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


class Storage:
    """The host's key-value store. Open with ``await Storage.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, default_quota: int) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.default_quota = default_quota
        self.shared_quota = default_quota
        self._quotas: dict[str, int] = {}
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, default_quota: int = DEFAULT_QUOTA
    ) -> Storage:
        """Open (creating if needed) the database at ``path``."""
        p = Path(path)
        conn = await anyio.to_thread.run_sync(cls._connect, p)
        # Built here, not in the thread: anyio primitives belong to the event loop.
        return cls(conn, p, default_quota)

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

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise RuntimeError("storage is closed")
                return fn(self._conn)

        # Not abandon_on_cancel: once a write has started it finishes (commit or rollback);
        # a cancelled caller just does not hear about it.
        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    async def get(
        self, plugin_id: str, key: str, *, shared: bool = False, raw: bool = False
    ) -> tuple[bool, Any]:
        """``(found, value)``; with ``raw`` the value is the stored JSON as ``msgspec.Raw``."""
        check_key(key)
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._run(op)
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
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(op)

    async def delete(self, plugin_id: str, key: str, *, shared: bool = False) -> bool:
        """Remove ``key``; ``True`` when it existed."""
        check_key(key)
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT size FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))
                    conn.execute(
                        "UPDATE usage SET bytes=bytes-?, keys=keys-1 WHERE ns=?", (row[0], ns)
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return row is not None

        return await self._run(op)

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

        return await self._run(op)

    async def usage(self, plugin_id: str, *, shared: bool = False) -> StorageUsage:
        ns = _namespace(plugin_id, shared)

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("SELECT bytes, keys FROM usage WHERE ns=?", (ns,)).fetchone()
            return (row[0], row[1]) if row is not None else (0, 0)

        used, keys = await self._run(op)
        return StorageUsage(bytes=used, keys=keys, quota=self.quota(plugin_id, shared))

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a healthy database."""
        return await self._run(lambda c: str(c.execute("PRAGMA integrity_check").fetchone()[0]))
