"""Test plugin: a second ``greet`` (hello has one), a provider, nothing else."""

from __future__ import annotations

from cordon.worker import Plugin

plugin = Plugin()


@plugin.tool
def greet(name: str) -> str:
    """Greet someone, twin style."""
    return f"Howdy {name}"


@plugin.tool
def wave() -> str:
    return "o/"


@plugin.provider
def suggest(prefix: str) -> list[str]:
    return [f"{prefix}-1", f"{prefix}-2"]
