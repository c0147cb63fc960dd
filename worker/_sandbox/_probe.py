"""What this machine can enforce, found out by trying, in a throw-away child process.

:func:`probe` (host side, for ``cordon doctor``) runs
``python -I -m cordon.worker._sandbox --probe``; the child (:func:`probe_here`) really
creates a Landlock ruleset, really unshares user+net namespaces and really installs a
(permissive) seccomp filter — all of which would be irreversible in the caller, hence the
child. Feature files like /proc/sys/kernel/seccomp/actions_avail only say what the kernel was
built with; containers and LSMs can still refuse, which only trying shows.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, Final

__all__ = ["probe", "probe_here"]

PROBE_TIMEOUT: Final = 20.0
CGROUP_ROOT: Final = "/sys/fs/cgroup"


def probe(timeout: float = PROBE_TIMEOUT) -> dict[str, object]:
    """Run the probe child and return its findings (``{"error": ...}`` if it failed)."""
    import json
    import subprocess

    cmd = [sys.executable, "-I", "-m", "cordon.worker._sandbox", "--probe"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, timeout=timeout, check=False, text=True
        )
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout} s"}
    except OSError as exc:
        return {"error": f"probe could not start: {exc}"}
    try:
        result = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"error": f"probe exited {done.returncode}", "stderr": tail}
    if not isinstance(result, dict):
        return {"error": "probe printed something that is not an object"}
    return result


def _err(exc: OSError) -> str:
    return exc.strerror or str(exc)


def cgroup_mounts() -> list[tuple[str, str, list[str]]]:
    """``(fstype, mount point, controllers)`` of every cgroup (v1) and cgroup2 mount, from
    /proc/self/mountinfo (controllers are empty for cgroup2: they are per group there).
    Raises OSError."""
    out: list[tuple[str, str, list[str]]] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point, fstype, super_opts = fields[4], rfields[0], rfields[2]
        ctrls = [o for o in super_opts.split(",") if o not in ("rw", "ro")]
        out.append((fstype, mount_point, ctrls if fstype == "cgroup" else []))
    return out


def _cgroups() -> dict[str, Any]:
    """cgroup layout from /proc/self/mountinfo, and whether we may create a child group
    (mkdir + rmdir of a uniquely named group: the only real test of writability)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    try:
        mounts = cgroup_mounts()
    except OSError as exc:
        return {"version": "unknown", "error": _err(exc)}
    for fstype, mount_point, ctrls in mounts:
        if fstype == "cgroup2":
            v2 = mount_point
        else:
            v1[",".join(ctrls)] = mount_point
    name = f"cordon-probe-{os.getpid()}"

    def writable(mount_point: str) -> bool:
        path = os.path.join(mount_point, name)
        try:
            os.mkdir(path)
        except OSError:
            return False
        try:
            os.rmdir(path)
        except OSError:
            pass
        return True

    version = "hybrid" if v1 and v2 else "v1" if v1 else "v2" if v2 else "none"
    return {
        "version": version,
        "v2_mount": v2,
        "v2_writable": writable(v2) if v2 else False,
        "v1": {ctrl: {"mount": mp, "writable": writable(mp)} for ctrl, mp in sorted(v1.items())},
    }


def probe_here() -> dict[str, object]:
    """Try every layer on *this* process. Irreversible: only for the probe child."""
    import platform  # here, not at the top: the worker imports this package on every start

    from . import _landlock, _namespaces, _seccomp
    from ._native import NR, native

    out: dict[str, object] = {
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "root": os.geteuid() == 0,
    }
    # Before unshare: in a fresh user namespace we would no longer be allowed to mkdir.
    out["cgroups"] = _cgroups()
    try:
        abi = _landlock.abi_version()
        # A real ruleset, then dropped unenforced: proves the LSM is active, not just built.
        attr = struct.pack("<QQQ", _landlock.fs_rights(abi), 0, 0)
        os.close(native().syscall(NR.LANDLOCK_CREATE_RULESET, attr, len(attr), 0))
        out["landlock"] = {"available": True, "abi": abi}
    except OSError as exc:
        out["landlock"] = {"available": False, "abi": 0, "error": _err(exc)}
    ns = _namespaces.unshare_network()
    out["user_namespaces"] = ns["userns"] == "applied"
    out["net_namespaces"] = ns["netns"] == "applied"
    out["ipc_namespaces"] = ns["ipcns"] == "applied"
    out["namespaces_detail"] = ns
    try:
        native().syscall(NR.PRCTL, 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        _seccomp.install(os.getpid())
        out["seccomp"] = {"available": True}
    except OSError as exc:
        out["seccomp"] = {"available": False, "error": _err(exc)}
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail", encoding="ascii") as f:
            out["seccomp_actions"] = f.read().split()
    except OSError:
        out["seccomp_actions"] = []
    return out
