"""The operator's logging on the command line: the ``--log-*`` options, where each setting
comes from, and how ``cordon logs`` prints a record.

A setting comes from its flag, else the environment (``CORDON_LOG_LEVEL``,
``CORDON_LOG_FORMAT``), else the config's ``[runtime] log-level``/``log-format``/``log-file``,
else the default (``warning``, ``console``, no file). A bad flag or variable is a usage error
(exit 2) naming it; the config's values were checked with the config.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from cordon.protocol import CordonError

from .._errors import ConfigError
from .._hostapi._redact import Redactor
from ._oplog import (
    DEFAULT_LOG_BACKUPS,
    DEFAULT_LOG_FILE_SIZE,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    LOG_FORMATS,
    LOG_LEVELS,
    LoggingSetup,
    configure_logging,
)

__all__ = [
    "add_log_options",
    "configure_from_args",
    "count_arg",
    "print_record",
    "size_arg",
]

_json = msgspec.json.Encoder(enc_hook=repr)
_REDACTOR: Final = Redactor()
#: Keys printed in a record's fixed columns, not among its ``key=value`` extras.
_COLUMNS: Final = frozenset({"seq", "ts", "plugin", "level", "event", "msg", "line"})


def size_arg(text: str) -> int:
    """``--log-file-size``: a size with its unit (``10 MiB``), positive."""
    from .._settings._units import parse_size

    try:
        n = parse_size(text)
    except (ValueError, CordonError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 10 MiB ({exc})") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a log file needs a positive size")
    return n


def count_arg(text: str) -> int:
    """A whole number >= 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return n


def add_log_options(sp: argparse.ArgumentParser, *, file: bool = False) -> None:
    """``--log-level`` and ``--log-format`` (for commands that run plugins), and with
    ``file`` the rotating ``--log-file`` options (``cordon run``)."""
    sp.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help=f"show records at this level and above (default: ${ENV_LOG_LEVEL}, else "
        f"[runtime] log-level, else {DEFAULT_LOG_LEVEL}); plugins' ctx.log.info lines "
        "need info",
    )
    sp.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help=f"log lines on stderr (default: ${ENV_LOG_FORMAT}, else [runtime] log-format, "
        f"else {DEFAULT_LOG_FORMAT})",
    )
    if not file:
        return
    sp.add_argument(
        "--log-file",
        metavar="PATH",
        help="also append JSON lines to PATH, rotated by size (default: [runtime] log-file)",
    )
    sp.add_argument(
        "--log-file-size",
        metavar="SIZE",
        type=size_arg,
        default=DEFAULT_LOG_FILE_SIZE,
        help="rotate the log file before it grows past SIZE (default: 10 MiB)",
    )
    sp.add_argument(
        "--log-file-backups",
        metavar="N",
        type=count_arg,
        default=DEFAULT_LOG_BACKUPS,
        help=f"rotated log files to keep (default: {DEFAULT_LOG_BACKUPS})",
    )


def _from_env(parser: argparse.ArgumentParser, name: str, choices: Sequence[str]) -> str | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if value not in choices:
        parser.error(f"environment variable {name}={raw!r} is not one of {', '.join(choices)}")
    return value


def configure_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LoggingSetup:
    """Configure the host's logging for this command (see the module docstring); commands
    without the options get the defaults. Close the result when the command is done."""
    if not hasattr(args, "log_level"):
        return configure_logging()
    level = args.log_level or _from_env(parser, ENV_LOG_LEVEL, LOG_LEVELS)
    fmt = args.log_format or _from_env(parser, ENV_LOG_FORMAT, LOG_FORMATS)
    takes_file = hasattr(args, "log_file")
    file = args.log_file if takes_file else None
    if level is None or fmt is None or (takes_file and file is None):
        from .._settings._config import find_config

        rt = find_config(args.config).runtime
        level = level or rt.log_level
        fmt = fmt or rt.log_format
        file = file or (rt.log_file if takes_file else None)
    level = level or DEFAULT_LOG_LEVEL
    fmt = fmt or DEFAULT_LOG_FORMAT
    if file is None:
        return configure_logging(level, fmt)
    try:
        return configure_logging(
            level,
            fmt,
            Path(file).expanduser(),
            max_bytes=args.log_file_size,
            backups=args.log_file_backups,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot open the log file {file}: {exc.strerror or exc}", source=str(file), problems=[]
        ) from None


def printable(text: object) -> str:
    """Plugin text for the operator's terminal: redacted, control characters escaped, one
    line. The sink cleaned it already; this is the terminal's own line of defence."""
    return _REDACTOR.clean_message(str(text))


def print_record(record: dict[str, Any], *, as_json: bool) -> None:
    """One ``cordon logs`` record on stdout: a JSON line, or ``ts LEVEL event text k=v...``."""
    if as_json:
        sys.stdout.write(_json.encode(record).decode() + "\n")
    else:
        text = printable(record.get("msg", record.get("line", "")))
        extra = " ".join(
            f"{k}={_json.encode(v).decode()}" for k, v in record.items() if k not in _COLUMNS
        )
        level = str(record.get("level", "")).upper()
        event = record.get("event", "")
        print(
            f"{printable(record.get('ts', '-'))} {printable(level):7} {printable(event)} "
            f"{text} {printable(extra)}".rstrip()
        )
    sys.stdout.flush()
