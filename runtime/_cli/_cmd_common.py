"""What every ``cordon`` command group shares: how an error is printed and which exit code it
gets, how results are printed (JSON, or text that may carry a plugin's words), and how a
command reaches the running host over its control socket.

It lives apart from :mod:`._main` so the command-group modules (``_cmd_*``) can use it while
``_main`` imports them to build the parser: the arrows run one way, ``_main`` → groups → here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from cordon.protocol import CordonError

from .._hostapi._redact import Redactor
from ._control import ControlSocketError, HostNotRunning
from ._exitcodes import EXIT_INTERNAL, TABLE

__all__ = [
    "EXIT_CODES",
    "ask_host",
    "exit_code_for",
    "explicit_socket",
    "fail",
    "live_or_none",
    "print_json",
    "print_kv",
    "shown",
    "socket_for",
]

#: Most specific first: the first matching class decides the exit code.
EXIT_CODES: Final[tuple[tuple[type[BaseException], int], ...]] = tuple(
    (cls, row.code) for row in TABLE for cls in row.errors
)


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


_json = msgspec.json.Encoder()


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def shown(text: object) -> str:
    """Text for the terminal that may carry a plugin's words (an error it raised, its
    manifest's description, an audit summary): redacted and neutralised, one line, whatever
    the host cleaned before - this is the last step before an operator's terminal."""
    return _REDACTOR.clean_message(str(text))


_REDACTOR: Final = Redactor()


def fail(exc: BaseException) -> int:
    if isinstance(exc, CordonError):
        first, *rest = str(exc.message).splitlines() or [""]
        print(f"cordon: {type(exc).__name__}: {shown(first)}", file=sys.stderr)
        for line in rest:
            print(f"  {shown(line)}", file=sys.stderr)
    else:
        print(f"cordon: internal error: {type(exc).__name__}: {shown(exc)}", file=sys.stderr)
    return exit_code_for(exc)


def print_kv(row: dict[str, Any]) -> None:
    for key, value in row.items():
        print(f"{key:12} {shown(value)}")


# -- talking to a running host ----------------------------------------------------------------


def explicit_socket(args: argparse.Namespace) -> Path | None:
    return Path(args.socket).expanduser().absolute() if args.socket else None


def socket_for(args: argparse.Namespace) -> Path:
    from .._settings._config import find_config
    from ._control import default_socket_path

    return explicit_socket(args) or default_socket_path(find_config(args.config))


def ask_host(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None) -> Any:
    """The running host's answer; :class:`HostNotRunning` when none is reachable."""
    from ._control import request

    return request(socket_for(args), method, params)


def live_or_none(args: argparse.Namespace, method: str) -> Any | None:
    """The running host's answer, or ``None`` when no host is reachable (the caller falls
    back to reading files)."""
    try:
        return ask_host(args, method)
    except HostNotRunning:
        return None
    except ControlSocketError as exc:
        if exc.reason == "path-too-long":
            return None  # no host can listen on an address that cannot exist
        raise
