"""An operator's view of plugin logs, through real processes: ``--log-level``/``--log-format``/
``CORDON_LOG_LEVEL`` on ``cordon call``, ``cordon run --log-file`` rotation, and ``cordon logs
ID [--follow]`` against a running ``cordon run``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from cordon.runtime._hostapi._logring import LogRing
from tests.test_control import (
    CLI_TIMEOUT,
    CORDON,
    MAX_LINE,
    REQUEST_TIMEOUT,
    Setup,
    rpc,
    running_host,
)

pytestmark = pytest.mark.anyio

#: A plugin whose one tool logs what it is told, at the level it is told.
CHATTY_MODULE = """
import inspect

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def say(ctx: Context, text: str, level: str = "info") -> str:
    written = getattr(ctx.log, level)(text, said=text)
    if inspect.isawaitable(written):  # ctx.log calls may be plain calls or coroutines
        await written
    return text
"""


@pytest.fixture
def chatty(tmp_path: Path) -> Setup:
    plugin = tmp_path / "plugins" / "chatty"
    plugin.mkdir(parents=True)
    (plugin / "plugin.toml").write_text(
        textwrap.dedent(
            """\
            [plugin]
            id = "chatty"
            name = "Chatty"
            version = "1.0.0"
            entry = "chatty_plugin:plugin"
            permissions = ["log"]

            [contributes]
            tools = [{ name = "say", description = "Log a line." }]
            """
        )
    )
    (plugin / "chatty_plugin.py").write_text(CHATTY_MODULE)
    config = tmp_path / "cordon.toml"
    config.write_text(
        '[runtime]\nplugin-dirs = ["plugins"]\nstate-dir = "state"\n'
        '[plugins.chatty]\ngrant = ["log"]\n'
    )
    return Setup(tmp_path, config, tmp_path / "state", plugin)


def call_say(s: Setup, text: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [
            CORDON,
            "call",
            str(s.plugin),
            "say",
            "--params",
            json.dumps({"text": text}),
            *args,
            "--config",
            str(s.config),
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=s.root,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def say(s: Setup, text: str, level: str = "info") -> None:
    answer = await rpc(
        s.socket,
        "call",
        {"plugin": "chatty", "name": "say", "arguments": {"text": text, "level": level}},
    )
    assert answer.get("result") == text, answer


async def cordon(s: Setup, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(CLI_TIMEOUT):
        return await anyio.run_process(
            [CORDON, *args, "--config", str(s.config)], cwd=s.root, check=False
        )


def records(stdout: bytes | str) -> list[dict[str, Any]]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- --log-level, --log-format, CORDON_LOG_LEVEL ------------------------------------------------


def test_a_plugins_info_lines_are_hidden_by_default_and_shown_with_log_level_info(
    chatty: Setup,
) -> None:
    quiet = call_say(chatty, "hello-from-the-plugin")
    assert quiet.returncode == 0, quiet.stderr
    assert "hello-from-the-plugin" not in quiet.stderr
    loud = call_say(chatty, "hello-from-the-plugin", "--log-level", "info")
    assert loud.returncode == 0, loud.stderr
    assert json.loads(loud.stdout) == "hello-from-the-plugin"  # stdout stays the result only
    assert "plugin.log" in loud.stderr and "hello-from-the-plugin" in loud.stderr


def test_the_environment_variable_sets_the_level_and_json_lines_parse(chatty: Setup) -> None:
    r = call_say(chatty, "via-env", "--log-format", "json", env={"CORDON_LOG_LEVEL": "INFO"})
    assert r.returncode == 0, r.stderr
    lines = records(r.stderr)
    (said,) = [x for x in lines if x.get("event") == "plugin.log"]
    assert said["plugin"] == "chatty" and said["msg"] == "via-env" and said["level"] == "info"
    assert said["timestamp"].endswith("Z")


def test_the_flag_wins_over_the_environment(chatty: Setup) -> None:
    r = call_say(chatty, "muted", "--log-level", "error", env={"CORDON_LOG_LEVEL": "debug"})
    assert r.returncode == 0, r.stderr
    assert "muted" not in r.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--log-level", "loud"], {}, "--log-level"),
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"CORDON_LOG_LEVEL": "loud"}, "CORDON_LOG_LEVEL"),
    ],
)
def test_a_bad_log_setting_is_a_usage_error_naming_it(
    chatty: Setup, args: list[str], env: dict[str, str], named: str
) -> None:
    r = call_say(chatty, "x", *args, env=env)
    assert r.returncode == 2
    assert named in r.stderr
    assert r.stdout == ""


async def test_run_appends_json_lines_to_a_log_file_rotated_by_size(chatty: Setup) -> None:
    log = chatty.root / "logs" / "host.jsonl"
    extra = ("--log-level", "info", "--log-file", str(log), "--log-file-size", "2 KiB")
    async with running_host(chatty, *extra, "--log-file-backups", "2"):
        for i in range(40):
            await say(chatty, f"line-{i:03}-" + "x" * 100)
    rotated = sorted(p.name for p in log.parent.iterdir())
    # Rotation keeps the live file and at most two old ones, each under the size limit.
    assert rotated == ["host.jsonl", "host.jsonl.1", "host.jsonl.2"]
    said: list[str] = []
    for name in reversed(rotated):
        path = log.parent / name
        assert path.stat().st_size <= 2048
        said += [r["msg"] for r in records(path.read_text()) if r.get("event") == "plugin.log"]
    # The newest records survive, in order; the oldest were rotated away.
    assert said and said[-1].startswith("line-039-")
    assert said == sorted(said)
    assert not said[0].startswith("line-000-")


# -- cordon logs ID [--follow] ------------------------------------------------------------------


async def test_logs_shows_a_plugins_recent_records_from_the_running_host(chatty: Setup) -> None:
    async with running_host(chatty):
        await say(chatty, "first")
        await say(chatty, "second", "debug")  # below the host's level, still in the ring
        r = await cordon(chatty, "logs", "chatty", "--json")
        assert r.returncode == 0, r.stderr.decode()
        got = [(x["level"], x["msg"]) for x in records(r.stdout) if x["event"] == "plugin.log"]
        assert got == [("info", "first"), ("debug", "second")]
        text = await cordon(chatty, "logs", "chatty", "--limit", "1")
        assert text.returncode == 0
        (line,) = text.stdout.decode().splitlines()
        assert "DEBUG" in line and "second" in line and line[:4].isdigit()


async def test_logs_of_an_unknown_plugin_is_plugin_unavailable(chatty: Setup) -> None:
    async with running_host(chatty):
        for follow in ((), ("--follow",)):
            r = await cordon(chatty, "logs", "nope", *follow)
            assert r.returncode == 10, r.stderr.decode()
            assert r.stderr.decode().startswith("cordon: PluginUnavailable: ")


async def test_logs_without_a_running_host_is_host_not_running(chatty: Setup) -> None:
    for follow in ((), ("--follow",)):
        r = await cordon(chatty, "logs", "chatty", *follow)
        assert r.returncode == 15, r.stderr.decode()
        assert "HostNotRunning" in r.stderr.decode()


async def _drain(stream: anyio.abc.ByteReceiveStream) -> bytes:
    data = b""
    with anyio.fail_after(CLI_TIMEOUT), contextlib.suppress(anyio.EndOfStream):
        while True:
            data += await stream.receive()
    return data


async def _next_record(out: BufferedByteReceiveStream) -> dict[str, Any]:
    with anyio.fail_after(REQUEST_TIMEOUT):
        while True:
            record: dict[str, Any] = json.loads(await out.receive_until(b"\n", MAX_LINE))
            if record.get("event") == "plugin.log":
                return record


async def test_follow_streams_new_records_until_interrupted_and_then_exits_zero(
    chatty: Setup,
) -> None:
    async with running_host(chatty):
        await say(chatty, "before")
        proc = await anyio.open_process(
            [CORDON, "logs", "chatty", "--follow", "--json", "--config", str(chatty.config)],
            cwd=chatty.root,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            out = BufferedByteReceiveStream(proc.stdout)
            # The backlog comes first, and is sent only once the follower is subscribed.
            assert (await _next_record(out))["msg"] == "before"
            await say(chatty, "after")
            assert (await _next_record(out))["msg"] == "after"
            await say(chatty, "later", "warning")
            later = await _next_record(out)
            assert (later["msg"], later["level"]) == ("later", "warning")
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(CLI_TIMEOUT):
                assert await proc.wait() == 0
            assert await _drain(proc.stderr) == b""  # no traceback, no error line
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.aclose()


async def test_a_follower_is_told_when_the_host_stops(chatty: Setup) -> None:
    async with running_host(chatty) as host:
        await say(chatty, "before")
        proc = await anyio.open_process(
            [CORDON, "logs", "chatty", "--follow", "--json", "--config", str(chatty.config)],
            cwd=chatty.root,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            out = BufferedByteReceiveStream(proc.stdout)
            assert (await _next_record(out))["msg"] == "before"
            host.terminate()
            with anyio.fail_after(CLI_TIMEOUT):
                assert await proc.wait() == 15
                # Stopped by our signal, cleanly: running_host checks the exit code.
                assert await host.wait() == 0
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.aclose()


async def test_follow_is_refused_on_stdin_so_eof_still_stops_the_host(chatty: Setup) -> None:
    request = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "logs",
        "params": {"plugin": "chatty", "follow": True},
    }
    with anyio.fail_after(CLI_TIMEOUT):
        r = await anyio.run_process(
            [CORDON, "run", "--no-socket", "--config", str(chatty.config)],
            input=json.dumps(request).encode() + b"\n",
            cwd=chatty.root,
            check=False,
        )
    assert r.returncode == 0, r.stderr.decode()
    (answer,) = [x for x in records(r.stdout) if x.get("id") == 7]
    assert answer["error"]["data"]["type"] == "InvalidParams"


# -- the ring itself ----------------------------------------------------------------------------


def test_the_ring_keeps_only_the_newest_records_of_each_plugin() -> None:
    ring = LogRing(size=3)
    for i in range(10):
        ring.add("info", "plugin.log", {"plugin": "a", "msg": str(i)})
    ring.add("info", "plugin.log", {"plugin": "b", "msg": "b0"})
    assert [r["msg"] for r in ring.recent("a")] == ["7", "8", "9"]
    assert [r["msg"] for r in ring.recent("a", 2)] == ["8", "9"]
    assert [r["msg"] for r in ring.recent("b")] == ["b0"]
    assert not ring.knows("c")


def test_a_follower_that_does_not_read_loses_records_instead_of_holding_the_host() -> None:
    from cordon.runtime._hostapi._logring import FOLLOW_BUFFER

    ring = LogRing()
    with ring.follow("a") as follower:
        for i in range(FOLLOW_BUFFER + 5):
            ring.add("info", "plugin.log", {"plugin": "a", "msg": str(i)})  # never blocks
        assert follower.dropped == 5
        assert follower.receive.receive_nowait()["msg"] == "0"
    assert ring.followers() == 0


def test_the_demo_host_takes_the_same_log_level(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    demo = [sys.executable, str(ROOT / "examples" / "demo_host.py")]
    quiet = subprocess.run(
        demo, capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=tmp_path, check=False
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "worker.started" not in quiet.stderr
    loud = subprocess.run(
        [*demo, "--log-level", "info", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    assert loud.returncode == 0, loud.stderr
    started = [r for r in records(loud.stderr) if r.get("event") == "worker.started"]
    assert started and all(r["level"] == "info" for r in started)
    bad = subprocess.run(
        demo,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tmp_path,
        env={**os.environ, "CORDON_LOG_LEVEL": "loud"},
        check=False,
    )
    assert bad.returncode == 2 and "CORDON_LOG_LEVEL" in bad.stderr


def test_the_host_refuses_followers_past_its_cap_with_a_quota_error() -> None:
    from cordon.protocol import QuotaExceeded
    from cordon.runtime._hostapi._logring import MAX_FOLLOWERS

    ring = LogRing()
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_FOLLOWERS):
            stack.enter_context(ring.follow("a"))
        with pytest.raises(QuotaExceeded) as refused, ring.follow("a"):
            pass
        assert refused.value.kind == "log-followers"
    assert ring.followers() == 0
    with ring.follow("a"):  # room again once they left
        assert ring.followers() == 1


def test_plugin_text_cannot_drive_the_operators_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cordon.runtime._cli._clilog import print_record

    hostile = "ok\x1b]0;owned\x07\x1b[2J\x9b31m\nforged line"
    print_record(
        {
            "ts": "t",
            "level": "info",
            "event": "plugin.log",
            "msg": hostile,
            "fields": {"k": hostile},
        },
        as_json=False,
    )
    shown = capsys.readouterr().out
    assert shown.count("\n") == 1 and shown.endswith("\n")  # one line, however many it sent
    assert not any(ch in shown for ch in "\x1b\x07\x9b")
    assert "ok\\x1b]0;owned" in shown


async def test_the_config_names_the_log_file_and_level_relative_to_itself(chatty: Setup) -> None:
    chatty.config.write_text(
        chatty.config.read_text().replace(
            "[runtime]\n", '[runtime]\nlog-file = "logs/host.jsonl"\nlog-level = "info"\n'
        )
    )
    async with running_host(chatty):
        await say(chatty, "to-the-file")
    lines = records((chatty.root / "logs" / "host.jsonl").read_text())
    (said,) = [r for r in lines if r.get("event") == "plugin.log"]
    assert said["msg"] == "to-the-file" and said["plugin"] == "chatty"
    assert (chatty.root / "logs" / "host.jsonl").stat().st_mode & 0o077 == 0
