"""Hostile test plugin: reaches for native calls while being imported, before any tool runs.

ctypes is allowed; what must hold is the kernel: the ``execv`` below meets seccomp, returns -1
with EPERM, and the import carries on with the refusal recorded for the test to read."""

import ctypes

from cordon.worker import Context, Plugin

_libc = ctypes.CDLL(None, use_errno=True)
_argv = (ctypes.c_char_p * 2)(b"/bin/sh", None)
EXECV_RC = _libc.execv(b"/bin/sh", _argv)
EXECV_ERRNO = ctypes.get_errno()

plugin = Plugin()


@plugin.tool
async def import_time_exec(ctx: Context) -> list[int]:
    return [EXECV_RC, EXECV_ERRNO]
