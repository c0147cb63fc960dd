"""``cordon mcp serve --transport http``: streamable HTTP on a loopback port, driven by the
official client (both protocol eras); loopback only unless the operator says otherwise, and
closed to pages in a browser (DNS rebinding)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from .conftest import (
    CANCEL_DEADLINE,
    CORDON,
    DEADLINE,
    INITIALIZE,
    gone,
    http_bridge,
    text_of,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_list_call_and_progress_over_streamable_http(
    bridge_config: Path, mode: str, version: str
) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with anyio.fail_after(DEADLINE):
        async with http_bridge(bridge_config) as url, Client(url, mode=mode) as client:
            assert client.protocol_version == version
            names = [t.name for t in (await client.list_tools()).tools]
            greet = await client.call_tool("mcpdemo.greet", {"name": "Ada"})
            stats = await client.call_tool("mcpdemo.stats", {"values": [2, 3]})
            count = await client.call_tool("mcpdemo.count", {"n": 3}, progress_callback=on_progress)
            await client.list_tools()  # lets progress callbacks already received finish
            pid = int(text_of(await client.call_tool("mcpdemo.pid", {})))
        # SIGTERM stopped the bridge (exit 0, checked by http_bridge) and its workers with it.
        assert await anyio.to_thread.run_sync(gone, pid)
    assert "mcpdemo.greet" in names and "mcpother.slow" in names
    assert text_of(greet) == "Hello Ada"
    assert stats.structured_content == {"sum": 5, "count": 2}
    assert text_of(count) == "3"
    assert seen and seen[-1] == 4.0 and seen == sorted(set(seen))


async def test_failures_over_http_are_tool_errors_and_the_bridge_keeps_serving(
    bridge_config: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with http_bridge(bridge_config) as url, Client(url) as client:
            crashed = await client.call_tool("mcpdemo.crash", {})
            slow = await client.call_tool("mcpother.slow", {})
            failed = await client.call_tool("mcpdemo.fail", {"message": "boom"})
            hoard = await client.call_tool("mcpother.hoard", {})
            with pytest.raises(MCPError):
                await client.call_tool("mcpdemo.missing", {})
            after = await client.call_tool("mcpdemo.greet", {"name": "Ada"})
    assert crashed.is_error and text_of(crashed).startswith("WorkerCrashed: ")
    assert slow.is_error and text_of(slow).startswith("CallTimeout: ")
    assert failed.is_error and text_of(failed) == "PluginError: ValueError: boom"
    assert hoard.is_error and text_of(hoard).startswith("QuotaExceeded: ")
    assert text_of(after) == "Hello Ada"


async def test_an_mcp_cancellation_over_http_cancels_the_plugins_task(
    bridge_config: Path,
) -> None:
    in_flight = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        in_flight.set()

    with anyio.fail_after(DEADLINE):
        async with http_bridge(bridge_config) as url, Client(url) as client:
            async with anyio.create_task_group() as tg:

                async def hold() -> None:
                    await client.call_tool(
                        "mcpdemo.hold", {"gate": "h1"}, progress_callback=on_progress
                    )

                tg.start_soon(hold)
                await in_flight.wait()
                tg.cancel_scope.cancel()
            with anyio.fail_after(CANCEL_DEADLINE):
                seen = await client.call_tool("mcpdemo.was_cancelled", {"gate": "h1"})
    assert (seen.is_error, text_of(seen)) == (False, "true")


async def test_the_plugin_filter_holds_over_http(bridge_config: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            http_bridge(bridge_config, "--plugins", "mcpdemo") as url,
            Client(url, mode="legacy") as client,
        ):
            names = [t.name for t in (await client.list_tools()).tools]
    assert names and all(n.startswith("mcpdemo.") for n in names)


_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def test_a_request_naming_another_host_or_origin_is_refused(bridge_config: Path) -> None:
    """A page on evil.example that resolves its name to 127.0.0.1 (DNS rebinding), or any
    page's script posting to localhost, must not reach the tools."""
    body, headers = INITIALIZE, _HEADERS
    with anyio.fail_after(DEADLINE):
        async with http_bridge(bridge_config) as url, httpx2.AsyncClient() as http:
            port = url.rsplit(":", 1)[1].split("/")[0]
            rebound = await http.post(
                url, content=json.dumps(body), headers={**headers, "host": f"evil.example:{port}"}
            )
            cross = await http.post(
                url, content=json.dumps(body), headers={**headers, "origin": "http://evil.example"}
            )
            own = await http.post(url, content=json.dumps(body), headers=headers)
    assert rebound.status_code == 421
    assert cross.status_code == 403
    assert own.status_code == 200  # the control: the same request from a loopback client


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com"])
def test_a_non_loopback_host_is_refused_without_allow_remote(
    bridge_config: Path, host: str
) -> None:
    command = [CORDON, "mcp", "serve", "--config", str(bridge_config), "--transport", "http"]
    done = subprocess.run(
        [*command, "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "no authentication" in done.stderr and "--allow-remote" in done.stderr
    assert done.stdout == ""  # never said it was serving
    assert not (bridge_config.parent / "state").exists()  # refused before any plugin loaded


async def test_allow_remote_serves_on_every_address_and_leaves_host_checks_to_the_operator(
    bridge_config: Path,
) -> None:
    """``--allow-remote --host 0.0.0.0``: the operator put the bridge on the network on
    purpose (behind their own proxy or firewall), so it listens on every address and no
    longer insists on a loopback Host header."""
    with anyio.fail_after(DEADLINE):
        async with http_bridge(
            bridge_config, "--host", "0.0.0.0", "--allow-remote", shown_host="0.0.0.0"
        ) as url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            local = f"http://127.0.0.1:{port}/mcp"
            async with Client(local, mode="legacy") as client:
                greet = await client.call_tool("mcpdemo.greet", {"name": "Ada"})
            async with httpx2.AsyncClient() as http:
                named = await http.post(
                    local,
                    content=json.dumps(INITIALIZE),
                    headers={**_HEADERS, "host": f"bridge.example:{port}"},
                )
            listening = {
                tuple(c.laddr)
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
    assert text_of(greet) == "Hello Ada"
    assert named.status_code == 200  # a name of the operator's choosing reaches it
    assert ("0.0.0.0", port) in listening  # every address, not loopback alone


def test_stdio_refuses_http_only_options(bridge_config: Path) -> None:
    done = subprocess.run(
        [CORDON, "mcp", "serve", "--config", str(bridge_config), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 2
    assert "--port and --allow-remote are for --transport http" in done.stderr


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_plugin_filter_naming_a_plugin_not_loaded_is_refused(
    bridge_config: Path, transport: str
) -> None:
    command = [CORDON, "mcp", "serve", "--config", str(bridge_config), "--transport", transport]
    extra = ["--port", "0"] if transport == "http" else []
    done = subprocess.run(
        [*command, *extra, "--plugins", "mcpdemo,nope"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 10, done.stderr  # PluginUnavailable
    assert "--plugins names 'nope', which is not loaded (loaded: mcpdemo, mcpother)" in done.stderr
    assert done.stdout == ""
