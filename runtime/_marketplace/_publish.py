"""The registry's writes: publish (every check before a byte is visible), yank, rate, tokens.

Everything here is synchronous (SQLite, file hashing, ``open_package``) and is run in a worker
thread by the app. A refused request is an :class:`ApiError` with an HTTP status and a stable
``code`` the client turns into a typed error.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Final

from .._packages._archive import PACKAGE_SUFFIX, open_package
from .._packages._errors import PackageError
from .._settings._config_values import check_plugin_id
from ._db import DB_FILE, Database
from ._trust import hash_token, lookalike_of, registry_key, sign_version

__all__ = ["ApiError", "Registry", "check_id", "check_version"]

#: Largest package accepted (the archive itself); ``open_package``'s own limits bound what is
#: inside. Generous for code and data, small enough that a flood of uploads is bounded.
MAX_PACKAGE_BYTES: Final = 32 * 1024 * 1024
#: A readme larger than this is cut: it is shown on a page, not archived.
MAX_README_BYTES: Final = 256 * 1024
_VERSION: Final = re.compile(r"[0-9A-Za-z.+!_-]{1,64}")
_CATEGORY: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_README_NAMES: Final = ("readme.md", "readme.rst", "readme.txt", "readme")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def check_id(plugin_id: str) -> str:
    why = check_plugin_id(plugin_id)
    if why is not None:
        raise ApiError(400, "invalid_id", why)
    return plugin_id


def check_version(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    if not _VERSION.fullmatch(version):
        raise ApiError(400, "invalid_version", f"{version[:80]!r} is not a version")
    try:
        Version(version)
    except InvalidVersion:
        raise ApiError(400, "invalid_version", f"{version!r} is not a version") from None
    return version


def check_category(category: str) -> str:
    if not _CATEGORY.fullmatch(category):
        raise ApiError(
            400, "invalid_category", "a category is a lower-case word (letters, digits, -)"
        )
    return category


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def _readme(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.lower() in _README_NAMES:
                with zf.open(info) as f:
                    return f.read(MAX_README_BYTES).decode("utf-8", "replace")
    return ""


def _author(plugin: dict[str, Any]) -> str:
    authors = plugin.get("authors", [])
    names = [a if isinstance(a, str) else str(a.get("name", "")) for a in authors]
    return ", ".join(n for n in names if n)


def _newest(versions: list[str]) -> str:
    from packaging.version import Version

    return max(versions, key=Version) if versions else ""


class Registry:
    """The registry's data dir: ``registry.sqlite3``, ``packages/<id>/<version>.cordon``,
    ``incoming/`` (uploads being received), and the signing key."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.db = Database(self.data_dir / DB_FILE)
        self.key_path, self.public_key = registry_key(self.data_dir)
        self.incoming = self.data_dir / "incoming"
        self.incoming.mkdir(exist_ok=True)

    def package_path(self, plugin_id: str, version: str) -> Path:
        # Both parts were checked (check_id, check_version) before any path is built.
        return self.data_dir / "packages" / plugin_id / f"{version}{PACKAGE_SUFFIX}"

    # -- tokens -------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> tuple[str, list[str]]:
        """The token's hash and scope; 401 if missing, unknown, expired or revoked (one
        message for all: the answer does not help someone guessing)."""
        if not token:
            raise ApiError(401, "unauthorized", "a publish token is required")
        digest = hash_token(token)
        row = self.db.token(digest)
        if (
            row is None
            or row["revoked"]
            or (row["expires"] is not None and row["expires"] <= time.time())
        ):
            raise ApiError(401, "unauthorized", "the token is unknown, expired or revoked")
        return digest, list(json.loads(row["scope"]))

    def require_scope(self, scope: list[str], plugin_id: str) -> None:
        if plugin_id not in scope:
            raise ApiError(403, "scope", f"this token may not publish or change {plugin_id!r}")

    # -- publish ------------------------------------------------------------------------------

    def publish(
        self,
        upload: Path,
        *,
        token: str | None,
        declared_sha256: str | None,
        category: str,
        repository: str,
    ) -> dict[str, Any]:
        _, scope = self.authenticate(token)
        check_category(category)
        h = hashlib.sha256()
        with open(upload, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sha = h.hexdigest()
        if declared_sha256 is not None and declared_sha256.lower() != sha:
            raise ApiError(
                400, "hash_mismatch", f"the body's sha256 is {sha}, the request declared another"
            )
        try:
            pkg = open_package(upload)
        except PackageError as exc:
            raise ApiError(400, "invalid_package", exc.message) from None
        plugin_id = check_id(pkg.plugin_id)
        version = check_version(pkg.version)
        self.require_scope(scope, plugin_id)
        plugin = tomllib.loads(pkg.manifest_text).get("plugin", {})
        permissions = [str(p) for p in plugin.get("permissions", [])]
        dependencies = [str(d) for d in plugin.get("dependencies", [])]
        readme = _readme(upload)
        signature = sign_version(self.key_path, plugin_id, version, sha)
        now = time.time()
        from packaging.version import Version

        with self.db.write() as db:
            rows = db.execute(
                "SELECT version, yanked FROM versions WHERE plugin_id = ?", (plugin_id,)
            ).fetchall()
            have = [r[0] for r in rows]
            if version in have:
                raise ApiError(
                    409,
                    "version_exists",
                    f"{plugin_id} {version} is already published; versions are immutable, "
                    "publish a new one",
                )
            newest = _newest(have)
            if newest and Version(version) <= Version(newest):
                raise ApiError(
                    409,
                    "version_not_increasing",
                    f"{plugin_id} {version} is not newer than the published {newest}",
                )
            if not have:
                similar = lookalike_of(plugin_id, self.db.similar_ids(db, plugin_id))
                # The owner of the other id may have both (``foo`` and ``foo2``): the token
                # then names both.
                if similar is not None and similar not in scope:
                    raise ApiError(
                        409,
                        "lookalike",
                        f"{plugin_id!r} is too close to the existing plugin {similar!r}; pick "
                        "a distinct id",
                    )
            fields = (
                str(plugin.get("name", plugin_id)),
                str(plugin.get("description", "")),
                _author(plugin),
                category,
                json.dumps([str(k) for k in plugin.get("keywords", [])]),
                str(plugin.get("homepage", "")),
                repository,
                readme,
                version,
                json.dumps(permissions),
            )
            if have:
                db.execute(
                    "UPDATE plugins SET name = ?, description = ?, author = ?, category = ?, "
                    "keywords = ?, homepage = ?, repository = ?, readme = ?, latest = ?, "
                    "permissions = ?, updated = ? WHERE id = ?",
                    (*fields, now, plugin_id),
                )
            else:
                db.execute(
                    "INSERT INTO plugins (name, description, author, category, keywords, "
                    "homepage, repository, readme, latest, permissions, created, updated, id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*fields, now, now, plugin_id),
                )
            # The version row after its plugin row (foreign key).
            db.execute(
                "INSERT INTO versions (plugin_id, version, sha256, size, signature, "
                "publisher_signer, manifest, permissions, dependencies, published) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plugin_id,
                    version,
                    sha,
                    upload.stat().st_size,
                    signature,
                    pkg.signer,
                    pkg.manifest_text,
                    json.dumps(permissions),
                    json.dumps(dependencies),
                    now,
                ),
            )
            self.db.refresh_fts(db, plugin_id)
            if not have:
                self.db.add_id_keys(db, plugin_id)
            # Placed inside the transaction: if the commit then fails, the file is an orphan
            # no row names (and the next publish of that version replaces it).
            final = self.package_path(plugin_id, version)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload, final)
        return {"id": plugin_id, "version": version, "sha256": sha, "signature": signature}

    # -- yank, rate, download -----------------------------------------------------------------

    def yank(self, plugin_id: str, version: str, token: str | None, reason: str) -> None:
        _, scope = self.authenticate(token)
        self.require_scope(scope, plugin_id)
        if not reason.strip():
            raise ApiError(400, "reason_required", "a yank needs a reason users can read")
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE versions SET yanked = 1, yank_reason = ? WHERE plugin_id = ? AND "
                "version = ?",
                (reason[:500], plugin_id, version),
            )
            if cur.rowcount != 1:
                raise ApiError(404, "not_found", f"no version {plugin_id} {version}")
            live = [
                r[0]
                for r in db.execute(
                    "SELECT version FROM versions WHERE plugin_id = ? AND yanked = 0",
                    (plugin_id,),
                )
            ]
            db.execute(
                "UPDATE plugins SET latest = ?, updated = ? WHERE id = ?",
                (_newest(live), time.time(), plugin_id),
            )

    def rate(self, plugin_id: str, token: str | None, stars: object) -> tuple[int, int]:
        digest, _ = self.authenticate(token)
        if not isinstance(stars, int) or isinstance(stars, bool) or not 1 <= stars <= 5:
            raise ApiError(400, "invalid_rating", "stars is a whole number from 1 to 5")
        if self.db.plugin(plugin_id) is None:
            raise ApiError(404, "not_found", f"no plugin {plugin_id}")
        return self.db.rate(plugin_id, digest, stars)

    def count_download(self, plugin_id: str, client_address: str) -> bool:
        client = hashlib.sha256(client_address.encode()).hexdigest()
        return self.db.count_download(plugin_id, client, _today())

    def create_token(self, scope: list[str], expires_in: float | None) -> str:
        from ._trust import new_token

        for plugin_id in scope:
            check_id(plugin_id)
        token = new_token()
        expires = time.time() + expires_in if expires_in is not None else None
        self.db.add_token(hash_token(token), json.dumps(sorted(set(scope))), expires)
        return token
