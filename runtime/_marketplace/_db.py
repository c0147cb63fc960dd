"""The registry's state: one SQLite file in WAL mode (readers never wait for the one writer),
and an FTS5 index for search.

Search uses the ``trigram`` tokenizer: a query word is split into its trigrams and those are
OR-ed, so ``dokcer`` still shares ``doc``/``cer``... with ``docker`` and bm25 ranks the plugin
with the most (and rarest) shared trigrams first. The query text never reaches FTS5 as syntax:
only letters and digits survive, and each trigram is quoted, so ``"``, ``*``, ``NEAR(``,
``OR`` or a column filter in ``q`` is just text.

Each call opens its own connection (cheap for SQLite, and safe from any worker thread); the
writers take ``BEGIN IMMEDIATE`` so two publishes of one version are serialised and the
primary key lets exactly one in.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from ._trust import edit_distance, normalise_id

__all__ = ["DB_FILE", "SORTS", "Database"]

DB_FILE: Final = "registry.sqlite3"
#: How long a writer waits for another to finish before the request fails (publishes are a
#: few milliseconds of SQL; seconds of waiting means something is stuck).
_BUSY_TIMEOUT_MS: Final = 10_000
SORTS: Final = {
    "downloads": "p.downloads DESC, p.id",
    "rating": "(CASE WHEN p.rating_count = 0 THEN 0.0 ELSE 1.0 * p.rating_sum / p.rating_count "
    "END) DESC, p.rating_count DESC, p.id",
    "updated": "p.updated DESC, p.id",
    "name": "p.name COLLATE NOCASE, p.id",
}
#: Trigrams taken from one query: a long pasted text cannot make a huge FTS query.
_MAX_TRIGRAMS: Final = 64

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS plugins (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    author TEXT NOT NULL,
    category TEXT NOT NULL,
    keywords TEXT NOT NULL,         -- JSON list
    homepage TEXT NOT NULL,
    repository TEXT NOT NULL,
    readme TEXT NOT NULL,
    latest TEXT NOT NULL,           -- newest version not yanked ('' if all are)
    permissions TEXT NOT NULL,      -- JSON list, of the latest version
    created REAL NOT NULL,
    updated REAL NOT NULL,
    downloads INTEGER NOT NULL DEFAULT 0,
    rating_sum INTEGER NOT NULL DEFAULT 0,
    rating_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    plugin_id TEXT NOT NULL REFERENCES plugins(id),
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    signature TEXT NOT NULL,        -- the registry's, over (id, version, sha256)
    publisher_signer TEXT,          -- the package's own signer, when signed
    manifest TEXT NOT NULL,
    permissions TEXT NOT NULL,      -- JSON list
    dependencies TEXT NOT NULL,     -- JSON list
    published REAL NOT NULL,
    yanked INTEGER NOT NULL DEFAULT 0,
    yank_reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (plugin_id, version)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    scope TEXT NOT NULL,            -- JSON list of plugin ids
    created REAL NOT NULL,
    expires REAL,                   -- NULL: never
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ratings (
    plugin_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    stars INTEGER NOT NULL,
    PRIMARY KEY (plugin_id, token_hash)
);
CREATE TABLE IF NOT EXISTS downloads (
    plugin_id TEXT NOT NULL,
    client TEXT NOT NULL,           -- sha256 of the client's address: no address is stored
    day TEXT NOT NULL,
    PRIMARY KEY (plugin_id, client, day)
);
-- Each id's normalised form and its one-deletion variants: two ids one edit apart share a
-- key (symmetric deletion), so the look-alike check is an index lookup, not a scan.
CREATE TABLE IF NOT EXISTS id_keys (
    key TEXT NOT NULL,
    plugin_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS id_keys_key ON id_keys (key);
CREATE VIRTUAL TABLE IF NOT EXISTS plugins_fts USING fts5(
    id, name, description, keywords, tokenize = 'trigram'
);
"""

_WORD: Final = re.compile(r"[^\W_]+", re.UNICODE)
#: A query word this many edits from an id finds it (the id_keys index holds one-deletion
#: variants, so one is what it answers); shorter words are matched as text only.
_TYPO_DISTANCE: Final = 1
_TYPO_MIN_LENGTH: Final = 4
_MAX_NEAR: Final = 20


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_query(q: str) -> str | None:
    """An FTS5 MATCH expression for free text ``q``: quoted trigrams OR-ed (``None``: no
    trigram, the caller falls back to a substring scan)."""
    grams: list[str] = []
    for word in _WORD.findall(q.lower()):
        for i in range(max(0, len(word) - 2)):
            gram = word[i : i + 3]
            if gram not in grams:
                grams.append(gram)
    if not grams:
        return None
    return " OR ".join(f'"{g}"' for g in grams[:_MAX_TRIGRAMS])


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (``BEGIN IMMEDIATE``): writers queue here."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- reads --------------------------------------------------------------------------------

    def plugin(self, plugin_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM plugins WHERE id = ?", (plugin_id,)).fetchone()
            return dict(row) if row is not None else None

    def versions(self, plugin_id: str) -> list[dict[str, Any]]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT * FROM versions WHERE plugin_id = ? ORDER BY published DESC",
                (plugin_id,),
            ).fetchall()
            return [dict(r) for r in rows]

    def version(self, plugin_id: str, version: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute(
                "SELECT * FROM versions WHERE plugin_id = ? AND version = ?",
                (plugin_id, version),
            ).fetchone()
            return dict(row) if row is not None else None

    def all_ids(self) -> list[str]:
        with self.connect() as db:
            return [r[0] for r in db.execute("SELECT id FROM plugins")]

    def listing(
        self,
        *,
        q: str | None = None,
        category: str | None = None,
        sort: str | None = None,
        limit: int,
        offset: int,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of plugins and the total: ranked by bm25 for ``q`` unless ``sort`` says
        otherwise; only plugins with an installable (not yanked) version."""
        where = ["p.latest != ''"]
        args: list[Any] = []
        order_args: list[Any] = []
        join = ""
        order = SORTS.get(sort or "", SORTS["downloads"])
        if q:
            match = fts_query(q)
            near = self._near_ids(q)
            conds: list[str] = []
            if match is not None:
                # bm25 of the trigram hits; rows only found by their id's spelling score 0.
                join = (
                    "LEFT JOIN (SELECT rowid AS hit, bm25(plugins_fts) AS score FROM plugins_fts "
                    "WHERE plugins_fts MATCH ?) h ON h.hit = p.rowid"
                )
                args.append(match)
                conds.append("h.hit IS NOT NULL")
            else:
                like = "%" + _escape_like(q.lower()) + "%"
                conds.append("(lower(p.id) LIKE ? ESCAPE '\\' OR lower(p.name) LIKE ? ESCAPE '\\')")
                args += [like, like]
            if near:
                conds.append(f"p.id IN ({', '.join('?' * len(near))})")
                args += list(near)
            where.append("(" + " OR ".join(conds) + ")")
            if sort is None or sort == "relevance":
                # An id one or two typos from a query word first (closest first), then bm25.
                closeness = "CASE p.id " + " ".join("WHEN ? THEN ?" for _ in near) + " ELSE 99 END"
                order_args = [x for item in near.items() for x in item]
                terms = [closeness] if near else []
                terms += ["h.score"] if match is not None else []
                order = ", ".join([*terms, "p.downloads DESC", "p.id"])
        if category:
            where.append("p.category = ?")
            args.append(category)
        cond = " AND ".join(where)
        if not q or not (sort is None or sort == "relevance"):
            order_args = []
        with self.connect() as db:
            count = f"SELECT count(*) FROM plugins p {join} WHERE {cond}"
            total = db.execute(count, args).fetchone()[0]
            rows = db.execute(
                f"SELECT p.* FROM plugins p {join} WHERE {cond} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, *order_args, limit, offset],
            ).fetchall()
        return [dict(r) for r in rows], int(total)

    def _near_ids(self, q: str) -> dict[str, int]:
        """Ids (normalised) within :data:`_TYPO_DISTANCE` edit of a query word, with their
        distance: a swapped pair of letters shares no trigram with the right spelling
        (``dokcer``), so these are found through ``id_keys`` (an index lookup per word)."""
        words = [w for w in _WORD.findall(q.lower()) if len(w) >= _TYPO_MIN_LENGTH][:8]
        if not words:
            return {}
        found: dict[str, int] = {}
        with self.connect() as db:
            for word in words:
                for plugin_id in self.similar_ids(db, word):
                    d = edit_distance(normalise_id(word), normalise_id(plugin_id), _TYPO_DISTANCE)
                    if d <= _TYPO_DISTANCE and d < found.get(plugin_id, 99):
                        found[plugin_id] = d
        return dict(sorted(found.items(), key=lambda kv: kv[1])[:_MAX_NEAR])

    def categories(self) -> list[tuple[str, int]]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT category, count(*) FROM plugins WHERE latest != '' "
                "GROUP BY category ORDER BY category"
            ).fetchall()
            return [(r[0], int(r[1])) for r in rows]

    def token(self, token_hash: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM tokens WHERE hash = ?", (token_hash,)).fetchone()
            return dict(row) if row is not None else None

    # -- writes -------------------------------------------------------------------------------

    def add_token(self, token_hash: str, scope: str, expires: float | None) -> None:
        with self.write() as db:
            db.execute(
                "INSERT INTO tokens (hash, scope, created, expires) VALUES (?, ?, ?, ?)",
                (token_hash, scope, time.time(), expires),
            )

    def revoke_token(self, token_hash: str) -> bool:
        with self.write() as db:
            cur = db.execute("UPDATE tokens SET revoked = 1 WHERE hash = ?", (token_hash,))
            return cur.rowcount == 1

    def rate(self, plugin_id: str, token_hash: str, stars: int) -> tuple[int, int]:
        with self.write() as db:
            old = db.execute(
                "SELECT stars FROM ratings WHERE plugin_id = ? AND token_hash = ?",
                (plugin_id, token_hash),
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO ratings (plugin_id, token_hash, stars) VALUES (?, ?, ?)",
                (plugin_id, token_hash, stars),
            )
            if old is None:
                db.execute(
                    "UPDATE plugins SET rating_sum = rating_sum + ?, rating_count = "
                    "rating_count + 1 WHERE id = ?",
                    (stars, plugin_id),
                )
            else:
                db.execute(
                    "UPDATE plugins SET rating_sum = rating_sum + ? WHERE id = ?",
                    (stars - int(old[0]), plugin_id),
                )
            row = db.execute(
                "SELECT rating_sum, rating_count FROM plugins WHERE id = ?", (plugin_id,)
            ).fetchone()
            return int(row[0]), int(row[1])

    def count_download(self, plugin_id: str, client: str, day: str) -> bool:
        """Count one download of ``plugin_id`` by ``client`` on ``day``; ``False`` when this
        client was already counted today (a loop cannot inflate the figure)."""
        with self.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO downloads (plugin_id, client, day) VALUES (?, ?, ?)",
                (plugin_id, client, day),
            )
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE plugins SET downloads = downloads + 1 WHERE id = ?", (plugin_id,))
            return True

    @staticmethod
    def id_keys(plugin_id: str) -> set[str]:
        norm = normalise_id(plugin_id)
        return {norm} | {norm[:i] + norm[i + 1 :] for i in range(len(norm))}

    def similar_ids(self, db: sqlite3.Connection, plugin_id: str) -> list[str]:
        """Existing ids that may be one edit from ``plugin_id`` (candidates: the caller
        confirms with the edit distance)."""
        keys = sorted(self.id_keys(plugin_id))
        rows = db.execute(
            f"SELECT DISTINCT plugin_id FROM id_keys WHERE key IN ({', '.join('?' * len(keys))})",
            keys,
        )
        return [r[0] for r in rows]

    def add_id_keys(self, db: sqlite3.Connection, plugin_id: str) -> None:
        db.executemany(
            "INSERT INTO id_keys (key, plugin_id) VALUES (?, ?)",
            [(k, plugin_id) for k in sorted(self.id_keys(plugin_id))],
        )

    def refresh_fts(self, db: sqlite3.Connection, plugin_id: str) -> None:
        # Keyed by the plugins row's rowid: an update touches one FTS row, no scan.
        db.execute(
            "DELETE FROM plugins_fts WHERE rowid = (SELECT rowid FROM plugins WHERE id = ?)",
            (plugin_id,),
        )
        db.execute(
            "INSERT INTO plugins_fts (rowid, id, name, description, keywords) "
            "SELECT rowid, id, name, description, keywords FROM plugins WHERE id = ?",
            (plugin_id,),
        )
