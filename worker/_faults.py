"""``$/fault``: real misbehaviour on request, for :mod:`cordon.testing`.

The server routes ``$/fault`` here only when the host set ``InitializeParams.faults`` — the
test harness does, production never does — so a production worker has no such door: there the
method is :class:`MethodNotFound` like any other unknown one.

Each fault is the real thing, not a simulation of its symptoms: ``memory`` allocates until
the kernel's RLIMIT_AS refuses, ``cpu`` burns CPU time the kernel counts against RLIMIT_CPU,
``corrupt`` writes bytes that are not a frame onto the protocol channel.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Final

import msgspec

from cordon.protocol import CordonError, InvalidParams, encode_error, encode_result, error_to_wire
from cordon.protocol._methods import FaultParams

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["run_fault"]

#: Allocation step while exhausting memory: small enough to land close to the limit.
CHUNK: Final = 1024 * 1024
#: Exit status of a worker that died of MemoryError (what an unhandled exception gives).
EXIT_MEMORY: Final = 1

_decoder = msgspec.json.Decoder(FaultParams)


def _exhaust_memory() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        raise InvalidParams("no memory limit to exhaust (memory is unlimited)", field="kind")
    hoard: list[bytearray] = []
    try:
        while True:
            hoard.append(bytearray(CHUNK))
    except MemoryError as exc:
        hoard.clear()
        # Die the way an unhandled MemoryError outside any handler ends a process: the
        # traceback on stderr (which the host reads), then exit status 1.
        sys.stderr.write("".join(traceback.format_exception(exc)))
        sys.stderr.flush()
        os._exit(EXIT_MEMORY)


def _burn_cpu(seconds: float) -> float:
    """Spin until this process has used ``seconds`` more CPU time; return what it used."""
    start = time.process_time()
    x = 0
    while time.process_time() - start < seconds:
        for _ in range(10000):
            x += 1
    return time.process_time() - start


async def run_fault(server: Server, ident: Any, raw: msgspec.Raw) -> bytes | None:
    try:
        try:
            params = _decoder.decode(raw or b"{}")
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"invalid fault params: {exc}", field=None) from None
        if params.kind == "memory":
            _exhaust_memory()
            return None  # pragma: no cover - _exhaust_memory does not return
        if params.kind == "cpu":
            loop = asyncio.get_running_loop()
            done: asyncio.Future[float] = loop.create_future()

            def spin() -> None:
                used = _burn_cpu(params.seconds)
                loop.call_soon_threadsafe(done.set_result, used)

            # A thread, so the loop stays responsive (pings, other calls) while CPU burns.
            threading.Thread(target=spin, name="cordon-fault-cpu", daemon=True).start()
            return encode_result(ident, {"cpu_seconds": await done})
        # corrupt: bytes that are not a frame, straight onto the channel.
        server.send(b"\x00cordon fault: this is not a frame\n")
        return encode_result(ident, "corrupted")
    except CordonError as exc:
        return encode_error(ident, error_to_wire(exc))
