"""Redaction under attack: every rule stays linear on the worst inputs generated from the
rule itself, the host caps a plugin's text before any pattern sees it, a plugin that costs
too much to clean loses lines instead of the host's time, and field names are redacted too.

The growth checks compare the cost *per byte* at 64 KiB with that at 1 KiB (each the best of
several runs), so they hold on a loaded machine: a linear rule keeps the ratio near 1, a
quadratic one multiplies it by ~64.
"""

from __future__ import annotations

import functools
import io
import json
import re
from typing import Any

import pytest
import structlog

from cordon.protocol import PluginError, RemoteError
from cordon.runtime._hostapi._logsink import MAX_NODES, STDERR_PATTERNS, LogSink
from cordon.runtime._hostapi._redact import (
    MAX_KEY,
    MAX_TRACEBACK,
    REDACTED,
    RULES,
    SCAN_MARGIN,
    Redactor,
    Rule,
    neutralise_record,
)
from tests.redact_worst import Attack, attacks, growth, worst_attacks

#: Allowed growth of the cost per byte from 1 KiB to 64 KiB; quadratic would be ~64x.
MAX_GROWTH = 4.0
SIZES = (1024, 8192, 65536)


def ratio(costs: dict[int, float]) -> float:
    return costs[max(costs)] / costs[min(costs)]


@functools.cache
def worst_of(rule: Rule) -> list[Attack]:
    """The three inputs generated from ``rule`` that cost it most per byte at 8 KiB."""
    return worst_attacks(rule.apply, rule.pattern, keep=3, size=8192)


def assert_linear(rule: Rule) -> None:
    for attack in worst_of(rule):
        costs = growth(rule.apply, attack, SIZES)
        if max(costs) < SIZES[-1] or ratio(costs) >= MAX_GROWTH:
            costs = growth(rule.apply, attack, SIZES)  # once more: a busy moment is not growth
        assert max(costs) == SIZES[-1] and ratio(costs) < MAX_GROWTH, (
            f"{rule.name}: cost per KiB grows {ratio(costs):.1f}x from 1 to "
            f"{max(costs) // 1024} KiB on {attack.unit[:40]!r}... ({attack.label})"
        )


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_every_rule_costs_the_same_per_byte_on_its_own_worst_inputs_at_any_size(
    rule: Rule,
) -> None:
    assert_linear(rule)


@pytest.mark.parametrize("pattern", STDERR_PATTERNS, ids=["pem-begin", "pem-end"])
def test_the_sinks_own_stderr_patterns_are_linear_too(pattern: re.Pattern[str]) -> None:
    assert_linear(Rule("sink", pattern, ""))


def test_the_whole_redactor_stays_linear_on_every_rules_worst_inputs_mixed() -> None:
    redactor = Redactor()
    units = [a.unit for r in RULES for a in worst_of(r)]
    # The whole pipeline (embedded JSON, every rule, neutralisation) on a cycle of all of them.
    mixed = Attack("mixed", "".join(u * 4 for u in units))
    costs = growth(redactor.clean_text, mixed, SIZES)
    if max(costs) < SIZES[-1] or ratio(costs) >= MAX_GROWTH:
        costs = growth(redactor.clean_text, mixed, SIZES)  # once more, as assert_linear does
    assert max(costs) == SIZES[-1] and ratio(costs) < MAX_GROWTH, costs


# The generator must find what it is for: these are the table's own patterns before they
# were made linear. If it stopped finding them, the tests above would pass for nothing.
QUADRATIC_BEFORE = [
    pytest.param(
        r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+@", id="url-credentials-unbounded"
    ),
    pytest.param(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_\-]*", id="jwt-b"),
    pytest.param(r"(?i)\b([\w\-]*?(?:password|token|secret))\s*[=:]\s*[^\s]+", id="key-value"),
]


@pytest.mark.parametrize("pattern", QUADRATIC_BEFORE)
def test_the_generator_finds_a_quadratic_pattern_and_stops_early(pattern: str) -> None:
    rule = Rule("old", re.compile(pattern), REDACTED)
    found = []
    for worst in worst_attacks(rule.apply, rule.pattern, keep=3, size=1024):
        costs = growth(rule.apply, worst, (256, 2048, 16384), give_up=MAX_GROWTH)
        found.append((ratio(costs), worst.unit))
    assert max(found)[0] >= MAX_GROWTH, f"{pattern} looked linear: {found}"


def test_the_generator_attacks_from_inside_groups_and_alternatives() -> None:
    units = {a.unit for a in attacks(re.compile(r"(?i)\b([a-z][a-z0-9.]*://)x"))}
    assert any("://" not in u and "." in u for u in units), "a cut inside the group"
    assert any("://" in u for u in units), "the group whole"


# -- caps before any pattern runs -------------------------------------------------------------


class Spy:
    """A pattern that records the length of every text it is run on (as an operator's
    pattern, it runs on everything the redactor is given)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def sub(self, repl: Any, text: str) -> str:
        self.seen.append(len(text))
        return text


def spied_sink(**kw: Any) -> tuple[LogSink, Spy]:
    spy = Spy()
    redactor = Redactor([spy])  # type: ignore[list-item]
    return LogSink(_Discard(), rate=1e6, redactor=redactor, **kw), spy


def json_logger(out: io.StringIO) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(file=out), processors=[structlog.processors.JSONRenderer()]
    )


class _Discard:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def test_a_huge_stderr_line_is_cut_before_any_pattern_sees_it() -> None:
    sink, spy = spied_sink(max_line=4096)
    sink.plugin_output("p", b"a-" * 5_000_000)
    assert max(spy.seen) <= 4096 + SCAN_MARGIN
    assert sink.stats("p")["p"].truncated == 1


def test_a_huge_log_event_and_fields_are_cut_before_any_pattern_sees_them() -> None:
    sink, spy = spied_sink(max_line=16384, max_field=2048)
    big = "a-" * 1_000_000
    fields: dict[str, Any] = {f"k{i}-{big[:5000]}": big for i in range(500)}
    fields["list"] = [big] * 10_000
    fields["deep"] = [[[[[[[[big]]]]]]]]
    sink.log("p", "info", big, fields)
    assert max(spy.seen) <= 2048 + SCAN_MARGIN, "no one string scanned past its cap"
    assert sum(spy.seen) <= 256 + 16384 + 3 * SCAN_MARGIN + MAX_KEY * 2 * 101, "record budget"
    assert sink.stats("p")["p"].truncated == 1


def test_a_record_with_a_great_many_small_values_is_walked_only_up_to_its_budget() -> None:
    sink, spy = spied_sink()
    sink.log("p", "info", "many", {"v": [[str(i)] * 100 for i in range(100)]})
    # One marker per container cut short (at most one per level), then nothing.
    assert len(spy.seen) <= MAX_NODES + 10


def test_json_nested_deeper_than_the_parser_goes_is_redacted_not_an_error() -> None:
    out = io.StringIO()
    sink = LogSink(json_logger(out), rate=1e6)
    line = "[" * 100_000 + ' "password=hunter2-pw" '
    assert sink.plugin_output("p", line.encode())
    assert sink.log("p", "info", line, {"f": line})
    assert "hunter2-pw" not in out.getvalue()


# -- the cleaning-time budget -----------------------------------------------------------------


class SlowTimer:
    """Every cleaning appears to cost ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step  # read before and after each record: one step between
        return self.now


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_plugin_that_costs_too_much_to_clean_loses_lines_not_the_hosts_time() -> None:
    clock = Clock()
    sink = LogSink(_Discard(), rate=1e6, clock=clock, timer=SlowTimer(0.02), redact_share=0.05)
    kept = sum(sink.plugin_output("slow", b"x") for _ in range(100))
    # A 50 ms budget at 20 ms a line: three lines (the third overdraws it), then nothing.
    assert kept == 3
    stats = sink.stats("slow")["slow"]
    assert stats.over_budget == 97 and stats.dropped == 97
    assert sink.plugin_output("other", b"x"), "another plugin has its own budget"
    clock.now += 1.0  # 50 ms refilled: lines flow again
    assert sink.plugin_output("slow", b"x")


def test_lines_dropped_for_the_budget_are_reported_with_the_count() -> None:
    out = io.StringIO()
    clock = Clock()
    sink = LogSink(json_logger(out), rate=1e6, clock=clock, timer=SlowTimer(0.1), redact_share=0.05)
    for _ in range(5):
        sink.log("slow", "info", "x")
    sink.report_dropped()
    report = [json.loads(r) for r in out.getvalue().splitlines()][-1]
    assert report["event"] == "plugin.log_dropped"
    assert report["dropped"] == 4 and report["over_budget_total"] == 4


# -- field names ------------------------------------------------------------------------------

TOKEN = "ghp_" + "A1b2C3d4" * 5


def rendered(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
    )
    LogSink(logger, rate=1e6).log("p", "warning", "s", fields)
    return out.getvalue(), Redactor().value(fields)


@pytest.mark.parametrize(
    "name",
    [
        TOKEN,
        f"user {TOKEN}",
        "postgres://u:secretpw-0451@h/db",
        "Bearer abcdefghijklmnopqrstuvwxyz012345",
        "password=hunter2-pw",
    ],
)
def test_a_field_name_that_carries_a_secret_is_replaced_by_a_placeholder(name: str) -> None:
    text, clean = rendered({name: "x", "ok": 1})
    for secret in (TOKEN, "secretpw-0451", "abcdefghijklmnopqrstuvwxyz012345", "hunter2-pw"):
        assert secret not in text
    assert clean == {"[redacted-key-1]": REDACTED, "ok": 1}


def test_field_names_have_control_characters_escaped_and_their_length_capped() -> None:
    name = "\x1b]52;c;ZXZpbA==\x07\r\u202e" + "k" * 10_000
    text, clean = rendered({name: 1, "n\nx": 2})
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert text.count("\n") == 1, "one rendered line"
    keys = list(clean)
    assert keys[0].startswith("\\x1b]52;c;ZXZpbA==\\x07\\r\\u202e")
    assert len(keys[0]) <= MAX_KEY + 1
    assert keys[1] == "n\\nx"


def test_names_that_differ_only_past_the_cap_both_survive() -> None:
    long = "k" * (2 * MAX_KEY)
    clean = Redactor().value({long + "a": 1, long + "b": 2})
    assert sorted(clean.values()) == [1, 2]


# -- errors -----------------------------------------------------------------------------------


def test_an_error_is_cleaned_field_by_field_and_a_traceback_keeps_its_lines() -> None:
    tb = "Traceback:\n  File x\x1b[2J\nValueError: postgres://u:pw-secret@h/db\r"
    err = PluginError(
        "ValueError: \x1b]52;c;x\x07", exc_type="V\x1b", exc_message="m\r", traceback=tb
    )
    clean = Redactor().clean_error(err)
    assert isinstance(clean, PluginError)
    assert clean.message == "ValueError: \\x1b]52;c;x\\x07" == str(clean)
    assert clean.exc_type == "V\\x1b" and clean.exc_message == "m\\r"
    assert clean.traceback is not None
    assert clean.traceback.splitlines() == [
        "Traceback:",
        "  File x\\x1b[2J",
        f"ValueError: postgres://u:{REDACTED}@h/db\\r",
    ]


def test_an_errors_nested_data_and_huge_traceback_cost_bounded_work() -> None:
    data = {"type": "x", TOKEN: [f"\x1b{i}" * 10_000 for i in range(1000)]}
    clean = Redactor().clean_error(RemoteError("m", remote_code=1, remote_data=data))
    assert TOKEN not in json.dumps(clean.fields())
    assert len(json.dumps(clean.fields())) < 2 * MAX_TRACEBACK
    huge = PluginError("m", traceback="line\n" * 1_000_000 + "ValueError: last")
    tb = Redactor().clean_error(huge).traceback or ""
    assert tb.endswith("ValueError: last") and len(tb) <= MAX_TRACEBACK + 64


# -- the host's own records -------------------------------------------------------------------


@pytest.mark.parametrize(
    "renderer",
    [
        structlog.dev.ConsoleRenderer(colors=False),
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ],
    ids=["console", "json"],
)
def test_host_records_quoting_plugin_text_render_without_escapes(renderer: Any) -> None:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[structlog.processors.format_exc_info, neutralise_record, renderer],
    )
    hostile = "\x1b]52;c;x\x07\x9b2J\u202e\r\n"
    try:
        raise ValueError(f"from {hostile}")
    except ValueError:
        logger.error(
            "events.subscribe_refused", topic=hostile, **{hostile: [hostile]}, exc_info=True
        )
    text = out.getvalue()
    for ch in "\x1b\x07\x9b\u202e\r":
        assert ch not in text
    assert "x1b]52;c;x" in text, "shown escaped (JSON doubles the backslash), not dropped"
    assert "Traceback" in text and "ValueError: from" in text
