"""No network and no shared IPC: fresh network and IPC namespaces, entered through a user
namespace.

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

The IPC namespace gives the worker its own, empty SysV IPC tables (shared memory, message
queues, semaphores) and its own POSIX message-queue filesystem: nothing it creates is visible
to the host or a sibling plugin (no covert channel, nothing to exhaust the host's
``kernel.shm*``/``msg*`` limits with), nothing of the host's is visible to it, and the kernel
destroys the namespace, with every segment in it, when the worker's last thread exits.
"""

from __future__ import annotations

from typing import Final

from ._native import NR, native

__all__ = ["unshare_network"]

CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NEWIPC: Final = 0x08000000


def unshare_network() -> dict[str, str]:
    """Enter new user+net+IPC namespaces; report ``netns``, ``userns`` and ``ipcns``.

    Falls back to ``CLONE_NEWNET | CLONE_NEWIPC`` without the user namespace (possible with
    CAP_SYS_ADMIN, i.e. as root when user namespaces are disabled): network and IPC are still
    private, but the capability drop is not, and the report says so.
    """
    nat = native()
    try:
        nat.syscall(
            NR.UNSHARE,
            CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC,
            name="unshare(NEWUSER|NEWNET|NEWIPC)",
        )
        return {"netns": "applied", "userns": "applied", "ipcns": "applied"}
    except OSError as exc:
        user_err = exc
    report = {"userns": f"unavailable: {user_err.strerror}"}
    for flag, layer, name in (
        (CLONE_NEWNET, "netns", "unshare(NEWNET)"),
        (CLONE_NEWIPC, "ipcns", "unshare(NEWIPC)"),
    ):
        try:
            nat.syscall(NR.UNSHARE, flag, name=name)
            report[layer] = "applied"
        except OSError as exc:
            report[layer] = f"unavailable: {exc.strerror}"
    return report
