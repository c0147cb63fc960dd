"""A tool's registration in a real worker: what is left for the first call (the parameters'
struct and decoder) answers exactly as before, and what cordon cannot serve still fails the
plugin's load, naming the tool, never its first call."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cordon.runtime import InvalidParams, PluginError, Runtime

from .conftest import base_config

pytestmark = pytest.mark.anyio

DEADLINE = 30

MANIFEST = """[plugin]
id = "{id}"
name = "Registration"
version = "1.0.0"
entry = "{id}_plugin:plugin"
requires-cordon = ">=0.1"
"""

#: Every tool's first call is the one that makes its struct: each is called once, fresh.
TOOLS = '''from __future__ import annotations

from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def simple(ctx: Context, name: str, count: int = 2, flag: bool = False) -> str:
    """Simple: its struct is made on its first call."""
    return name * count + ("!" if flag else "")


@plugin.tool
def plain(text: str, value: Any = None) -> dict[str, Any]:
    return {{"text": text, "value": value}}


@plugin.tool
async def typed(ctx: Context, items: list[int], label: str | None = None) -> int:
    """Not simple: its struct is made at registration."""
    return sum(items)
{extra}'''

#: A tool cordon cannot serve, after a good one: the load fails, naming it.
UNSERVABLE = """

@plugin.tool
async def hoard(ctx: Context, seen: list[int] = [1, 2]) -> int:
    return len(seen)
"""


def _plugin(root: Path, plugin_id: str, extra: str = "") -> Path:
    where = root / plugin_id
    where.mkdir()
    (where / "plugin.toml").write_text(MANIFEST.format(id=plugin_id))
    (where / f"{plugin_id}_plugin.py").write_text(TOOLS.format(extra=extra))
    return where


async def test_a_tools_first_call_validates_its_arguments_naming_the_field(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            reg = await rt.load(_plugin(tmp_path, "lazyreg"))
            with pytest.raises(InvalidParams) as info:
                await reg.call("simple", {"name": "x", "count": "3"})
            assert info.value.field == "count"
            assert "Expected `int`, got `str`" in (info.value.message or "")
            assert await reg.call("simple", {"name": "ab", "flag": True}) == "abab!"
            assert await reg.call("simple", ["ab", 3]) == "ababab"
            with pytest.raises(InvalidParams) as info:
                await reg.call("plain", {"text": "t", "other": 1})
            assert info.value.field == "other"
            assert await reg.call("plain", ["t"]) == {"text": "t", "value": None}
            with pytest.raises(InvalidParams) as info:
                await reg.call("typed", {"items": [1, "2"]})
            assert info.value.field == "items[1]"
            assert await reg.call("typed", {"items": [1, 2]}) == 3
            tools = {c.name: c for c in reg.contributions}
    assert tools["simple"].params_schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "default": 2},
            "flag": {"type": "boolean", "default": False},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert tools["simple"].description == "Simple: its struct is made on its first call."
    assert tools["plain"].result_schema == {"type": "object"}
    assert tools["typed"].params_schema["properties"]["items"] == {
        "type": "array",
        "items": {"type": "integer"},
    }


async def test_a_tool_cordon_cannot_serve_fails_the_load_naming_it(tmp_path: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            bad = await rt.load(_plugin(tmp_path, "badreg", UNSERVABLE))
            with pytest.raises(PluginError) as err:
                await bad.call("simple", {"name": "x"})
    assert err.value.fields()["exc_type"] == "PluginDefinitionError"
    assert "tool 'hoard': parameter types cannot be validated" in err.value.message
