"""Plugin text through real workers: what a hostile plugin says reaches callers, logs and the
operator's terminal redacted and neutralised on every path, and a plugin flooding the host
with text chosen to be slow to redact does not stall another plugin."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.protocol import PermissionDenied, PluginError, WorkerCrashed
from cordon.runtime import Runtime
from cordon.runtime._hostapi._redact import REDACTED, RULES
from tests.conftest import EXAMPLES, base_config
from tests.redact_worst import worst_attacks

pytestmark = pytest.mark.anyio

HOSTILE = Path(__file__).resolve().parent / "sandbox" / "hostile"
UGLY_DIR = HOSTILE / "redact_ugly"
FLOOD_DIR = HOSTILE / "noisy_flood"
CORDON = str(Path(sys.executable).parent / "cordon")

PASSWORD = "secretpw-0451"
TOKEN = "ghp_" + "A1b2C3d4" * 5
#: Each of these, if it reached a terminal raw, would do something: write the clipboard
#: (OSC 52), clear the screen and recolour (CSI), overwrite the line (CR), the same by C1
#: CSI, reverse the text (bidi override), end a line (LS).
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2028")
UGLY = (
    "\x1b]52;c;ZXZpbA==\x07 \x1b[2J\x1b[31mred\x1b[0m\rcordon: fake line "
    f"postgres://u:{PASSWORD}@h/db token {TOKEN} \x9b1m \u202eevil \u2028 end"
)
SECRETS = (PASSWORD, TOKEN)


def assert_clean(text: str) -> None:
    for ch in RAW_CONTROLS:
        assert ch not in text, f"{ch!r} reached the output raw"
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} reached the output"


def assert_arrived(text: str) -> None:
    """The plugin's text did reach the output - escaped, not lost (else clean proves
    nothing)."""
    assert "\\x1b]52;c;ZXZpbA==\\x07" in text
    assert REDACTED in text


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    config: dict[str, Any] = base_config(tmp_path)
    config["plugins"] = {
        "redact_ugly": {"grant": ["log"]},
        "noisy_flood": {"grant": ["log"]},
        "hello": {"grant": ["log"]},
    }
    async with Runtime(config) as runtime:
        yield runtime


# -- what callers get -------------------------------------------------------------------------


async def test_a_plugins_error_message_and_traceback_reach_the_caller_clean(rt: Runtime) -> None:
    ugly = await rt.load(UGLY_DIR)
    with pytest.raises(PluginError) as info:
        await ugly.call("raise_ugly", {"text": UGLY})
    err = info.value
    for text in (err.message, str(err), err.exc_message or "", err.exc_type or ""):
        assert_clean(text)
    assert_arrived(err.message)
    tb = err.traceback or ""
    assert_clean(tb)
    assert "raise ValueError(text)" in tb
    assert len(tb.splitlines()) > 2, "a traceback keeps its line breaks"


#: An operator's own secret shape, which no built-in rule knows: only the config redacts it.
OPERATOR_SECRET = "ACME-77331-KEY"


@pytest.mark.parametrize("spare", [False, True], ids=["new-worker", "claimed-spare"])
async def test_an_operators_redact_patterns_apply_to_a_plugins_error_reaching_the_caller(
    tmp_path: Path, spare: bool
) -> None:
    config: dict[str, Any] = base_config(tmp_path)
    config["runtime"] = {
        **config["runtime"],
        "redact-patterns": [r"ACME-\d{5}-KEY"],
        "warm-workers": 1 if spare else 0,
    }
    text = f"ticket {OPERATOR_SECRET} refused"
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            ugly = await rt.load(UGLY_DIR)
            if spare:
                # The first start fills the pool; the next start claims the spare, which was
                # spawned before any plugin and must be given the runtime's redactor then.
                with pytest.raises(PluginError):
                    await ugly.call("raise_ugly", {"text": text})
                if not rt._spares:
                    await rt._spare_added.wait()
                waiting = rt._spares[-1]
                await ugly.stop()
            with pytest.raises(PluginError) as info:
                await ugly.call("raise_ugly", {"text": text})
            if spare:
                assert ugly.worker is waiting
    err = info.value
    for field in (err.message, str(err), err.exc_message or "", err.traceback or ""):
        assert OPERATOR_SECRET not in field
    assert f"ticket {REDACTED} refused" in err.message


async def test_a_typed_error_from_a_plugin_has_every_field_cleaned(rt: Runtime) -> None:
    ugly = await rt.load(UGLY_DIR)
    with pytest.raises(PermissionDenied) as info:
        await ugly.call("raise_typed", {"text": UGLY})
    assert_clean(info.value.message)
    assert_clean(info.value.permission or "")
    assert_arrived(info.value.permission or "")
    assert info.value.plugin == "redact_ugly"


async def test_a_dying_workers_last_words_reach_the_caller_clean(rt: Runtime) -> None:
    ugly = await rt.load(UGLY_DIR)
    with pytest.raises(WorkerCrashed) as info:
        await ugly.call("die_ugly", {"text": UGLY})
    tail = "\n".join(info.value.stderr_tail or [])
    assert_clean(tail)
    assert_arrived(tail)


async def test_log_events_field_names_values_and_stderr_reach_the_log_clean(rt: Runtime) -> None:
    assert rt.log_sink is not None
    records: list[dict[str, Any]] = []
    stderr_seen = anyio.Event()

    def keep(level: str, event: str, fields: dict[str, Any]) -> None:
        records.append(fields)
        if event == "plugin.output" and "52" in fields.get("line", ""):
            stderr_seen.set()

    rt.log_sink.subscribe(keep)
    ugly = await rt.load(UGLY_DIR)
    assert await ugly.call("log_ugly", {"text": UGLY, "token": TOKEN}) == "logged"
    with anyio.fail_after(10):
        await stderr_seen.wait()  # stderr arrives on its own pipe, maybe after the answer
    rendered = json.dumps(records, ensure_ascii=False)
    assert_clean(rendered)
    logged = next(r for r in records if "msg" in r)
    assert_arrived(logged["msg"])
    names = list(logged["fields"])
    assert "[redacted-key-1]" in names, names
    assert all(len(name) <= 256 for name in names)


# -- what the operator's terminal gets --------------------------------------------------------


def cordon_call(
    tmp_path: Path, tool: str, params: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "cordon.toml"
    config.write_text('[runtime]\nstate-dir = "state"\n[plugins.redact_ugly]\ngrant = ["log"]\n')
    return subprocess.run(
        [
            CORDON,
            "call",
            str(UGLY_DIR),
            tool,
            "--params",
            json.dumps(params),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.parametrize(
    ("tool", "code", "error"),
    [("raise_ugly", 4, "PluginError"), ("raise_typed", 9, "PermissionDenied")],
)
def test_cordon_call_prints_a_plugins_error_without_escapes_or_secrets(
    tmp_path: Path, tool: str, code: int, error: str
) -> None:
    r = cordon_call(tmp_path, tool, {"text": UGLY})
    assert r.returncode == code, r.stderr
    out = r.stdout + r.stderr
    assert_clean(out)
    assert_arrived(r.stderr)
    assert r.stderr.startswith(f"cordon: {error}: ")
    assert len(r.stderr.strip().splitlines()) == 1, "the plugin cannot add lines of its own"


def test_cordon_call_shows_a_plugins_log_and_stderr_without_escapes_or_secrets(
    tmp_path: Path,
) -> None:
    r = cordon_call(tmp_path, "log_ugly", {"text": UGLY, "token": TOKEN})
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout + r.stderr)


def test_cordon_call_reports_a_crash_without_the_plugins_escapes_or_secrets(
    tmp_path: Path,
) -> None:
    r = cordon_call(tmp_path, "die_ugly", {"text": UGLY})
    assert r.returncode == 7, r.stderr
    assert_clean(r.stdout + r.stderr)


# -- host records that quote a plugin's text ------------------------------------------------

#: A topic a plugin subscribes to, which the host refuses and logs as it was sent. Free of
#: spaces, quotes and ``=`` so the console renderer would not repr it of its own accord.
HOSTILE_TOPIC = "\x1b]52;c;ZXZpbA\x07\x9b2J\u202eevil\u2028"


def hostile_subscriber(tmp_path: Path) -> Path:
    """A plugin dir whose event handler subscribes to :data:`HOSTILE_TOPIC`, and a config
    (returned) that loads it from there."""
    plugin = tmp_path / "plugins" / "hostile_topic"
    plugin.mkdir(parents=True)
    (plugin / "plugin.toml").write_text(
        '[plugin]\nid = "hostile_topic"\nname = "Hostile topic"\nversion = "1.0.0"\n'
        'description = "subscribes with a terminal escape"\n'
        'entry = "hostile_topic_plugin:plugin"\nrequires-cordon = ">=0.1"\n'
        '[contributes]\ntools = [{ name = "ping", description = "pong" }]\n'
    )
    (plugin / "hostile_topic_plugin.py").write_text(
        "from typing import Any\n\n"
        "from cordon.worker import Context, Plugin\n\n"
        "plugin = Plugin()\n\n\n"
        f"@plugin.on_event({HOSTILE_TOPIC!r})\n"
        "async def on_it(ctx: Context, topic: str, payload: Any = None, source: str = '')"
        " -> None:\n"
        "    pass\n\n\n"
        "@plugin.tool\n"
        "async def ping(ctx: Context) -> str:\n"
        "    return 'pong'\n"
    )
    config = tmp_path / "cordon.toml"
    config.write_text(f'[runtime]\nplugin-dirs = ["{plugin.parent}"]\nstate-dir = "state"\n')
    return config


def assert_refusal_shown_escaped(text: str) -> None:
    assert "events.subscribe_refused" in text
    assert "x1b]52;c;ZXZpbA" in text, "the topic is shown escaped, not dropped"
    for ch in RAW_CONTROLS:
        assert ch not in text, f"{ch!r} reached the output raw"


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_cordon_call_logs_a_host_record_quoting_a_plugins_topic_without_escapes(
    tmp_path: Path, fmt: str
) -> None:
    config = hostile_subscriber(tmp_path)
    r = subprocess.run(
        [
            CORDON,
            "call",
            str(tmp_path / "plugins" / "hostile_topic"),
            "ping",
            "--config",
            str(config),
            "--log-format",
            fmt,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == "pong"
    assert_refusal_shown_escaped(r.stderr)


def test_cordon_run_writes_a_host_record_quoting_a_plugins_topic_to_its_log_file_escaped(
    tmp_path: Path,
) -> None:
    config = hostile_subscriber(tmp_path)
    log_file = tmp_path / "host.log"
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "call",
        "params": {"plugin": "hostile_topic", "name": "ping", "arguments": {}},
    }
    r = subprocess.run(
        [CORDON, "run", "--no-socket", "--config", str(config), "--log-file", str(log_file)],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert any(json.loads(line).get("result") == "pong" for line in r.stdout.splitlines())
    assert_refusal_shown_escaped(r.stderr)
    written = log_file.read_text(encoding="utf-8")
    assert_refusal_shown_escaped(written)
    refused = [json.loads(line) for line in written.splitlines() if "subscribe_refused" in line]
    assert refused[0]["topic"] == HOSTILE_TOPIC.encode("unicode_escape").decode()


# -- a flood of worst-case text ---------------------------------------------------------------

#: Generous: the bystander answers in ~1 ms; before redaction was linear, one worst-case
#: stderr line held the host's loop for over a second.
BYSTANDER_P99_MAX = 1.0
FLOOD_SECONDS = 4.0


def worst_units() -> list[str]:
    """The two worst near-miss inputs the generator finds for each built-in rule."""
    units: list[str] = []
    for rule in RULES:
        units += [a.unit for a in worst_attacks(rule.apply, rule.pattern, keep=2, size=2048)]
    return units


async def test_a_plugin_flooding_worst_case_text_does_not_stall_a_bystander(rt: Runtime) -> None:
    units = worst_units()
    flood = await rt.load(FLOOD_DIR)
    hello = await rt.load(EXAMPLES / "hello")
    await hello.call("greet", {"name": "warm"})
    latencies: list[float] = []
    stalls: list[float] = []
    done = anyio.Event()

    async def run_flood() -> None:
        try:
            await flood.call("flood", {"units": units, "seconds": FLOOD_SECONDS}, timeout=60)
        finally:
            done.set()

    async def watch_loop() -> None:
        # How late a 5 ms sleep wakes: the longest the host's loop was held by anything.
        while not done.is_set():
            t0 = time.perf_counter()
            await anyio.sleep(0.005)
            stalls.append(time.perf_counter() - t0 - 0.005)

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_flood)
            tg.start_soon(watch_loop)
            while not done.is_set():
                t0 = time.perf_counter()
                await hello.call("echo", {"value": 1})
                latencies.append(time.perf_counter() - t0)
    assert rt.log_sink is not None
    stats = rt.log_sink.stats("noisy_flood")["noisy_flood"]
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    print(
        f"\nbystander: {len(latencies)} calls, median {statistics.median(latencies) * 1e3:.1f} ms,"
        f" p99 {p99 * 1e3:.1f} ms; loop held at most {max(stalls) * 1e3:.1f} ms;"
        f" flood: {stats.accepted} records kept, {stats.dropped} dropped"
        f" ({stats.over_budget} over the cleaning budget)"
    )
    assert stats.accepted > 0 and stats.dropped > 0, "the flood reached the host and was bounded"
    assert p99 < BYSTANDER_P99_MAX
