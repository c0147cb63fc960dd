"""Test plugin: what ordinary numeric code does, which the sandbox must let through."""

from __future__ import annotations

import os
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
async def matmul(ctx: Context, n: int) -> dict[str, Any]:
    """A matrix product big enough for OpenBLAS to split across its threads."""
    import numpy as np

    a = np.arange(n * n, dtype=np.float64).reshape(n, n) / (n * n)
    b = a @ a.T
    return {"trace": float(np.trace(b)), "sum": float(b.sum()), "numpy": np.__version__}


@plugin.tool
async def ctypes_callback(ctx: Context) -> list[int]:
    """libc's qsort calling back into Python: a libffi closure (needs executable memory)."""
    import ctypes

    libc = ctypes.CDLL(None)
    cmp_t = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)
    )
    arr = (ctypes.c_int * 5)(5, 3, 1, 4, 2)
    libc.qsort(arr, 5, ctypes.sizeof(ctypes.c_int), cmp_t(lambda x, y: x[0] - y[0]))
    return list(arr)


@plugin.tool
async def own_scheduling(ctx: Context) -> dict[str, Any]:
    """A process may still look at and adjust itself."""
    me = os.getpid()
    os.setpriority(os.PRIO_PROCESS, 0, 5)
    os.sched_setaffinity(0, os.sched_getaffinity(me))
    return {
        "nice": os.getpriority(os.PRIO_PROCESS, me),
        "affinity": sorted(os.sched_getaffinity(0)),
        "policy": os.sched_getscheduler(me),
    }
