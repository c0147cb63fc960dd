"""The worker's kernel lock-down: resource limits, namespaces, Landlock, seccomp, audit hook.

Called by the worker's launch sequence while it is still single-threaded, after the
JSON-RPC channel is set up and before any plugin code is imported::

    report = apply_limits(init.limits)
    report |= lock_down(plugin_id=..., policy=..., limits=..., plugin_dir=..., scratch_dir=...,
                        read_paths=[...], keep_fds=[0, 1, 2, rfd, wfd])

The report maps each layer (see :data:`LAYERS`) to ``"applied"``, ``"unavailable: <why>"``
or ``"off"``. :func:`probe` says what this machine supports, for ``cordon doctor``.
Linux x86_64 only; stdlib only (``ctypes`` for the raw syscalls). Plugins may use ctypes
too: every guarantee is the kernel's, which native code meets exactly as Python does.
"""

from __future__ import annotations

from cordon.protocol import Limits, SandboxPolicy

from . import _limits, _lockdown
from ._lockdown import LAYERS
from ._probe import probe

__all__ = ["LAYERS", "apply_limits", "lock_down", "probe"]


def apply_limits(limits: Limits) -> dict[str, str]:
    """``setrlimit`` AS, CPU (hard = soft + 1: SIGXCPU, then SIGKILL), NOFILE, FSIZE, NPROC
    (only if > 0; see ``_limits``) and CORE=0. Returns ``{"rlimits": status}``."""
    return _limits.apply_limits(limits)


def lock_down(
    *,
    plugin_id: str,
    policy: SandboxPolicy,
    limits: Limits,
    plugin_dir: str,
    scratch_dir: str,
    read_paths: list[str],
    keep_fds: list[int],
) -> dict[str, str]:
    """Apply every layer in order; return ``{layer: status}``.

    ``policy.mode``: ``"strict"`` raises :class:`cordon.protocol.SandboxUnavailable` naming
    every unavailable layer (after applying all the others); ``"best-effort"`` applies what
    it can and reports the rest; ``"off"`` applies rlimits only, every other layer ``"off"``.

    Must run single-threaded (Landlock and ``unshare(CLONE_NEWUSER)`` are per-thread /
    single-thread only). Read access is granted to the Python installation, ``sys.path``,
    shared-library dirs, a few devices, ``plugin_dir``, ``read_paths`` and
    ``policy.fs_read``; write access to ``scratch_dir`` and ``policy.fs_write`` only.
    """
    return _lockdown.lock_down(
        plugin_id=plugin_id,
        policy=policy,
        limits=limits,
        plugin_dir=plugin_dir,
        scratch_dir=scratch_dir,
        read_paths=read_paths,
        keep_fds=keep_fds,
    )
