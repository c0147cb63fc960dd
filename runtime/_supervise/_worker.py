"""One worker process seen from the host: spawn, handshake, calls, and an escalating stop.

The worker's stdout carries the protocol and nothing else; its stderr is plugin output, read
line by line (bounded) and forwarded to the host log. Any byte on stdout that is not a valid
frame is a protocol violation and the worker is killed for it: a worker that can corrupt the
channel once cannot be trusted to answer correctly afterwards.

:class:`WorkerProcess` is put together here from its parts, each in a module of its own:

- ``_worker_life``: the process's life (spawn, hello and initialize, cgroup placement, a
  spare's claim, CPU sampling, reaping, the escalating stop), with ``_worker_handshake``
  (the start's requests queued in order, ``$/placed``) under it, and ``_worker_stderr``, the
  plugin's output and the tail of it kept for the crash report;
- ``_worker_channel``: the channel and its pending calls (framing writes, deadlines,
  ``request``/``invoke``/``ping``, responses, notifications, worker → host requests);
- ``_worker_reader``: reading stdout, and the asyncio fast path;
- ``_worker_state``: the state they share, set up once; ``_worker_exit``: how a worker ended.

The parts are mixins of one class rather than objects holding one another, because that
keeps a call's cost exactly what it was. They share some sixty attributes and call each
other both ways (the reader callback resolves calls the channel made; the channel kills the
process; the process starts the channel's tasks): as separate objects every ``self._pending``
or ``self._put`` on the hot path would become ``self._channel._pending`` (one more lookup) or
a back-reference, per call. As mixins it is one instance with the same dict, and a method's
lookup is cached per concrete type, so where in the MRO it is defined costs nothing: every
method compiles to the bytecode it had in the one class (``run`` only hands its loop set-up
to ``_worker_reader``). Each part sees the others through ``_worker_state``: the attributes
from its ``__init__``, the methods one part calls of another declared there for mypy.

Constants live in the module whose code reads them, and are read there as module globals:
monkeypatch them on that module (``_worker_life.HELLO_TIMEOUT``). They are deliberately not
re-exported here, so a stale ``_worker.HELLO_TIMEOUT`` patch fails instead of doing nothing.
"""

from __future__ import annotations

from ._worker_channel import _WorkerChannel
from ._worker_exit import QUOTA_REASONS, ExitInfo
from ._worker_life import _WorkerLife
from ._worker_reader import _WorkerReader
from ._worker_stderr import _WorkerStderr

__all__ = ["QUOTA_REASONS", "ExitInfo", "WorkerProcess"]


class WorkerProcess(_WorkerLife, _WorkerStderr, _WorkerChannel, _WorkerReader):
    """A running worker. Created by :meth:`spawn`; ends when its process does."""
