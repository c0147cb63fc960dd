"""Standard-library ``logging`` inside the worker: every record goes to the host.

:func:`install` puts one handler on the root logger before the plugin is imported, so
records from the plugin's code and from every library it imports reach the host as
structured ``host/log`` notifications, like ``ctx.log``: level, message, the logger's name
(``fields.logger``), the ``extra`` fields, and a traceback for ``log.exception``. The host
redacts them, rate-limits them and checks ``log`` exactly as for ``ctx.log`` (nothing here
is trusted: a plugin can remove this handler and send notifications of its own).

* The root logger is set to INFO (Python's default is WARNING, which would hide a plugin's
  info lines); a plugin may set any level it likes on its own loggers or the root.
* ``warnings.warn`` (a coroutine never awaited, a deprecation) is routed through logging
  too, as ``py.warnings`` warnings.
* Until the worker's event loop serves the channel (plugin import, activation) records are
  written to the channel directly; afterwards they are handed to the loop, from whatever
  thread logged them (:meth:`Server.post`), in order with the calls' results.
* A record logged while this handler is already formatting one on the same thread (a
  ``__str__`` that logs) is dropped rather than recursed into.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any, Final

from cordon.protocol import encode_notification

from ._hostapi import LOG, log_params

__all__ = ["HostLogHandler", "attach", "detach", "install"]

#: The level the root logger starts at in a worker (Python's own default is WARNING).
ROOT_LEVEL: Final = logging.INFO
#: A traceback attached to a record is cut to this (the newest frames kept).
MAX_TRACEBACK: Final = 16 * 1024

#: LogRecord's own attributes; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime"}

Post = Callable[[bytes], None]


def level_name(levelno: int) -> str:
    """The host's four levels: CRITICAL is an error, anything below DEBUG a debug."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class HostLogHandler(logging.Handler):
    """Sends each record to the host through ``post`` (a frame writer); drops records while
    it has none (after the worker stopped serving)."""

    def __init__(self, post: Post | None = None) -> None:
        super().__init__(logging.NOTSET)
        self.post = post
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        post = self.post
        if post is None or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            post(encode_notification(LOG, record_params(record)))
        except Exception:
            # A record that cannot be sent must not fail the code that logged it.
            pass
        finally:
            self._busy.on = False

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def record_params(record: logging.LogRecord) -> dict[str, Any]:
    try:
        message = record.getMessage()
    except Exception as exc:
        # Bad %-args in someone's log call: say so rather than lose the record.
        message = f"{record.msg!r} % {record.args!r} ({type(exc).__name__}: {exc})"
    fields: dict[str, Any] = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if record.exc_info and record.exc_info[1] is not None:
        tb = "".join(traceback.format_exception(record.exc_info[1]))
        fields["exc_info"] = tb[-MAX_TRACEBACK:]
    elif record.exc_text:
        fields["exc_info"] = record.exc_text[-MAX_TRACEBACK:]
    if record.stack_info:
        fields["stack_info"] = record.stack_info[-MAX_TRACEBACK:]
    fields["logger"] = record.name
    return log_params(level_name(record.levelno), message, fields)


_handler: HostLogHandler | None = None


def install(post: Post | None) -> HostLogHandler:
    """Route the root logger (and ``warnings``) to the host through ``post``. Idempotent.

    The zygote installs it with no ``post`` before it forks (:func:`cordon.worker._plugin.warm`):
    making the handler (its lock, registered for fork, and weak references) and setting the
    root's level cost a forked worker ~0.2 ms and ~50 copied pages otherwise, and are the
    same for every worker. A forked worker then only names its channel here; records
    logged before that are dropped, as after the worker stops serving."""
    global _handler
    if _handler is None:
        _handler = HostLogHandler(post)
        root = logging.getLogger()
        root.addHandler(_handler)
        root.setLevel(ROOT_LEVEL)
        logging.captureWarnings(True)
    else:
        _handler.post = post
    return _handler


def attach(post: Post) -> None:
    """From now on records go through ``post`` (the server's thread-safe writer)."""
    if _handler is not None:
        _handler.post = post


def detach() -> None:
    """The channel is closing: records from now on are dropped."""
    if _handler is not None:
        _handler.post = None
