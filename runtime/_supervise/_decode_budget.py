"""What one worker's frames may cost the host's loop: where a frame refused for its cost goes,
and the budget of thread CPU time for the frames it admits.

A frame's single hold is bounded before it is decoded (``max-frame-values``: the splitter
refuses it, see ``protocol/_framing``), and :func:`refused_envelope` reads off its first
bytes whom to tell. But a plugin can send bounded frames back to back, and every other
plugin's calls are served on the same loop. So what reading, splitting and decoding a
worker's frames costs the host is measured (thread CPU time, which counts this thread's
work only, not the time it waited) and charged to that worker, like the redaction budget of
``_hostapi/_logsink``: a token bucket of seconds, refilled at :data:`DECODE_SHARE` of a CPU,
holding at most :data:`DECODE_BURST`. Past it the host stops reading that worker's channel
until the bucket refills: backpressure (its pipe fills, its writes block), nothing dropped,
and only that plugin's calls slow down.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final, Literal

__all__ = [
    "DECODE_BURST",
    "DECODE_SHARE",
    "VALUE_COST",
    "DecodeBudget",
    "refused_envelope",
]

#: Share of one CPU a worker's frames may cost the host's loop over time. A quarter: the
#: busiest honest load measured (64 calls in flight, 82k calls/s) is charged 0.10 of a CPU,
#: so it never waits; a flooding plugin leaves the loop three quarters of its time for
#: the others (and one such plugin per core is needed to take it all).
DECODE_SHARE: Final = 0.25
#: The most decoding time a worker may have banked: two worst-case frames at the default
#: ``max-frame-values`` (~15-30 ms each), so a burst of large answers passes unthrottled,
#: and a flood is throttled within ~50 ms.
DECODE_BURST: Final = 0.05
#: Seconds charged per structural byte where a decode is not measured: a worker → host
#: request's params (its handler decodes them later, in a task of its own) and a small read
#: (see ``_worker_reader.SMALL_READ``). The costliest shape measured in a host with a heap to
#: collect (lists ten deep, 130-200 ns a value); an honest frame's few values cost less.
VALUE_COST: Final = 200e-9


class DecodeBudget:
    """One worker's budget; :meth:`charge` says how long to stop reading (0: read on)."""

    __slots__ = ("_clock", "_last", "burst", "charged", "left", "longest", "paused", "share")

    def __init__(
        self,
        share: float = DECODE_SHARE,
        burst: float = DECODE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share = share
        self.burst = burst
        self.left = burst
        self._clock = clock
        self._last = clock()
        #: Seconds charged in all, and how many times reading was paused for the budget.
        self.charged = 0.0
        self.paused = 0
        #: The longest single charge: one read callback's, or one frame's in the pump (the
        #: longest the loop was held for this worker, in this thread's CPU time).
        self.longest = 0.0

    def charge(self, seconds: float) -> float:
        """Charge ``seconds`` of host CPU; the seconds until the budget is back above zero
        (how long reading should pause), or 0."""
        now = self._clock()
        left = min(self.burst, self.left + (now - self._last) * self.share) - seconds
        self._last = now
        self.left = left
        self.charged += seconds
        if seconds > self.longest:
            self.longest = seconds
        if left >= 0:
            return 0.0
        self.paused += 1
        return -left / self.share


#: A refused frame's first bytes as the worker's encoder writes them: an answer (``result`` or
#: ``error``) names the call it fails, a request (``method``) the id its error answers.
_ANSWER: Final = re.compile(rb'\{"jsonrpc":"2\.0","id":(0|[1-9][0-9]{0,17}),"(?:result|error)":')
_REQUEST: Final = re.compile(
    rb'\{"jsonrpc":"2\.0","id":(0|[1-9][0-9]{0,17}|"[A-Za-z0-9_.:-]{1,64}"),"method":"'
)


def refused_envelope(head: bytes) -> tuple[Literal["answer", "request"], int | str] | None:
    """Whom a refused frame concerns, from its first bytes: ``("answer", id)`` (the call it
    answers fails), ``("request", id)`` (the worker's request is answered with the refusal),
    or ``None`` (a notification, or no envelope the worker writes: a protocol violation)."""
    m = _ANSWER.match(head)
    if m is not None:
        return "answer", int(m.group(1))
    m = _REQUEST.match(head)
    if m is None:
        return None
    ident = m.group(1)
    return "request", ident[1:-1].decode() if ident[:1] == b'"' else int(ident)
