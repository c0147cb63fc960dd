"""The worker announces its cordon version from a constant (importing importlib.metadata in
every worker costs cold start); the constant must follow the package version."""

from __future__ import annotations

from importlib.metadata import version

from cordon.worker._launch import CORDON_VERSION


def test_the_announced_version_is_the_installed_one() -> None:
    assert version("cordon") == CORDON_VERSION
