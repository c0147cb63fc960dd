"""The operator's view of the host's log: level, format, and an optional rotating JSON file.

Everything the host logs — its own lifecycle records and every plugin's redacted, rate-limited
records (:mod:`._logsink`) — goes through structlog; :func:`configure_logging` decides what an
operator sees of it:

- **level** (``debug``, ``info``, ``warning``, ``error``): records below it are dropped before
  any formatting work. A plugin's ``ctx.log.info`` lines are ``info`` records, so
  ``--log-level info`` shows them.
- **format**: ``console`` (one readable line per record) or ``json`` (one JSON object per line,
  for a log shipper), on stderr — stdout carries results and JSON-RPC answers, never logs.
- **file**: JSON lines appended to ``file`` as well, rotated by size (``file.1`` ... ``file.N``
  keep the older ones), whatever the console format.

Every record gets its ``level`` and an ISO 8601 UTC ``timestamp``.

Host records can quote what a plugin sent (a topic it subscribed to, a method it named), so
just before each renderer and the file writer every string of a record is neutralised
(:func:`~cordon.runtime._hostapi._redact.neutralise_record`): no control, ESC or bidi
character reaches a terminal or the log file raw, whichever format is chosen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Final, TextIO

import structlog

from .._hostapi._redact import neutralise_record

__all__ = [
    "DEFAULT_LOG_BACKUPS",
    "DEFAULT_LOG_FILE_SIZE",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LoggingSetup",
    "configure_logging",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("console", "json")
#: A host is quiet unless something is wrong; an operator asks for more.
DEFAULT_LOG_LEVEL: Final = "warning"
DEFAULT_LOG_FORMAT: Final = "console"
ENV_LOG_LEVEL: Final = "CORDON_LOG_LEVEL"
ENV_LOG_FORMAT: Final = "CORDON_LOG_FORMAT"
#: A log file is rotated when the next record would take it past this size: big enough for
#: hours of a busy host at info level, small enough to open in an editor.
DEFAULT_LOG_FILE_SIZE: Final = 10 * 1024 * 1024
#: Rotated files kept (``file.1`` is the newest): together with the live file, a bounded
#: ~60 MiB of disk by default, however long the host runs.
DEFAULT_LOG_BACKUPS: Final = 5

_NUMERIC: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _JsonFile:
    """A structlog processor that appends each record as one JSON line to a size-rotated
    file and passes the record on unchanged (the console still renders it)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The stdlib handler does the rotation (rename chain, size check before each write)
        # and serialises writers with its lock; only the message is ours.
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)  # plugin records are redacted, yet still the operator's

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        record = structlog.processors.format_exc_info(_logger, method, dict(event_dict))
        # Neutralised here, after the traceback became text, and on a copy: the console's
        # renderer further down the chain still gets the record as it was (and cleans it).
        record = neutralise_record(_logger, method, record)
        line = json.dumps(record, default=repr, ensure_ascii=False)
        self.handler.handle(
            logging.makeLogRecord({"msg": line, "levelno": _NUMERIC.get(method, 30)})
        )
        return event_dict

    def close(self) -> None:
        self.handler.close()


class LoggingSetup:
    """What :func:`configure_logging` set up; :meth:`close` closes the log file (if any)."""

    def __init__(self, level: str, fmt: str, file: _JsonFile | None) -> None:
        self.level = level
        self.format = fmt
        self._file = file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def configure_logging(
    level: str = DEFAULT_LOG_LEVEL,
    fmt: str = DEFAULT_LOG_FORMAT,
    file: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int = DEFAULT_LOG_FILE_SIZE,
    backups: int = DEFAULT_LOG_BACKUPS,
    stream: TextIO | None = None,
) -> LoggingSetup:
    """Send the host's records (its own and its plugins') at ``level`` and above to
    ``stream`` (default: stderr) as ``fmt``, and, with ``file``, as JSON lines to that file,
    rotated at ``max_bytes`` keeping ``backups`` old files. Replaces any earlier setup (close
    the previous :class:`LoggingSetup` yourself). ``ValueError`` names a bad argument."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    if max_bytes <= 0 or backups < 0:
        raise ValueError("a log file needs a positive size and a non-negative backup count")
    out = stream if stream is not None else sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    json_file = _JsonFile(Path(file), max_bytes, backups) if file is not None else None
    if json_file is not None:
        processors.append(json_file)
    # The traceback becomes text first, so it is neutralised too (its line breaks kept):
    # `exc_info` is an exception object the renderer would print raw - and a pretty console
    # traceback (rich's, when installed) would print its message raw; the plain one is kept.
    processors += [structlog.processors.format_exc_info, neutralise_record]
    if fmt == "json":
        # ensure_ascii=False would write C1 controls and bidi characters raw; they are
        # escapes by now.
        processors.append(structlog.processors.JSONRenderer(default=repr, ensure_ascii=False))
    else:
        isatty = getattr(out, "isatty", None)
        processors.append(structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty())))
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(out),
        wrapper_class=structlog.make_filtering_bound_logger(_NUMERIC[level]),
        cache_logger_on_first_use=False,
    )
    return LoggingSetup(level, fmt, json_file)
