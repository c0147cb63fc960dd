"""Where plugin log lines and plugin stderr enter the host's structlog pipeline.

Every line is redacted and neutralised (:mod:`._redact`), size-capped, and rate-limited per
plugin before it is handed to structlog. Records always use a fixed event name —
``plugin.log`` (``ctx.log.*``), ``plugin.output`` (raw stderr), ``plugin.log_dropped`` (drop
report) — with the plugin's own text in ``msg``/``line`` and its fields nested under
``fields``. A plugin therefore cannot write a record that looks like the host's own
(``worker.crashed`` ...), nor overwrite the ``plugin`` tag, whatever it puts in its message.

Rate limit: a token bucket per plugin, refilled at ``rate`` lines/s and holding up to
``burst`` (default ``2 * rate``). ``ctx.log`` calls and stderr lines draw from the same
bucket, so ``print`` in a loop is no way around it. A line that finds the bucket empty is
dropped and counted; the count is reported as a ``plugin.log_dropped`` record before the
plugin's next accepted line, by :meth:`LogSink.report_dropped` (call it periodically, e.g.
via :meth:`LogSink.run_reporter`), and in :meth:`LogSink.stats`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import msgspec
import structlog

from ._redact import REDACTED, SCAN_MARGIN, Redactor

__all__ = ["LEVELS", "STDERR_PATTERNS", "LogSink", "LogStats", "LogSubscriber"]

LEVELS: Final = ("debug", "info", "warning", "error")

#: Where a PEM key block printed line by line begins and ends (labels bounded, like the
#: redaction rule's: these run on every stderr line too). In STDERR_PATTERNS so the
#: adversarial tests attack them with the redaction rules.
_PEM_BEGIN: Final = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----")
_PEM_END: Final = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----")
STDERR_PATTERNS: Final = (_PEM_BEGIN, _PEM_END)
_json = msgspec.json.Encoder()

#: Share of one CPU a plugin's log text may cost the host to clean, over time (5%: with
#: linear redaction, a worst-case 4 KiB line costs ~1 ms, so ~50 such lines a second). A
#: plugin over it has its lines dropped and counted until its budget refills.
REDACT_SHARE: Final = 0.05
#: The most cleaning time a plugin may have banked, in seconds; each record's own cost is
#: bounded anyway by the caps below, so this only smooths bursts.
REDACT_BURST: Final = 0.05
#: Values (strings, numbers, containers) walked per record; the rest is cut and counted.
MAX_NODES: Final = 2000


#: Called with every record a sink writes, before the host's level filter: the level, the
#: event name, and the record's fields (``plugin`` among them). Must not block or raise.
LogSubscriber = Callable[[str, str, dict[str, Any]], None]


class _Tee:
    """The sink's logger, handing each record to the subscribers first (e.g. the running
    host's ring of recent records per plugin behind ``cordon logs``). Every record a sink
    writes goes through here, whichever method writes it, so no path can miss the ring."""

    __slots__ = ("_logger", "subscribers")

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self.subscribers: list[LogSubscriber] = []

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> Any:
        for subscriber in self.subscribers:
            subscriber(level, event, fields)
        return getattr(self._logger, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> Any:
        return self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._emit("error", event, fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


@dataclass(slots=True)
class LogStats:
    """Per-plugin counters. ``dropped`` is lifetime; ``unreported`` is dropped since the last
    ``plugin.log_dropped`` record."""

    accepted: int = 0
    dropped: int = 0
    truncated: int = 0
    unreported: int = 0
    #: Of ``dropped``: lines dropped because the plugin's cleaning-time budget ran out.
    over_budget: int = 0


class _PluginState:
    __slots__ = ("in_pem", "last", "stats", "tokens", "work")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        #: Seconds of cleaning this plugin may still spend (see REDACT_SHARE).
        self.work = REDACT_BURST
        self.last = now
        self.in_pem = False
        self.stats = LogStats()


#: What a value past a record's budget becomes.
_CUT: Final = "[cut]"


def _cut(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]", True


class LogSink:
    """Takes plugin log lines and stderr, and writes them (clean) to structlog.

    ``logger`` is any structlog-style logger with ``debug/info/warning/error`` methods;
    by default ``structlog.get_logger("cordon.plugin")``, i.e. the host's configured pipeline.
    """

    def __init__(
        self,
        logger: Any = None,
        *,
        rate: float = 50.0,
        burst: float | None = None,
        max_event: int = 256,
        max_field: int = 2048,
        max_line: int = 16384,
        max_depth: int = 8,
        redactor: Redactor | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        redact_share: float = REDACT_SHARE,
    ) -> None:
        if rate <= 0:
            raise ValueError("log rate must be positive")
        self._logger = _Tee(logger if logger is not None else structlog.get_logger("cordon.plugin"))
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else 2.0 * self.rate
        self.max_event = max_event
        self.max_field = max_field
        self.max_line = max_line
        self.max_depth = max_depth
        self.redactor = redactor or Redactor()
        self._clock = clock
        # What cleaning a record cost is measured with ``timer`` and charged to its plugin.
        self._timer = timer
        self.redact_share = redact_share
        self._plugins: dict[str, _PluginState] = {}

    # -- public ---------------------------------------------------------------------------

    def subscribe(self, subscriber: LogSubscriber) -> Callable[[], None]:
        """Hand every record this sink writes (clean, whatever the host's log level) to
        ``subscriber`` too; returns the function that stops it."""
        self._logger.subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._logger.subscribers:
                self._logger.subscribers.remove(subscriber)

        return unsubscribe

    def log(
        self, plugin_id: str, level: str, event: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        """A ``ctx.log.<level>(event, **fields)`` line. ``False`` when rate-limited (dropped)."""
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        st = self._admit(plugin_id)
        if st is None:
            return False
        t0 = self._timer()
        msg, cut = _cut(
            self.redactor.clean_text(event[: self.max_event + SCAN_MARGIN]), self.max_event
        )
        clean_fields, cut2 = self._clean_fields(fields or {})
        st.work -= self._timer() - t0
        if cut or cut2:
            st.stats.truncated += 1
        getattr(self._logger, level)("plugin.log", plugin=plugin_id, msg=msg, fields=clean_fields)
        return True

    def plugin_output(self, plugin_id: str, line: bytes) -> bool:
        """One line of the worker's raw stderr (without its newline)."""
        st = self._admit(plugin_id)
        if st is None:
            return False
        t0 = self._timer()
        # Capped before any pattern runs: the cost of a line is bounded by the cap, not by
        # what the plugin wrote.
        text = line[: self.max_line + SCAN_MARGIN].decode("utf-8", "replace")
        # A PEM block printed to stderr arrives one line at a time; the regex alone would
        # only catch its first line. Track "inside a key block" across lines.
        if st.in_pem:
            end = _PEM_END.search(text)
            if end is None:
                text = REDACTED
            else:
                text = REDACTED + text[end.end() :]
                st.in_pem = False
        begins = list(_PEM_BEGIN.finditer(text))
        if begins and _PEM_END.search(text, begins[-1].end()) is None:
            st.in_pem = True
        clean, cut = _cut(self.redactor.clean_text(text), self.max_line)
        if cut or len(line) > len(text):
            st.stats.truncated += 1
        st.work -= self._timer() - t0
        self._logger.info("plugin.output", plugin=plugin_id, line=clean)
        return True

    def report_dropped(self, plugin_id: str | None = None) -> None:
        """Write a ``plugin.log_dropped`` record for every plugin (or just ``plugin_id``)
        that has dropped lines since its last report."""
        ids = [plugin_id] if plugin_id is not None else list(self._plugins)
        for pid in ids:
            st = self._plugins.get(pid)
            if st is not None and st.stats.unreported:
                self._report(pid, st)

    async def run_reporter(self, interval: float = 5.0) -> None:
        """Report drops every ``interval`` seconds, forever (run it in a task group)."""
        while True:
            await anyio.sleep(interval)
            self.report_dropped()

    def stats(self, plugin_id: str | None = None) -> dict[str, LogStats]:
        """Counters per plugin (a copy)."""
        ids = [plugin_id] if plugin_id is not None else list(self._plugins)
        out: dict[str, LogStats] = {}
        for pid in ids:
            st = self._plugins.get(pid)
            s = st.stats if st is not None else LogStats()
            out[pid] = LogStats(s.accepted, s.dropped, s.truncated, s.unreported, s.over_budget)
        return out

    def forget(self, plugin_id: str) -> None:
        """Drop a plugin's state (after unload), reporting its last drops first."""
        self.report_dropped(plugin_id)
        self._plugins.pop(plugin_id, None)

    # -- internals ------------------------------------------------------------------------

    def _admit(self, plugin_id: str) -> _PluginState | None:
        now = self._clock()
        st = self._plugins.get(plugin_id)
        if st is None:
            st = self._plugins[plugin_id] = _PluginState(self.burst, now)
        else:
            elapsed = now - st.last
            st.tokens = min(self.burst, st.tokens + elapsed * self.rate)
            st.work = min(REDACT_BURST, st.work + elapsed * self.redact_share)
            st.last = now
        if st.tokens < 1.0 or st.work <= 0.0:
            # Dropping costs next to nothing: no pattern runs on a dropped line.
            st.stats.dropped += 1
            st.stats.unreported += 1
            if st.tokens >= 1.0:
                st.stats.over_budget += 1
            return None
        st.tokens -= 1.0
        if st.stats.unreported:
            self._report(plugin_id, st)
        st.stats.accepted += 1
        return st

    def _report(self, plugin_id: str, st: _PluginState) -> None:
        n, st.stats.unreported = st.stats.unreported, 0
        self._logger.warning(
            "plugin.log_dropped",
            plugin=plugin_id,
            dropped=n,
            dropped_total=st.stats.dropped,
            over_budget_total=st.stats.over_budget,
            rate=self.rate,
        )

    def _clean_fields(self, fields: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        cut = False

        def walk(value: Any, depth: int) -> Any:
            nonlocal cut
            if isinstance(value, str):
                text, c = _cut(value, self.max_field)
                cut = cut or c or value == _CUT
                return text
            if isinstance(value, dict):
                if depth <= 0:
                    cut = True
                    return "[too deep]"
                items = list(value.items())
                if len(items) > 100:
                    cut = True
                    items = items[:100]
                return {k[: self.max_event]: walk(v, depth - 1) for k, v in items}
            if isinstance(value, list):
                if depth <= 0:
                    cut = True
                    return "[too deep]"
                if len(value) > 100:
                    cut = True
                    value = value[:100]
                return [walk(v, depth - 1) for v in value]
            return value

        # Pre-trim before the regex pass so a huge string costs bounded work; redaction runs
        # on ~4x what is kept so a secret straddling the final cut is still recognised.
        pre = self._pre_trim(fields, self.max_depth + 1)
        cleaned = walk(self.redactor.value(pre, max_depth=self.max_depth + 1), self.max_depth)
        assert isinstance(cleaned, dict)
        size = len(_json.encode(cleaned))
        if size > self.max_line:
            preview = _json.encode(cleaned)[: self.max_field].decode("utf-8", "replace")
            return {"_truncated": f"{size} bytes of fields cut to: {preview}"}, True
        return cleaned, cut

    def _pre_trim(self, value: Any, depth: int, budget: list[int] | None = None) -> Any:
        """The fields as far as the record's budgets reach, before any pattern runs: each
        string capped at ``max_field`` (plus the scan margin), at most ``max_line`` (plus the
        margin) characters in all, ``MAX_NODES`` values; past a budget, values become
        ``[cut]``. So the cost of one record is bounded whatever the plugin sent."""
        if budget is None:
            budget = [self.max_line + SCAN_MARGIN, MAX_NODES]
        if budget[1] <= 0 or budget[0] <= 0:
            return _CUT
        budget[1] -= 1
        if isinstance(value, str):
            text = value[: min(self.max_field + SCAN_MARGIN, budget[0])]
            budget[0] -= len(text)
            return text
        if depth <= 0:
            return "[too deep]"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in list(value.items())[:101]:
                if budget[0] <= 0 or budget[1] <= 0:
                    out[_CUT] = _CUT  # one marker for the rest, not one per item
                    break
                key = str(k)[: self.max_event + SCAN_MARGIN]
                budget[0] -= len(key)
                out[key] = self._pre_trim(v, depth - 1, budget)
            return out
        if isinstance(value, list | tuple):
            items: list[Any] = []
            for v in value[:101]:
                if budget[0] <= 0 or budget[1] <= 0:
                    items.append(_CUT)
                    break
                items.append(self._pre_trim(v, depth - 1, budget))
            return items
        return value
