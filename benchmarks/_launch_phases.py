"""The zygote, timed: ``python -I benchmarks/_launch_phases.py FD NAME`` is
``cordon.worker._zygote`` with every step of each forked worker's launch timed
(``bench_launch.py --phases`` runs it).

Each child records, at the start of each step of :data:`cordon.worker._launch.STEPS` (and
right after the fork), the monotonic clock (the host's ``time.perf_counter_ns`` reads the same
one), its own CPU time and its minor page faults, plus the lock-down's per-layer wall times,
and its server's first marks (loop running, ``activate`` read, ``invoke`` read), and writes
them as JSON to the file ``NAME`` in its scratch dir (the one place it may write) as it reads
the first call. Measurement only: nothing here is part of cordon.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from cordon.worker import _launch, _server, _zygote
from cordon.worker._sandbox import _lockdown

_marks: list[tuple[str, int, int, int]] = []
_layers: dict[str, float] = {}


def _mark(name: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _marks.append((name, time.perf_counter_ns(), time.process_time_ns(), usage.ru_minflt))


def _timed(step: Callable[[_launch.Launch], None]) -> Callable[[_launch.Launch], None]:
    def run(st: _launch.Launch) -> None:
        _mark(step.__name__)
        if step.__name__ == "serve" and st.init is not None:
            global _path
            _path = os.path.join(st.init.scratch_dir, _file)
        step(st)

    run.__name__ = step.__name__
    return run


_path = ""
_serve = _server.Server.serve
_handle = _server.Server._handle_request
_invoke = _server.Server._invoke


async def _serve_marked(self: _server.Server, initial_frames: list[Any]) -> None:
    _mark("loop")
    await _serve(self, initial_frames)


def _handle_marked(self: _server.Server, req: Any, **kwargs: Any) -> Any:
    if req.method == "activate" and not any(m[0] == "activate" for m in _marks):
        _mark("activate")
    return _handle(self, req, **kwargs)


def _invoke_marked(self: _server.Server, *args: Any) -> Any:
    """Marks the first call, and writes the marks (the call then waits for the write: it
    is the last phase timed)."""
    if not any(m[0] == "invoke" for m in _marks):
        _mark("invoke")
        if _path:
            with open(_path, "w") as f:
                json.dump({"marks": _marks, "layers": _layers}, f)
    return _invoke(self, *args)


_lock_down = _lockdown.lock_down


def _lock_down_timed(**kwargs: Any) -> dict[str, str]:
    return _lock_down(**kwargs, timings=_layers)


_clone = _zygote.clone_parent


def _clone_marked(tid_addr: int) -> int:
    before = time.perf_counter_ns()
    pid = _clone(tid_addr)
    if pid == 0:
        _marks.clear()
        _marks.append(("clone", before, 0, 0))
        _mark("child")
    return pid


_file = ""


def main() -> None:
    global _file
    _file = sys.argv.pop(2)  # the zygote itself reads only its socket's fd
    _launch.STEPS = tuple(_timed(step) for step in _launch.STEPS)  # type: ignore[misc]
    _lockdown.lock_down = _lock_down_timed
    _server.Server.serve = _serve_marked  # type: ignore[method-assign]
    _server.Server._handle_request = _handle_marked  # type: ignore[method-assign]
    _server.Server._invoke = _invoke_marked  # type: ignore[method-assign,assignment]
    _zygote.clone_parent = _clone_marked
    _zygote.main()


if __name__ == "__main__":
    main()
