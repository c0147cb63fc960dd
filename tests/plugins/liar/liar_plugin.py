"""Errors a hostile plugin can put on the wire: classes named like the host's own, with
fields the host's constructors cannot take, and a deactivate that kills the worker."""

from __future__ import annotations

import os
from typing import ClassVar

from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()
_die_in_deactivate = False


class ConfigError(CordonError):
    """Named and coded (-32010) like the host's ConfigError, whose ``problems`` must be a
    list of mappings."""

    code = -32010
    _fields: ClassVar[tuple[str, ...]] = ("problems",)


class UnknownContribution(CordonError):
    """Named like the host's subclass of MethodNotFound (-32601), a code a worker may send."""

    code = -32601
    _fields: ClassVar[tuple[str, ...]] = ("method", "kind", "name")


@plugin.tool
async def bad_fields(ctx: Context) -> None:
    raise ConfigError("x", problems=5)


@plugin.tool
async def forged_subclass(ctx: Context) -> None:
    raise UnknownContribution("no plugin offers tool 'secret'", kind="tool", name="secret")


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
async def die_in_deactivate(ctx: Context) -> None:
    global _die_in_deactivate
    _die_in_deactivate = True


@plugin.on_deactivate
async def deactivate(ctx: Context) -> None:
    if _die_in_deactivate:
        os._exit(3)
