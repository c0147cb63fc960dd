"""Trust between a registry, its publishers and its users.

- **Publish tokens** are random (256 bits), shown once, stored as their SHA-256 only (a leaked
  database gives no usable token), scoped to plugin ids, and can expire and be revoked: the
  npm and Open VSX incidents were long-lived, all-powerful tokens.
- **The registry's key** (Ed25519, made at first start, ``<data>/registry-key.pem``) signs a
  statement over every accepted version: ``(id, version, sha256 of the archive)``. A client
  verifies it against a key it pinned, so a swapped file in the registry's storage, a
  compromised mirror or a man in the middle cannot hand out other bytes.
- **Look-alike ids** (typosquats: ``depusr`` next to ``depuser``, ``dockr`` next to
  ``docker``, ``d0cker``) are refused at publish: ids are normalised (confusable characters
  folded, separators dropped) and compared with every existing id by edit distance.
- **Pinned registry keys** on the client side: ``<state>/registries.json`` records, per URL,
  the key and how it was learned (``pinned`` by the operator, or ``tofu``: trusted on first
  use, and said so).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import msgspec

from .._packages._errors import SignatureInvalid
from .._packages._keys import load_public, new_key, sign, verify

__all__ = [
    "KEY_FILE",
    "STATEMENT_PREFIX",
    "PinnedKey",
    "edit_distance",
    "hash_token",
    "lookalike_of",
    "new_token",
    "normalise_id",
    "pin_key",
    "pinned_key",
    "registry_key",
    "sign_version",
    "statement",
    "verify_version",
]

KEY_FILE: Final = "registry-key.pem"
STATEMENT_PREFIX: Final = "cordon-registry-version-v1"
TOKEN_PREFIX: Final = "cdnr_"
_TOKEN_BYTES: Final = 32
#: Ids whose normalised forms are this many edits apart or fewer are look-alikes. One edit
#: catches the typosquats seen in the wild (a dropped, doubled, swapped or replaced letter);
#: two would refuse honest short ids (``git`` next to ``gitea``... is 2 and fine).
LOOKALIKE_DISTANCE: Final = 1
#: Below this normalised length an edit is a different word (``ls`` vs ``lsd``), not a typo.
LOOKALIKE_MIN_LENGTH: Final = 4
PINS_FILE: Final = "registries.json"

# Characters a reader confuses: folded before comparing (Open VSX's namespace impersonations
# used exactly these).
_CONFUSABLE: Final = str.maketrans({"0": "o", "1": "l", "i": "l", "3": "e", "5": "s", "7": "t"})
_SEPARATORS: Final = str.maketrans("", "", "-_.")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def registry_key(data_dir: Path) -> tuple[Path, str]:
    """The registry's private key path and public id, made on first use (mode 0600)."""
    path = data_dir / KEY_FILE
    if not path.exists():
        try:
            new_key(path)
        except FileExistsError:
            pass  # another process made it first; use theirs
    public = load_public(path.with_suffix(".pub").read_text())
    return path, public


def statement(plugin_id: str, version: str, sha256: str) -> bytes:
    """What the registry signs: one line per field, no ambiguity between fields."""
    return f"{STATEMENT_PREFIX}\n{plugin_id}\n{version}\n{sha256}\n".encode()


def sign_version(key_path: Path, plugin_id: str, version: str, sha256: str) -> str:
    _, signature = sign(statement(plugin_id, version, sha256), key_path)
    return signature


def verify_version(
    public: str, plugin_id: str, version: str, sha256: str, signature: str, *, where: str
) -> None:
    if not verify(statement(plugin_id, version, sha256), public, signature):
        raise SignatureInvalid(
            f"the registry's signature over {plugin_id} {version} (sha256 {sha256[:16]}…) does "
            f"not verify with the pinned key {public}",
            path=where,
            key=public,
            reason="registry signature",
        )


def normalise_id(plugin_id: str) -> str:
    return plugin_id.lower().translate(_CONFUSABLE).translate(_SEPARATORS)


def edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein (adjacent swaps count one), stopping early above ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def lookalike_of(plugin_id: str, existing: Iterable[str]) -> str | None:
    """An existing id ``plugin_id`` could be mistaken for, or ``None``."""
    mine = normalise_id(plugin_id)
    for other in existing:
        if other == plugin_id:
            continue
        theirs = normalise_id(other)
        if mine == theirs:
            return other
        if min(len(mine), len(theirs)) < LOOKALIKE_MIN_LENGTH:
            continue
        if edit_distance(mine, theirs, LOOKALIKE_DISTANCE) <= LOOKALIKE_DISTANCE:
            return other
    return None


# -- the client's pinned keys -----------------------------------------------------------------


class PinnedKey(msgspec.Struct, frozen=True):
    key: str
    how: str  # "pinned" (given by the operator) or "tofu" (trusted on first use)
    at: float


def _pins_path(state_dir: Path) -> Path:
    return state_dir / PINS_FILE


def _read_pins(state_dir: Path) -> dict[str, PinnedKey]:
    path = _pins_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return msgspec.json.decode(data, type=dict[str, PinnedKey])
    except msgspec.DecodeError as exc:
        raise SignatureInvalid(
            f"{path} is malformed ({exc}); fix or remove it and pin the registry again",
            path=str(path),
            reason="pins file",
        ) from None


def canonical_url(url: str) -> str:
    return url.rstrip("/")


def pinned_key(state_dir: Path, url: str) -> PinnedKey | None:
    return _read_pins(state_dir).get(canonical_url(url))


def pin_key(state_dir: Path, url: str, key: str, how: str) -> PinnedKey:
    """Record ``key`` for ``url`` (atomically: a reader sees the old file or the new)."""
    pins = _read_pins(state_dir)
    pin = PinnedKey(key=load_public(key), how=how, at=time.time())
    pins[canonical_url(url)] = pin
    state_dir.mkdir(parents=True, exist_ok=True)
    path = _pins_path(state_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(pins), indent=2) + b"\n")
    os.replace(tmp, path)
    return pin
