"""What plugins log reaches the host's structlog output redacted, neutralised and bounded.

The assertions are on what structlog actually rendered, not on the redact function alone.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from cordon.runtime._hostapi._logsink import LogSink
from cordon.runtime._hostapi._redact import REDACTED, Redactor, neutralise


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def json_logger(buf: io.StringIO) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(file=buf),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )


def console_logger(buf: io.StringIO) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(file=buf),
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def sink(out: io.StringIO) -> LogSink:
    return LogSink(json_logger(out), rate=1000)


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAsecretkeymaterial0123456789abcdef\n"
    "-----END RSA PRIVATE KEY-----"
)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEiLCJyb2xlIjoiYWRtaW4ifQ.c2lnbmF0dXJlc2VjcmV0"

#: (what the plugin passes as fields, the secret text that must not reach the output)
FIELD_CASES: list[tuple[dict[str, Any], str]] = [
    ({"password": "hunter2-pw"}, "hunter2-pw"),
    ({"PASSWD": "hunter3-pw"}, "hunter3-pw"),
    ({"db_password": "hunter4-pw"}, "hunter4-pw"),
    ({"X-Api-Key": "k-123456"}, "k-123456"),
    ({"apiKey": "k-654321"}, "k-654321"),
    ({"githubToken": "opaque-value-1"}, "opaque-value-1"),
    ({"client_secret": "opaque-value-2"}, "opaque-value-2"),
    ({"Authorization": "opaque-value-3"}, "opaque-value-3"),
    ({"cookie": "sid=opaque-value-4"}, "opaque-value-4"),
    ({"private_key": "opaque-value-5"}, "opaque-value-5"),
    ({"credentials": {"user": "ada", "pw": "opaque-value-6"}}, "opaque-value-6"),
    ({"req": {"headers": [{"x": 1}, {"Authorization": "opaque-value-7"}]}}, "opaque-value-7"),
    ({"deep": [[[{"a": {"b": {"token": "opaque-value-8"}}}]]]}, "opaque-value-8"),
    ({"token": {"nested": ["opaque-value-9"]}}, "opaque-value-9"),
    ({"header": "Bearer abcdef0123456789opaque"}, "abcdef0123456789opaque"),
    ({"k": "key is sk-proj-abcdefghijklmnop0123456789"}, "sk-proj-abcdefghijklmnop0123456789"),
    ({"k": "sk-ant-api03-abcdefghijklmnopqrstu"}, "sk-ant-api03-abcdefghijklmnopqrstu"),
    ({"k": "ghp_" + "A1b2C3d4" * 5}, "ghp_" + "A1b2C3d4" * 5),
    ({"k": "github_pat_11ABCDEFG0123456789_abcdefghij"}, "github_pat_11ABCDEFG0123456789"),
    ({"k": "slack xoxb-1234567890-abcdefghijk"}, "xoxb-1234567890-abcdefghijk"),
    ({"k": "xoxp-1234567890-abcdefghijk"}, "xoxp-1234567890-abcdefghijk"),
    ({"k": "id AKIAIOSFODNN7EXAMPLE here"}, "AKIAIOSFODNN7EXAMPLE"),
    ({"k": f"aws_secret_access_key={AWS_SECRET}"}, AWS_SECRET),
    ({"k": f'{{"AWS_SECRET_ACCESS_KEY": "{AWS_SECRET}"}}'}, AWS_SECRET),
    ({"k": PEM}, "secretkeymaterial"),
    ({"k": f"jwt={JWT} ok"}, JWT.split(".")[1]),
    ({"k": "postgres://ada:s3cr3tpw@db.example/x"}, "s3cr3tpw"),
    ({"k": "login password=hunter5 done"}, "hunter5"),
    ({"k": "token: opaque-value-10"}, "opaque-value-10"),
    ({"list": ["a", "Bearer zzzzzzzzzzzzzzzzzz1"]}, "zzzzzzzzzzzzzzzzzz1"),
]


@pytest.mark.parametrize(("fields", "secret"), FIELD_CASES)
def test_secrets_in_log_fields_never_reach_the_rendered_output(
    sink: LogSink, out: io.StringIO, fields: dict[str, Any], secret: str
) -> None:
    assert sink.log("p1", "info", "event", fields)
    text = out.getvalue()
    assert secret not in text
    assert REDACTED in text


@pytest.mark.parametrize(("fields", "secret"), FIELD_CASES)
def test_secrets_in_the_event_text_never_reach_the_rendered_output(
    sink: LogSink, out: io.StringIO, fields: dict[str, Any], secret: str
) -> None:
    # The same secrets written into the message itself (a careless f-string).
    sink.log("p1", "warning", f"oops {json.dumps(fields)}")
    assert secret not in out.getvalue()


@pytest.mark.parametrize(("fields", "secret"), FIELD_CASES)
def test_secrets_printed_to_stderr_never_reach_the_rendered_output(
    sink: LogSink, out: io.StringIO, fields: dict[str, Any], secret: str
) -> None:
    for line in json.dumps(fields).encode().split(b"\\n"):
        sink.plugin_output("p1", line)
    assert secret not in out.getvalue()


def test_a_private_key_printed_line_by_line_to_stderr_is_redacted_to_its_end(
    sink: LogSink, out: io.StringIO
) -> None:
    for line in ["before", *PEM.splitlines(), "after"]:
        sink.plugin_output("p1", line.encode())
    lines = [r["line"] for r in records(out)]
    assert "secretkeymaterial" not in out.getvalue()
    assert lines[0] == "before"
    assert lines[-1] == "after", "redaction stops at the END line"


def test_ordinary_words_that_contain_secret_names_are_kept(sink: LogSink, out: io.StringIO) -> None:
    sink.log("p1", "info", "author=bob token_count=3", {"author": "bob", "tokens_used": 12})
    (rec,) = records(out)
    assert rec["msg"] == "author=bob token_count=3"
    assert rec["fields"] == {"author": "bob", "tokens_used": 12}


def test_operators_can_add_their_own_secret_patterns(out: io.StringIO) -> None:
    sink = LogSink(json_logger(out), redactor=Redactor([r"ACME-[0-9]{6}"], extra_keys=["pin"]))
    sink.log("p1", "info", "code ACME-123456", {"Card-PIN": "1234"})
    text = out.getvalue()
    assert "ACME-123456" not in text
    assert "1234" not in text


FORGERIES = [
    'ok\n{"event": "worker.crashed", "plugin": "other"}',
    "ok\r2026-01-01 [error] fake line",
    "\x1b[2J\x1b[1;1Hcleared screen",
    "\x1b]0;window title\x07",
    "c1 \x9b31m csi and \x85 next-line",
    "bidi \u202eevil\u202c and \u2066isolate\u2069",
    "separators \u2028 and \u2029",
    "nul \x00 and del \x7f and tab \t",
]


@pytest.mark.parametrize("payload", FORGERIES)
def test_a_plugin_cannot_forge_lines_or_send_terminal_escapes(payload: str) -> None:
    buf = io.StringIO()
    sink = LogSink(console_logger(buf), rate=1000)
    sink.log("p1", "info", payload, {payload: payload, "v": [payload]})
    sink.plugin_output("p1", payload.encode())
    text = buf.getvalue()
    assert text.count("\n") == 2, "exactly one rendered line per record"
    for ch in "\r\x1b\x07\x00\x7f\t\x9b\x85\u202e\u202c\u2066\u2069\u2028\u2029":
        assert ch not in text


def test_neutralised_characters_stay_visible_as_escapes() -> None:
    assert neutralise("a\nb\x1b[31m\u202e") == "a\\nb\\x1b[31m\\u202e"


def test_plugin_records_cannot_pass_for_host_records_or_retag_the_plugin(
    sink: LogSink, out: io.StringIO
) -> None:
    sink.log("p1", "error", "worker.crashed", {"plugin": "other", "event": "x", "level": "info"})
    (rec,) = records(out)
    assert rec["event"] == "plugin.log"
    assert rec["plugin"] == "p1"
    assert rec["level"] == "error"
    assert rec["msg"] == "worker.crashed"
    assert rec["fields"]["plugin"] == "other"


def test_stderr_lines_are_tagged_with_the_plugin(sink: LogSink, out: io.StringIO) -> None:
    sink.plugin_output("p1", b"hello \xff bytes")
    (rec,) = records(out)
    assert rec["event"] == "plugin.output"
    assert rec["plugin"] == "p1"
    assert rec["line"] == "hello \ufffd bytes"


def make_limited(out: io.StringIO, rate: float = 10) -> tuple[LogSink, Clock]:
    clock = Clock()
    return LogSink(json_logger(out), rate=rate, clock=clock), clock


def test_lines_over_the_rate_are_dropped_after_a_burst_of_twice_the_rate(out: io.StringIO) -> None:
    sink, _ = make_limited(out)
    accepted = [sink.log("p1", "info", f"n{i}") for i in range(50)]
    assert sum(accepted) == 20
    assert sink.stats("p1")["p1"].dropped == 30
    assert len(records(out)) == 20


def test_the_drop_count_is_reported_before_the_next_accepted_line(out: io.StringIO) -> None:
    sink, clock = make_limited(out)
    for i in range(25):
        sink.log("p1", "info", f"n{i}")
    clock.now += 1.0  # ten more tokens
    assert sink.log("p1", "info", "after")
    recs = records(out)
    assert recs[-2]["event"] == "plugin.log_dropped"
    assert recs[-2]["dropped"] == 5
    assert recs[-2]["plugin"] == "p1"
    assert recs[-1]["msg"] == "after"


def test_the_periodic_report_counts_drops_without_a_next_line(out: io.StringIO) -> None:
    sink, _ = make_limited(out)
    for i in range(23):
        sink.log("p1", "info", f"n{i}")
    sink.report_dropped()
    sink.report_dropped()  # nothing new: no second record
    reports = [r for r in records(out) if r["event"] == "plugin.log_dropped"]
    assert [r["dropped"] for r in reports] == [3]
    assert sink.stats()["p1"].unreported == 0


def test_stderr_and_log_calls_share_one_budget_per_plugin(out: io.StringIO) -> None:
    sink, _ = make_limited(out)
    for _ in range(15):
        sink.log("p1", "info", "x")
    assert sum(sink.plugin_output("p1", b"y") for _ in range(15)) == 5
    assert sum(sink.plugin_output("p2", b"y") for _ in range(5)) == 5, "other plugins unaffected"


def test_oversized_fields_and_lines_are_cut_and_counted(out: io.StringIO) -> None:
    sink = LogSink(json_logger(out), rate=1000, max_field=100, max_line=2000)
    sink.log("p1", "info", "e" * 10_000, {"big": "x" * 100_000})
    sink.log("p1", "info", "many", {f"k{i}": "v" * 90 for i in range(100)})
    sink.plugin_output("p1", b"z" * 100_000)
    for line in out.getvalue().splitlines():
        assert len(line) < 5000
    assert sink.stats("p1")["p1"].truncated == 3
    assert "truncated" in out.getvalue()


def test_deep_nesting_is_bounded(sink: LogSink, out: io.StringIO) -> None:
    value: Any = "bottom"
    for _ in range(200):
        value = {"d": value}
    sink.log("p1", "info", "deep", {"v": value})
    assert "too deep" in out.getvalue()


Factory = Callable[[io.StringIO], Any]
