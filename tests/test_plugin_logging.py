"""A plugin's log records, through a real worker: plain ``ctx.log`` calls and the standard
``logging`` module reach the host's log as structured records, redacted, in order with the
call's result, under the ``log`` permission."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cordon.runtime import PluginHandle, Runtime
from tests.conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

AUTHOR = TEST_PLUGINS / "author"
GRANTS = ["log", "storage", "events:subscribe:build.*"]


def author_config(tmp_path: Path, grant: list[str]) -> dict[str, Any]:
    config = base_config(tmp_path)
    config["plugins"] = {"author": {"grant": grant}}
    return config


@pytest.fixture
async def author(tmp_path: Path) -> AsyncIterator[PluginHandle]:
    async with Runtime(author_config(tmp_path, GRANTS)) as rt:
        yield await rt.load(AUTHOR)


def records(
    logs: list[MutableMapping[str, Any]], event: str = "plugin.log"
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event and e.get("plugin") == "author"]


async def test_plain_log_calls_reach_the_host_log_before_the_call_returns(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30), capture_logs() as logs:
        assert await author.call("log_plain", {"n": 5}) == 5
        # Not a moment later: each record was in the host's log before the result arrived.
        plain = [r for r in records(logs) if r["msg"] == "plain"]
    assert [r["fields"] for r in plain] == [{"i": i} for i in range(5)]
    assert all(r["log_level"] == "info" for r in plain)


async def test_awaiting_a_log_call_still_works_and_is_redacted_on_the_host(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30), capture_logs() as logs:
        assert await author.call("log_awaited") is None
    (rec,) = [r for r in records(logs) if r["msg"] == "awaited"]
    assert rec["log_level"] == "warning"
    assert rec["fields"]["password"] == "[REDACTED]"


async def test_a_sync_tool_logs_from_its_thread_in_order_with_its_result(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30), capture_logs() as logs:
        assert await author.call("log_from_thread", {"n": 3}) == 3
        got = [r["msg"] for r in records(logs) if "threaded" in r["msg"]]
    assert got == [m for i in range(3) for m in ("threaded", f"std threaded {i}")]


async def test_stdlib_logging_reaches_the_host_with_level_logger_and_redaction(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30), capture_logs() as logs:
        assert await author.call("std_logging") is True
    recs = records(logs)
    by_msg = {r["msg"]: r for r in recs}
    # Logged by a "library" at import time, before any call was served.
    assert by_msg["library imported"]["fields"]["logger"] == "author.lib"
    http = by_msg["GET /x failed: 503"]
    assert http["log_level"] == "warning"
    assert http["fields"] == {"n": 7, "logger": "author.lib.http"}
    token = next(r for r in recs if r["msg"].startswith("token="))
    assert "ghp_" not in token["msg"] and token["log_level"] == "info"
    assert not any("below the default level" in r["msg"] for r in recs)
    # A record whose formatting logs again arrives once; the nested one is not recursed into.
    assert by_msg["loud"]["log_level"] == "warning"
    assert "logged while formatting" not in by_msg
    caught = by_msg["caught"]
    assert caught["log_level"] == "error"
    assert "ValueError: boom" in caught["fields"]["exc_info"]


async def test_without_the_log_permission_records_are_refused_and_warnings_show_as_output(
    tmp_path: Path,
) -> None:
    async with Runtime(author_config(tmp_path, ["storage"])) as rt:
        author = await rt.load(AUTHOR)
        with anyio.fail_after(30), capture_logs() as logs:
            assert await author.call("log_plain", {"n": 3}) == 3
            assert await author.call("std_logging") is True
            trail = await rt.audit("author", 100)
    assert records(logs) == [], "no structured record without the permission"
    output = [r["line"] for r in records(logs, "plugin.output")]
    assert "WARNING: author.lib.http: GET /x failed: 503" in output
    assert not any("plain" in line for line in output), "info records are dropped"
    assert len(records(logs, "plugin.log_denied")) == 1, "the operator is told once"
    denied = [e for e in trail if e.method == "host/log" and not e.allowed]
    assert denied and all(e.outcome == "PermissionDenied" for e in denied)
    assert sum(e.count for e in denied if e.summary == "info plain") == 3
