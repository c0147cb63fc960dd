"""Publisher keys: a new key is private to its owner and never overwrites one, its public id
round-trips, and ``verify`` is a predicate that says no (never raises) to anything that is not
a valid signature by that key."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from cordon.runtime._packages._errors import PackageError, SignatureInvalid
from cordon.runtime._packages._keys import load_public, new_key, sign, verify


def test_a_new_key_is_a_pkcs8_pem_only_its_owner_can_read(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public = new_key(tmp_path / "publisher.pem")
    finally:
        os.umask(old)
    private = tmp_path / "publisher.pem"
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "publisher.pub").read_text() == public + "\n"
    assert public.startswith("ed25519:")
    assert len(base64.b64decode(public.removeprefix("ed25519:"))) == 32


def test_new_key_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    new_key(path)
    before = path.read_bytes(), (tmp_path / "k.pub").read_bytes()
    with pytest.raises(PackageError, match="already exists"):
        new_key(path)
    assert (path.read_bytes(), (tmp_path / "k.pub").read_bytes()) == before


def test_new_key_refuses_when_only_the_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("ed25519:mine\n")
    with pytest.raises(PackageError, match="already exists"):
        new_key(tmp_path / "k.pem")
    assert not (tmp_path / "k.pem").exists()
    assert (tmp_path / "k.pub").read_text() == "ed25519:mine\n"


def test_new_key_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "k.pem").symlink_to(target)
    with pytest.raises(PackageError):
        new_key(tmp_path / "k.pem")
    assert not target.exists()


def test_a_signature_verifies_with_its_key_and_nothing_else(tmp_path: Path) -> None:
    public = new_key(tmp_path / "a.pem")
    other = new_key(tmp_path / "b.pem")
    signer, signature = sign(b"the file list", tmp_path / "a.pem")
    assert signer == public
    assert verify(b"the file list", public, signature)
    assert not verify(b"the file list!", public, signature)
    assert not verify(b"the file list", other, signature)


@pytest.mark.parametrize(
    "public",
    ["", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:" + base64.b64encode(b"x" * 31).decode()],
)
def test_verify_says_no_to_a_malformed_key(tmp_path: Path, public: str) -> None:
    new_key(tmp_path / "a.pem")
    _, signature = sign(b"data", tmp_path / "a.pem")
    assert verify(b"data", public, signature) is False


def test_verify_says_no_to_a_malformed_signature(tmp_path: Path) -> None:
    public = new_key(tmp_path / "a.pem")
    _, signature = sign(b"data", tmp_path / "a.pem")
    raw = base64.b64decode(signature)
    for bad in ("", "not base64!", base64.b64encode(raw[:-1]).decode(), signature + "AA=="):
        assert verify(b"data", public, bad) is False


def test_load_public_normalises_a_pub_file_and_refuses_garbage(tmp_path: Path) -> None:
    public = new_key(tmp_path / "a.pem")
    assert load_public((tmp_path / "a.pub").read_text()) == public
    assert load_public(f"  {public}\n") == public
    for bad in ("ssh-ed25519 AAAA", "ed25519:AAAA", "ed25519:" + "A" * 100):
        with pytest.raises(SignatureInvalid):
            load_public(bad)


def test_sign_refuses_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(PackageError, match="not an Ed25519 key"):
        sign(b"data", tmp_path / "ec.pem")
    with pytest.raises(PackageError, match="not an unencrypted PEM"):
        sign(b"data", tmp_path / "junk.pem")
    with pytest.raises(PackageError, match="cannot read"):
        sign(b"data", tmp_path / "missing.pem")
