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

    One ``unshare`` when the kernel allows all three. Otherwise each is tried on its own
    terms, so the report names exactly what is missing: user+net together (the network
    namespace is what the user namespace is for), then net alone (possible with
    CAP_SYS_ADMIN, i.e. as root when user namespaces are disabled: the network is still gone
    but the capability drop is not), and IPC alone.
    """
    nat = native()
    try:
        nat.syscall(
            NR.UNSHARE,
            CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC,
            name="unshare(NEWUSER|NEWNET|NEWIPC)",
        )
        return {"netns": "applied", "userns": "applied", "ipcns": "applied"}
    except OSError:
        pass
    report: dict[str, str] = {}
    try:
        nat.syscall(NR.UNSHARE, CLONE_NEWUSER | CLONE_NEWNET, name="unshare(NEWUSER|NEWNET)")
        report["userns"] = report["netns"] = "applied"
    except OSError as exc:
        report["userns"] = f"unavailable: {exc.strerror}"
        try:
            nat.syscall(NR.UNSHARE, CLONE_NEWNET, name="unshare(NEWNET)")
            report["netns"] = "applied"
        except OSError as net_exc:
            report["netns"] = f"unavailable: {net_exc.strerror}"
    try:
        nat.syscall(NR.UNSHARE, CLONE_NEWIPC, name="unshare(NEWIPC)")
        report["ipcns"] = "applied"
    except OSError as exc:
        report["ipcns"] = f"unavailable: {exc.strerror}"
    return report
