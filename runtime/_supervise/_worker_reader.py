"""Reading a worker's stdout, and the asyncio fast path.

On anyio's asyncio backend a reader callback (:meth:`_on_readable`) resolves the callers'
futures (:class:`_FuturePending`) itself: an answer costs no task wake-up, and a sequential
caller may go on from the very read that brought its answer (see ``_loopfast``). Whatever
is not a plain answer is handed to the pump task in order, and reading pauses until it is
handled. On any other backend (trio) :meth:`_read_stdout` handles every frame in the pump
task.

Where an answer is decoded (once): a frame up to :data:`LARGE_FRAME` bytes is decoded in
the reader callback, envelope and result in one pass (:func:`decode_answer`); a larger
answer to a tool call is handed to its caller undecoded and decoded in the caller's own
task, in pieces with a checkpoint between them (``_decode_large``), so one plugin's big
result never holds the loop the other plugins' calls are served on for long.

What one frame may cost is bounded before any decode: the splitter refuses a frame with more
than ``max_frame_values`` structural bytes (a :class:`~cordon.protocol._framing.Refused`,
handled by the channel's ``_on_refused``). What a worker's frames cost over time is measured
(this thread's CPU time, per read and per frame the pump handles) and charged to its
:class:`~._decode_budget.DecodeBudget`; past it, reading that worker pauses until it refills.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Literal

import anyio
import anyio.lowlevel
import msgspec

from cordon.protocol import Batch, Incoming, ProgressParams, Response, decode_frame
from cordon.protocol._framing import structural_count
from cordon.protocol._messages import decode_success

from ._decode_budget import VALUE_COST, DecodeBudget
from ._loopfast import LoopFast
from ._worker_state import _Pending, _WorkerState

__all__ = ["DEFAULT_MAX_FRAME_VALUES", "LARGE_FRAME", "READ_SIZE", "decode_answer"]

#: A frame with more structural bytes (``[ { , :``, so at most this many JSON values plus
#: one) is refused undecoded, unless the plugin's ``max-frame-values`` says otherwise.
#: Decoding costs up to ~130-250 ns a value here (lists ten deep, the costliest shape
#: measured, alone or in a host with a heap to collect; a flat list of numbers ~50, of
#: empty lists ~35), so the worst frame this admits holds the loop ~15-30 ms
#: (``benchmarks/bench_hold.py``; 200k held it 40-45 ms, 120k 30-39). It admits a 20k-row
#: table of four columns as arrays (5 per row), 11k rows as objects of four members (9 per
#: row), 100k numbers, and any text up to ``max-message`` with fewer commas and colons.
DEFAULT_MAX_FRAME_VALUES: Final = 100_000
_thread_time = time.thread_time
#: A read this small is charged by its structural bytes at :data:`VALUE_COST` each rather
#: than measured: the thread clock is a system call (~0.6 µs here, two per read were 2.4 %
#: of a sequential call), and what so few bytes can cost is bounded by them anyway.
SMALL_READ: Final = 4096

#: Bytes per read of the worker's stdout: a pipe's whole default capacity, so a pipelined
#: burst still arrives in one syscall. Not more: ``os.read`` allocates the full size first,
#: and above glibc's 128 KiB mmap threshold that was an mmap + mremap + munmap and fresh
#: zeroed pages on every read, which cost a sequential call ~25 us on each side.
READ_SIZE: Final = 64 * 1024
#: Bytes per read while a frame is partly read: a large frame is coming, and the grown pipe
#: (F_SETPIPE_SZ, up to 1 MiB) holds this much; the allocation is paid once per MiB here.
LARGE_READ_SIZE: Final = 1024 * 1024
#: Answers larger than this are decoded by their caller, in pieces (see the module doc).
#: Small enough that decoding one in the reader holds the loop well under a millisecond
#: (256 KiB of small objects: ~3 ms; of a string: ~0.1 ms), large enough that the common
#: answer takes the one-pass path.
LARGE_FRAME: Final = 64 * 1024
#: A piece of a large answer decoded between two checkpoints of its caller's task.
DECODE_PIECE: Final = 64 * 1024
#: How deep a large answer is cut into pieces; deeper members are decoded whole.
MAX_PIECE_DEPTH: Final = 8
#: A document with fewer commas than this (so fewer values) is decoded whole: what costs
#: is building objects, ~0.15 us a value, not bytes (6 MB of 1000 strings: 3 ms).
FEW_VALUES: Final = 20_000
#: The commas of a large array or object are counted in its first this many bytes.
COMMA_SAMPLE: Final = 16 * 1024
#: Cut a large array or object into members only if they average this many bytes per
#: comma or more. Measured on 16 MiB: splitting ``[1,1,...]`` into members cost 677 ms
#: against 193 ms to decode it whole; 800k 20-byte objects, 112 ms against 370 ms.
MIN_MEMBER: Final = 6


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    """A success answer with an integer id, its result decoded with it in one pass: exactly
    the frames ``decode_success`` accepts (tests hold the two to that)."""

    jsonrpc: Literal["2.0"]
    id: int
    result: Any


_answer_decoder = msgspec.json.Decoder(_Answer)
_any_decoder = msgspec.json.Decoder()
_list_pieces = msgspec.json.Decoder(list[msgspec.Raw])
_dict_pieces = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()
#: The envelope of a success answer as the worker's encoder writes it (members in this
#: order, no spaces): enough to find a large answer's caller without decoding it.
_LARGE_PREFIX = re.compile(rb'\{"jsonrpc":"2\.0","id":(0|[1-9][0-9]{0,17}),"result":')
#: ``result`` of an answer decoded elsewhere: the call was answered.
_ANSWERED: Final = msgspec.Raw(b"null")


class _Undecoded:
    __slots__ = ()


#: ``value`` of a call whose answer was not decoded into it.
UNDECODED: Final = _Undecoded()


def decode_answer(frame: bytes) -> _Answer | None:
    """The common frame, a success answer, decoded whole in one pass. ``None``: anything
    else (or not valid); classify it with ``decode_frame``."""
    try:
        return _answer_decoder.decode(frame)
    except msgspec.DecodeError:
        return None


def large_answer_id(frame: bytes) -> int | None:
    """The id of a large success answer, read off its envelope; ``None``: not one (its
    body is checked when decoded, see :func:`decode_large`)."""
    m = _LARGE_PREFIX.match(frame)
    if m is None or frame[-1:] != b"}":
        return None
    return int(m.group(1))


async def decode_large(frame: bytes, checkpoint: Callable[[], Awaitable[Any]]) -> Any:
    """The result of a large answer (one :func:`large_answer_id` accepted), decoded in
    pieces of about :data:`DECODE_PIECE` bytes with ``checkpoint()`` between them.
    ``msgspec.DecodeError`` when the frame is not a valid answer after all.

    msgspec decodes a document in one call that holds the GIL (a thread would not help:
    measured, a 100 ms decode in a thread stalls the loop's thread 100 ms), so the pieces
    are cut here: an array or object is split into its members by one structural pass, and
    its members decoded in groups of about a piece. A document of few values
    (:data:`FEW_VALUES`: long strings) is cheap to decode whole; where members are tiny
    (more than one comma per :data:`MIN_MEMBER` bytes) the split costs as much as decoding
    it whole, and holds the loop as long: both are decoded whole.
    """
    prefix = _LARGE_PREFIX.match(frame)
    assert prefix is not None
    body = memoryview(frame)[prefix.end() : -1]
    done = [0]  # bytes decoded since the last checkpoint

    async def tick(size: int) -> None:
        done[0] += size
        if done[0] >= DECODE_PIECE:
            done[0] = 0
            await checkpoint()

    async def piece(raw: Any, depth: int) -> Any:
        size = len(raw)
        view = memoryview(raw)
        head = bytes(view[:1])
        commas = 0
        if size > DECODE_PIECE and head in (b"[", b"{") and depth < MAX_PIECE_DEPTH:
            # Estimated from a sample: counting a whole MiB costs ~0.3 ms, its decode ~0.26.
            commas = bytes(view[:COMMA_SAMPLE]).count(b",") * (size // COMMA_SAMPLE)
        if commas < FEW_VALUES or commas * MIN_MEMBER > size:
            value = _any_decoder.decode(raw)
            await tick(size)
            return value
        if head == b"{":
            members = _dict_pieces.decode(raw)
            await checkpoint()  # the split was one hold of the loop
            return {k: await piece(v, depth + 1) for k, v in members.items()}
        items = _list_pieces.decode(raw)
        await checkpoint()
        out: list[Any] = []
        n = len(items)
        # Members per group from their mean size: one decode call per piece, not per member.
        per_group = max(1, n * DECODE_PIECE // size)
        for i in range(0, n, per_group):
            group = items[i : i + per_group]
            joined = b"[" + b",".join(group) + b"]"
            if len(joined) > 2 * DECODE_PIECE:
                for member in group:  # uneven sizes: the large ones in pieces of their own
                    out.append(await piece(member, depth + 1))
            else:
                out += _any_decoder.decode(joined)
                await tick(len(joined))
        return out

    return await piece(body, 0)


class _FuturePending(_Pending):
    """A :class:`_Pending` on anyio's asyncio backend: a bare future costs a fifth of an
    ``anyio.Event`` (no backend lookup, no ``asyncio.Event`` with its waiter list), and
    cancelling the waiting task cancels the future, so cancel scopes work unchanged."""

    __slots__ = ("_fut", "frame", "value", "want_value")

    def __init__(
        self,
        on_progress: Callable[[ProgressParams], Any] | None,
        loop: asyncio.AbstractEventLoop,
        want_value: bool = False,
    ) -> None:
        self.result = None
        #: The caller wants the decoded result (a tool call), not the raw JSON.
        self.want_value = want_value
        #: The decoded result, decoded in the reader; or the whole large answer, for the
        #: caller to decode (``result`` is then :data:`_ANSWERED`).
        self.value: Any = UNDECODED
        self.frame: bytes | None = None
        self.error = None
        self.expired = False
        self.on_progress = on_progress
        # Not loop.create_future(): that is this same call behind a Python method.
        self._fut: asyncio.Future[None] = asyncio.Future(loop=loop)

    def wake(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def woken(self) -> bool:
        # A future cancelled with its waiter (a cancel scope) was not woken by an answer.
        fut = self._fut
        return fut.done() and not fut.cancelled()

    def wait(self) -> Awaitable[Any]:
        return self._fut

    def rearm(self) -> None:
        self._fut = self._fut.get_loop().create_future()


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop when anyio runs on its asyncio backend, else ``None`` (trio). anyio
    names the backend through its cancellation class (sniffio is not a dependency here)."""
    if anyio.get_cancelled_exc_class() is not asyncio.CancelledError:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _WorkerReader(_WorkerState):
    """The stdout reader and the asyncio fast path (a mixin of ``WorkerProcess``)."""

    #: Use the asyncio-only channel paths when anyio runs on asyncio (tests turn this off to
    #: exercise the generic ones, which trio would get).
    _asyncio_fast_path: ClassVar[bool] = True
    #: ``step_now`` of the loop's shortcuts, or ``None`` on the public path.
    _step_now: Callable[[asyncio.Future[Any]], None] | None = None
    #: Which path this worker's reader took: "shortcuts" or "public" (both through the
    #: reader callback on asyncio), or "generic" (a task, any anyio backend).
    loop_path: str = "generic"
    #: The host CPU this worker's frames may cost (made by :meth:`_attach_loop`).
    decode_budget: DecodeBudget
    #: Reading is paused until the budget refills (a timer resumes it).
    _budget_paused: bool = False

    @property
    def max_frame_values(self) -> int:
        """Frames with more structural bytes than this are refused undecoded (see
        :data:`DEFAULT_MAX_FRAME_VALUES`); the runtime sets it from the plugin's config."""
        cap = self._splitter.max_values
        return DEFAULT_MAX_FRAME_VALUES if cap is None else cap

    @max_frame_values.setter
    def max_frame_values(self, value: int) -> None:
        self._splitter.max_values = value

    def _attach_loop(self) -> None:
        """At the start of :meth:`run`: take the fast path if anyio runs on asyncio."""
        if self._splitter.max_values is None:
            self._splitter.max_values = DEFAULT_MAX_FRAME_VALUES
        self.decode_budget = DecodeBudget()
        self._loop = loop = _asyncio_loop() if self._asyncio_fast_path else None
        if loop is not None:
            fast = LoopFast(loop)
            self.loop_path = fast.path
            self._step_now = fast.step_now if fast.path == "shortcuts" else None
            if type(loop).time is not asyncio.BaseEventLoop.time:
                self._clock = loop.time

    async def _read_stdout(self) -> None:
        """The generic reader (any anyio backend): every frame handled in this task."""
        fd = self._rfd
        splitter = self._splitter
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, LARGE_READ_SIZE if splitter.pending else READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            t0 = _thread_time()
            self.last_activity = time.monotonic()
            slice_left = self.max_frame_values
            for frame in splitter.feed(data):
                if isinstance(frame, bytes):
                    # One read may bring many frames, each within the cap: the loop gets a
                    # turn after about one cap's worth of them (bytes bound the values).
                    slice_left -= len(frame)
                    if slice_left < 0:
                        slice_left = self.max_frame_values - len(frame)
                        t0 -= _thread_time()
                        await anyio.lowlevel.checkpoint()
                        t0 += _thread_time()
                if not self._on_frame(frame):
                    return
                if self._host_waiting:
                    t0 -= _thread_time()  # waiting for a slot is no work of ours
                    await self._admit_waiting()
                    t0 += _thread_time()
            wait = self.decode_budget.charge(_thread_time() - t0)
            if wait > 0:
                await anyio.sleep(wait)  # backpressure: this worker is not read meanwhile

    async def _serve_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio: :meth:`_on_readable` runs as a reader callback and resolves the callers'
        futures itself, so an answer costs no task wake-up of ours (the subprocess
        transport's stream took two loop passes per read). Whatever is not a response
        (hello, progress, a host request, a violation) is handed to this task, in order,
        and reading pauses until it is handled: progress callbacks, host requests and
        anyio calls need a task, and a call's progress must not overtake its answer."""
        fd = self._rfd
        try:
            self._resume_reading()
            while True:
                await self._reader_wake.wait()
                self._reader_wake = anyio.Event()
                if self._reader_error is not None:
                    raise self._reader_error
                backlog = self._backlog
                slice_left = self.max_frame_values
                while backlog:
                    frame, msg = backlog.popleft()
                    if isinstance(frame, bytes) and msg is None:
                        # As in _read_stdout: a turn for the loop every cap's worth.
                        slice_left -= len(frame)
                        if slice_left < 0:
                            slice_left = self.max_frame_values - len(frame)
                            await anyio.lowlevel.checkpoint()
                    t0 = _thread_time()
                    ok = self._on_frame(frame, msg)
                    self._charge(_thread_time() - t0)
                    if not ok:
                        return
                    if self._host_waiting:
                        # Reading stays paused meanwhile: backpressure on the worker.
                        await self._admit_waiting()
                if self._stdout_eof:
                    return
                self._resume_reading()
        finally:
            if self._reading:
                self._reading = False
                loop.remove_reader(fd)

    def _charge(self, seconds: float) -> None:
        """Charge host CPU to this worker's budget; past it, stop reading it (asyncio path)
        until the budget is back: a timer then wakes the pump, which resumes reading."""
        wait = self.decode_budget.charge(seconds)
        if wait <= 0 or self._budget_paused:
            return
        self._budget_paused = True
        if self._reading:
            self._reading = False
            assert self._loop is not None
            self._loop.remove_reader(self._rfd)
        assert self._loop is not None
        self._loop.call_later(wait, self._budget_refilled)

    def _budget_refilled(self) -> None:
        self._budget_paused = False
        self._reader_wake.set()

    def _resume_reading(self) -> None:
        assert self._loop is not None
        if self._budget_paused:
            return  # _budget_refilled wakes the pump, which comes back here
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._rfd, self._on_readable)

    def _pause_reading(self) -> None:
        """Stop the callback and wake the pump task (backlog, EOF, or a failure)."""
        if self._reading:
            self._reading = False
            assert self._loop is not None
            self._loop.remove_reader(self._rfd)
        self._reader_wake.set()

    def _spent(self, t0: float, small: bytes) -> float:
        """What this read cost: measured from ``t0``, or for a small read (``t0 < 0``)
        estimated from its structural bytes (see :data:`SMALL_READ`)."""
        if t0 >= 0:
            return _thread_time() - t0
        return structural_count(small) * VALUE_COST

    def _read_more(self) -> bytes:
        """A second read in one callback; empty when nothing is there yet, or at EOF or an
        error, which the next callback's read then meets and handles."""
        try:
            return os.read(self._rfd, LARGE_READ_SIZE)
        except OSError:  # BlockingIOError included
            return b""

    def _on_readable(self) -> None:
        splitter = self._splitter
        try:
            data = os.read(self._rfd, LARGE_READ_SIZE if splitter.pending else READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stdout_eof = True
            self._pause_reading()
            return
        # The read itself is not counted: it costs the same whatever the bytes say.
        t0 = -1.0 if len(data) <= SMALL_READ else _thread_time()
        self.last_activity = time.monotonic()
        try:
            frames = splitter.feed(data)
            if not frames and len(data) == READ_SIZE and splitter.pending:
                # A large frame's start filled the read: the rest of it is likely in the
                # pipe already (grown to 1 MiB), so it is read now, not a loop pass later.
                t0 -= _thread_time()
                more = self._read_more()
                t0 += _thread_time()
                if more:
                    frames = splitter.feed(more)
            pending = self._pending
            last = len(frames) - 1
            # A read may bring many frames (up to 1 MiB of them while a large one arrives),
            # each within the cap: past one cap's worth of bytes (which bound their values)
            # the rest go to the pump, which gives the loop a turn between such slices.
            slice_left = splitter.max_values or 0
            charged = False
            for i, frame in enumerate(frames):
                msg: Incoming | Batch | None = None
                if isinstance(frame, bytes):
                    slice_left -= len(frame)
                    if slice_left < 0 and i > 0:
                        self._backlog.extend((rest, None) for rest in frames[i:])
                        self._charge(self._spent(t0, data))
                        self._pause_reading()
                        return
                # Not OVERSIZE, not Refused: those go to the pump.
                if isinstance(frame, bytes) and self.reply_delay <= 0:
                    # Only the asyncio path reads here, so every call waits on a future.
                    call: Any = None
                    if len(frame) <= LARGE_FRAME:
                        ans = decode_answer(frame)
                        if ans is not None:
                            # The common case, decoded whole in one narrow pass.
                            call = pending.pop(ans.id, None)
                            if call is not None:
                                if call.want_value:
                                    call.value = ans.result
                                    call.result = _ANSWERED
                                else:  # a request that wants the JSON (initialize...): rare
                                    call.result = msgspec.Raw(_encoder.encode(ans.result))
                            else:
                                continue  # an answer to nothing we asked: ignored
                    else:
                        ident = large_answer_id(frame)
                        call = pending.get(ident) if ident is not None else None
                        if ident is not None and call is not None and call.want_value:
                            del pending[ident]
                            call.frame = frame  # its caller decodes it, in pieces
                            call.result = _ANSWERED
                        else:
                            call = None
                            ok = decode_success(frame)
                            if ok is not None:
                                call = pending.pop(ok.id, None)
                                if call is None:
                                    continue
                                call.result = ok.result
                    if call is not None:
                        assert isinstance(call, _FuturePending)
                        fut = call._fut
                        if not fut.done():  # call.wake()
                            fut.set_result(None)
                            if i == last and self._step_now is not None:
                                # Nothing follows in this read, so the caller goes on now
                                # rather than on the loop's next pass: it sends its next
                                # request from this read (see _loopfast). Charged first:
                                # the caller's step is not this worker's cost.
                                self._charge(self._spent(t0, data))
                                charged = True
                                self._step_now(fut)
                        continue
                    msg = decode_frame(frame)
                    if isinstance(msg, Response):
                        self._deliver(msg)
                        continue
                backlog = self._backlog
                backlog.append((frame, msg))
                backlog.extend((rest, None) for rest in frames[i + 1 :])
                self._charge(self._spent(t0, data))
                self._pause_reading()
                return
            if not charged:
                self._charge(self._spent(t0, data))
        except Exception as exc:
            # A bug here must end the worker's run as it would in a task, not be logged
            # by the loop and forgotten.
            self._reader_error = exc
            self._pause_reading()

    def _close_stdout_fd(self) -> None:
        if self._reading and self._loop is not None:
            # Never leave a callback registered on a number the next open() may reuse.
            self._reading = False
            self._loop.remove_reader(self._rfd)
        if self._rfd >= 0:
            fd, self._rfd = self._rfd, -1
            os.close(fd)
