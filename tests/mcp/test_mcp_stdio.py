"""``cordon mcp serve`` over stdio, as an MCP client launches it: the official client
(both protocol eras) lists, calls, gets progress, cancels; a plugin's failures are tool
results and the bridge keeps serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from .conftest import CANCEL_DEADLINE, DEADLINE, stdio_bridge, text_of

pytestmark = pytest.mark.anyio

ALL_TOOLS = [
    "mcpdemo.count",
    "mcpdemo.crash",
    "mcpdemo.fail",
    "mcpdemo.greet",
    "mcpdemo.hold",
    "mcpdemo.noisy",
    "mcpdemo.pid",
    "mcpdemo.squares",
    "mcpdemo.stats",
    "mcpdemo.was_cancelled",
    "mcpother.greet",
    "mcpother.hoard",
    "mcpother.shady",
    "mcpother.slow",
]


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_every_plugin_tool_is_listed_with_its_schema_description_and_hints(
    bridge_config: Path, mode: str, version: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, mode=mode) as client:
            # auto probes server/discover (2026-07-28, no handshake); legacy sends initialize.
            assert client.protocol_version == version
            tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == ALL_TOOLS
    greet = tools["mcpdemo.greet"]
    # From the signature (the worker's), not the manifest (which declares no params).
    assert greet.input_schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "excited": {"type": "boolean", "default": False},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert greet.description == "Greet someone by name."
    assert greet.annotations is not None
    assert (
        greet.annotations.read_only_hint,
        greet.annotations.idempotent_hint,
        greet.annotations.open_world_hint,
        greet.annotations.destructive_hint,
    ) == (True, True, False, None)
    crash = tools["mcpdemo.crash"].annotations
    assert crash is not None and crash.destructive_hint is True
    assert tools["mcpdemo.pid"].annotations is None  # the manifest says nothing about it
    assert tools["mcpdemo.stats"].output_schema == {"type": "object"}
    # A list result may be structured only on 2026-07-28 (before, structuredContent and
    # outputSchema are objects).
    squares = tools["mcpdemo.squares"].output_schema
    if version == "2026-07-28":
        assert squares == {"type": "array", "items": {"type": "integer"}}
    else:
        assert squares is None


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_results_come_back_as_text_and_structured_content(
    bridge_config: Path, mode: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, mode=mode) as client:
            greet = await client.call_tool("mcpdemo.greet", {"name": "Ada", "excited": True})
            stats = await client.call_tool("mcpdemo.stats", {"values": [1, 2, 3]})
            squares = await client.call_tool("mcpdemo.squares", {"n": 4})
            other = await client.call_tool("mcpother.greet", {"name": "Ada"})
    assert (greet.is_error, text_of(greet), greet.structured_content) == (False, "Hello Ada!", None)
    assert json.loads(text_of(stats)) == {"sum": 6, "count": 3}
    assert stats.structured_content == {"sum": 6, "count": 3}
    assert json.loads(text_of(squares)) == [0, 1, 4, 9]
    assert squares.structured_content == ([0, 1, 4, 9] if mode == "auto" else None)
    assert text_of(other) == "Hi Ada, from the other plugin"


async def test_a_plugin_error_is_a_tool_result_with_is_error(bridge_config: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            result = await client.call_tool(
                "mcpdemo.fail", {"message": "no luck, password=hunter2"}
            )
            after = await client.call_tool("mcpdemo.greet", {"name": "Ada"})
    assert result.is_error
    text = text_of(result)
    assert text.startswith("PluginError: ValueError: no luck")
    # Redacted where the worker's answer entered the host, before the client sees it.
    assert "hunter2" not in text
    assert text_of(after) == "Hello Ada"


async def test_arguments_failing_the_signature_are_a_tool_error_naming_the_field(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            wrong_type = await client.call_tool("mcpdemo.greet", {"name": 7})
            missing = await client.call_tool("mcpdemo.greet", {})
            unknown = await client.call_tool("mcpdemo.greet", {"name": "a", "colour": "red"})
    for result, word in ((wrong_type, "name"), (missing, "name"), (unknown, "colour")):
        # Tool execution errors (SEP-1303), so the model can read them and correct itself.
        assert result.is_error
        assert text_of(result).startswith("InvalidParams: ")
        assert word in text_of(result)


async def test_an_unknown_tool_is_an_mcp_error_naming_it(bridge_config: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            for name in ("mcpdemo.nope", "greet", "mcpdemo"):
                with pytest.raises(MCPError) as info:
                    await client.call_tool(name, {})
                assert info.value.code == types.INVALID_PARAMS
                assert repr(name) in str(info.value)
            # Still serving.
            assert text_of(await client.call_tool("mcpdemo.greet", {"name": "Ada"})) == "Hello Ada"


async def test_a_crash_is_a_tool_error_and_the_next_call_gets_a_new_worker(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            before = text_of(await client.call_tool("mcpdemo.pid", {}))
            crashed = await client.call_tool("mcpdemo.crash", {})
            after = text_of(await client.call_tool("mcpdemo.pid", {}))
    assert crashed.is_error
    assert text_of(crashed).startswith("WorkerCrashed: ")
    assert "exit code 3" in text_of(crashed)
    assert before != after  # restarted by the supervisor, as for any caller


async def test_a_call_past_the_operators_timeout_is_a_tool_error_and_serving_goes_on(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            began = anyio.current_time()
            slow = await client.call_tool("mcpother.slow", {})
            took = anyio.current_time() - began
            after = await client.call_tool("mcpother.greet", {"name": "Ada"})
    assert slow.is_error
    assert text_of(slow).startswith("CallTimeout: ")
    assert "1.0 s" in text_of(slow)
    # mcpother's call-timeout (1 s) held: not the client's, nor the default 30 s.
    assert took < 20
    assert text_of(after) == "Hi Ada, from the other plugin"


async def test_a_quota_hit_is_a_tool_error_and_the_worker_is_recycled(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            hoard = await client.call_tool("mcpother.hoard", {})
            after = await client.call_tool("mcpother.greet", {"name": "Ada"})
    assert hoard.is_error
    assert text_of(hoard).startswith("QuotaExceeded: ")
    assert "memory" in text_of(hoard)
    assert text_of(after) == "Hi Ada, from the other plugin"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_progress_reaches_the_client_increasing_redacted_and_before_the_result(
    bridge_config: Path, mode: str
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, mode=mode) as client:
            result = await client.call_tool(
                "mcpdemo.count", {"n": 5}, progress_callback=on_progress
            )
            # The client runs progress callbacks in tasks of their own: one more round trip
            # lets those already received finish.
            await client.list_tools()
    assert text_of(result) == "5"
    # Reports are coalesced (a plugin reporting faster than the client reads costs one
    # pending value), so which intermediate ones arrive depends on timing; the last does.
    assert seen, "no progress notification arrived"
    values = [p for p, _, _ in seen]
    assert values == sorted(set(values)), f"not strictly increasing: {values}"
    assert seen[-1][:2] == (6.0, 6.0)
    assert "ghp_" not in (seen[-1][2] or "")
    assert all(m != "backwards" for _, _, m in seen)


async def test_progress_is_sent_only_to_a_call_that_asked_for_it(bridge_config: Path) -> None:
    notes: list[Any] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ProgressNotification):
            notes.append(message.params)

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, message_handler=on_message) as client:
            assert text_of(await client.call_tool("mcpdemo.count", {"n": 3})) == "3"
            await client.list_tools()
            unasked = list(notes)
            await client.call_tool("mcpdemo.count", {"n": 3}, progress_callback=on_progress)
            await client.list_tools()
    assert unasked == []
    assert notes, "the call with a progress token got no progress either"


async def test_an_mcp_cancellation_cancels_the_plugins_task(bridge_config: Path) -> None:
    in_flight = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        in_flight.set()  # the plugin reports once it is waiting: "I am in flight"

    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config) as client:
            async with anyio.create_task_group() as tg:

                async def hold() -> None:
                    await client.call_tool(
                        "mcpdemo.hold", {"gate": "g1"}, progress_callback=on_progress
                    )

                tg.start_soon(hold)
                await in_flight.wait()
                # Abandoning the request makes the client send notifications/cancelled.
                tg.cancel_scope.cancel()
            # Returns once the plugin's own task saw CancelledError; mcpdemo's call timeout
            # (50 s) is past CANCEL_DEADLINE, so only the cancellation can get it there.
            with anyio.fail_after(CANCEL_DEADLINE):
                seen = await client.call_tool("mcpdemo.was_cancelled", {"gate": "g1"})
            assert (seen.is_error, text_of(seen)) == (False, "true")
            assert text_of(await client.call_tool("mcpdemo.greet", {"name": "Ada"})) == "Hello Ada"


async def test_the_plugin_filter_exposes_only_the_named_plugins(bridge_config: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, "--plugins", "mcpother") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            with pytest.raises(MCPError):
                await client.call_tool("mcpdemo.greet", {"name": "Ada"})
    assert names == ["mcpother.greet", "mcpother.hoard", "mcpother.shady", "mcpother.slow"]


async def test_the_separator_option_names_tools_for_clients_without_dots(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, "--plugins", "mcpother", "--separator", "__") as c:
            names = [t.name for t in (await c.list_tools()).tools]
            greet = await c.call_tool("mcpother__greet", {"name": "Ada"})
    assert names == ["mcpother__greet", "mcpother__hoard", "mcpother__shady", "mcpother__slow"]
    assert text_of(greet) == "Hi Ada, from the other plugin"


async def test_a_tool_description_carries_no_control_characters_and_is_capped(
    bridge_config: Path,
) -> None:
    from cordon.runtime._mcp._tools import MAX_DESCRIPTION

    with anyio.fail_after(DEADLINE):
        async with stdio_bridge(bridge_config, "--plugins", "mcpother") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
    text = tools["mcpother.shady"].description or ""
    assert text.startswith("Looks ")
    assert "hidden" in text and "esrever" in text  # shown, not interpreted
    assert all(c.isprintable() for c in text), repr(text[:80])
    assert len(text) <= 4 * MAX_DESCRIPTION  # cut before escaping (an escape is <= 4x)
    assert len(text) < len("long ") * 2000
