"""No network: a fresh, empty network namespace, entered through a user namespace.

``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` leaves the worker with only a loopback interface
that is down: every connect, even to 127.0.0.1, fails with ENETUNREACH. The user namespace
is what lets an unprivileged worker create the network namespace; for a worker running as
root it is also a real privilege drop: capabilities now only count inside the new (empty)
user namespace, so root loses CAP_DAC_OVERRIDE, CAP_KILL, CAP_SYS_ADMIN ... over the host.

No uid/gid map is written, on purpose. Without a map the worker keeps its kernel uid (files
it creates in scratch are owned as before, and the host-made scratch dir stays writable via
its owner bits) while no host uid is mapped inside, which is exactly what makes the
capabilities above useless against host files. Mapping 0→0 would hand root's DAC override
back for every root-owned file.
"""

from __future__ import annotations

from typing import Final

from ._native import NR, native

__all__ = ["unshare_network"]

CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWNET: Final = 0x40000000


def unshare_network() -> dict[str, str]:
    """Enter new user+net namespaces; report ``netns`` and ``userns``.

    Falls back to a bare ``CLONE_NEWNET`` (possible with CAP_SYS_ADMIN, i.e. as root when user
    namespaces are disabled): the network is still gone, but the capability drop is not, and
    the report says so.
    """
    nat = native()
    try:
        nat.syscall(NR.UNSHARE, CLONE_NEWUSER | CLONE_NEWNET, name="unshare(NEWUSER|NEWNET)")
        return {"netns": "applied", "userns": "applied"}
    except OSError as exc:
        user_err = exc
    try:
        nat.syscall(NR.UNSHARE, CLONE_NEWNET, name="unshare(NEWNET)")
    except OSError as exc:
        return {
            "netns": f"unavailable: {exc.strerror}",
            "userns": f"unavailable: {user_err.strerror}",
        }
    return {"netns": "applied", "userns": f"unavailable: {user_err.strerror}"}
