"""Publisher keys: Ed25519 (``cryptography``), a private key as a PKCS8 PEM file readable by
its owner only, a public key as the text id ``ed25519:<base64 of the 32 raw bytes>`` that an
operator pastes into ``[runtime] trusted-keys``.

:func:`verify` is a predicate: anything that does not verify (a malformed id, a malformed
signature, a signature by another key) is ``False``, never an exception, so a caller cannot
mistake a parse error for "no signature". :func:`load_public` is the parser: it raises
:class:`SignatureInvalid` naming what is wrong with an id."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._errors import PackageError, SignatureInvalid

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["KEY_PREFIX", "load_public", "new_key", "sign", "verify"]

KEY_PREFIX: Final = "ed25519:"
_RAW_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
#: A PKCS8 Ed25519 PEM is ~120 bytes; a bigger "key" is the wrong file.
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def load_public(text: str) -> str:
    """The canonical id of a public key given as ``ed25519:<base64>`` (surrounding whitespace,
    as in a ``.pub`` file, is ignored). Raises :class:`SignatureInvalid` naming the problem."""
    stripped = text.strip()
    if not stripped.startswith(KEY_PREFIX):
        raise SignatureInvalid(
            key=stripped[:80], reason=f"a public key id starts with {KEY_PREFIX!r}"
        )
    raw = _b64decode(stripped[len(KEY_PREFIX) :])
    if raw is None or len(raw) != _RAW_KEY_BYTES:
        raise SignatureInvalid(
            key=stripped[:80],
            reason=f"not the base64 of a {_RAW_KEY_BYTES}-byte Ed25519 public key",
        )
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def _public_id(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key (losing a publisher key is unrecoverable); O_NOFOLLOW: a
    # planted symlink cannot redirect the private key elsewhere. fchmod because umask applies.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PackageError(f"{path} already exists; cordon never overwrites a key") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def new_key(path: Path) -> str:
    """Write a new Ed25519 private key to ``path`` (PKCS8 PEM, mode 0600) and its public id to
    ``path.with_suffix(".pub")``; return the public id. Refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    pub_path = path.with_suffix(".pub")
    if pub_path == path:
        raise PackageError(f"{path}: the private key cannot be named *.pub")
    for p in (path, pub_path):
        if p.exists() or p.is_symlink():
            raise PackageError(f"{p} already exists; cordon never overwrites a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = _public_id(key)
    _create_exclusive(path, pem, 0o600)
    try:
        _create_exclusive(pub_path, (public + "\n").encode("ascii"), 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return public


def _load_private(key_path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        with open(key_path, "rb") as f:
            pem = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise PackageError(f"cannot read signing key {key_path}: {exc.strerror or exc}") from None
    if len(pem) > _MAX_KEY_FILE_BYTES:
        raise PackageError(f"{key_path} is not a signing key (larger than a PEM key)")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"{key_path} is not an Ed25519 key")
    return key


def sign(data: bytes, key_path: Path) -> tuple[str, str]:
    """``(public id, base64 signature)`` of ``data`` by the private key at ``key_path``."""
    key = _load_private(Path(key_path))
    return _public_id(key), base64.b64encode(key.sign(data)).decode("ascii")


def verify(data: bytes, public: str, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public``'s Ed25519 signature of ``data``. Malformed
    ids and signatures are ``False``, like wrong ones."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        canonical = load_public(public)
    except SignatureInvalid:
        return False
    raw_sig = _b64decode(signature) if isinstance(signature, str) else None
    if raw_sig is None or len(raw_sig) != _SIGNATURE_BYTES:
        return False
    raw_key = base64.b64decode(canonical[len(KEY_PREFIX) :])
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, data)
    except (InvalidSignature, ValueError):
        return False
    return True
