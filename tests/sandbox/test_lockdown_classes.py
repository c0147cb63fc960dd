"""The classes issue 11 closed, proven against the kernel alone: the lock-down child applies
every kernel layer (or one), with the audit hook off, and makes the raw syscall through a
libc handle it prepared before. Each refusal is the kernel's errno; each control runs the
same call unlocked on a file or process the test made, to show it would have gone through."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.test_lockdown import Box, kernel, run

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_NOATIME_FL = 0x80
PROT_RWX = 7


@pytest.fixture
def box(tmp_path: Path) -> Box:
    b = Box(
        root=tmp_path,
        scratch=tmp_path / "scratch",
        plugin_dir=tmp_path / "plugin",
        other_scratch=tmp_path / "other-scratch",
        outside=tmp_path / "outside.txt",
    )
    for d in (b.scratch, b.plugin_dir, b.other_scratch):
        d.mkdir()
    b.outside.write_text("outside secret\n")
    os.chmod(b.outside, 0o640)
    os.utime(b.outside, (1_000_000, 1_000_000))
    return b


def syscall(
    box: Box, nr: int, *args: Any, lock: str = "kernel", open: list[Any] | None = None, **kw: Any
) -> Any:
    """The raw syscall in a child: ``lock`` is "kernel" (every kernel layer), "seccomp"
    (that layer alone) or "none" (the control); ``kw`` goes to the lock-down's spec."""
    spec = {"nr": nr, "args": list(args), "open": open}
    if lock == "none":
        return run(box, "raw_syscall", spec, lock=False, raw=True, **kw)
    if lock == "seccomp":
        return run(box, "raw_syscall", spec, only=["seccomp"], raw=True, **kw)
    return kernel(box, "raw_syscall", spec, **kw)


def fingerprint(path: Path) -> tuple[int, int, int, int, list[str]]:
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, os.listxattr(path))


# -- file metadata ------------------------------------------------------------------------------

O_RDONLY, O_PATH = os.O_RDONLY, 0o10000000
METADATA = [
    pytest.param(90, ("{p}", 0o666), None, id="chmod"),
    pytest.param(91, ("@fd", 0o666), O_RDONLY, id="fchmod-read-only-fd"),
    pytest.param(268, (AT_FDCWD, "{p}", 0o666), None, id="fchmodat"),
    pytest.param(452, ("@fd", "", 0o666, AT_EMPTY_PATH), O_PATH, id="fchmodat2-o_path"),
    pytest.param(92, ("{p}", 0, 65534), None, id="chown"),
    pytest.param(93, ("@fd", 0, 65534), O_RDONLY, id="fchown"),
    pytest.param(94, ("{p}", 0, 65534), None, id="lchown"),
    pytest.param(260, ("@fd", "", 0, 65534, AT_EMPTY_PATH), O_PATH, id="fchownat-o_path"),
    pytest.param(132, ("{p}", 0), None, id="utime"),
    pytest.param(235, ("{p}", 0), None, id="utimes"),
    pytest.param(261, (AT_FDCWD, "{p}", 0), None, id="futimesat"),
    pytest.param(280, (AT_FDCWD, "{p}", 0, 0), None, id="utimensat"),
    pytest.param(280, ("@fd", 0, 0, 0), O_RDONLY, id="futimens-read-only-fd"),
    pytest.param(188, ("{p}", "user.cordon", "v", 1, 0), None, id="setxattr"),
    pytest.param(189, ("{p}", "user.cordon", "v", 1, 0), None, id="lsetxattr"),
    pytest.param(190, ("@fd", "user.cordon", "v", 1, 0), O_RDONLY, id="fsetxattr"),
    pytest.param(197, ("{p}", "user.old"), None, id="removexattr"),
    pytest.param(198, ("{p}", "user.old"), None, id="lremovexattr"),
    pytest.param(199, ("@fd", "user.old"), O_RDONLY, id="fremovexattr"),
]


def _args(args: tuple[Any, ...], path: Path) -> list[Any]:
    return [str(path) if a == "{p}" else a for a in args]


@pytest.mark.parametrize(("nr", "args", "open_flags"), METADATA)
def test_no_metadata_change_reaches_a_file_outside_scratch(
    box: Box, nr: int, args: tuple[Any, ...], open_flags: int | None
) -> None:
    if os.geteuid() != 0 and nr in (92, 93, 94, 260):
        pytest.skip("chown to another uid needs root for the control")
    os.setxattr(box.outside, "user.old", b"1")
    before = fingerprint(box.outside)
    opened: dict[str, Any] = {}
    if open_flags is not None:
        opened["open"] = [str(box.outside), open_flags]
    readable: dict[str, Any] = {"read_paths": [str(box.outside)]}
    out = syscall(box, nr, *_args(args, box.outside), **opened, **readable)
    assert out.errno == errno.EPERM
    alone = syscall(box, nr, *_args(args, box.outside), lock="seccomp", **opened)
    assert alone.errno == errno.EPERM
    assert fingerprint(box.outside) == before
    control = syscall(box, nr, *_args(args, box.outside), lock="none", **opened)
    assert control.result == {"ok": True, "value": 0}
    assert fingerprint(box.outside) != before


@pytest.mark.parametrize(
    ("nr", "args"),
    [
        pytest.param(463, (AT_FDCWD, "{p}", 0, "user.cordon", "buf:24", 24), id="setxattrat"),
        pytest.param(466, (AT_FDCWD, "{p}", 0, "user.old"), id="removexattrat"),
        pytest.param(469, (AT_FDCWD, "{p}", "buf:32", 32, 0), id="file_setattr"),
    ],
)
def test_the_newest_metadata_calls_are_refused_before_the_kernel_reads_them(
    box: Box, nr: int, args: tuple[Any, ...]
) -> None:
    # Zeroed structs: unlocked the kernel answers for itself (EINVAL/EFAULT or success on
    # the test's own file), locked seccomp answers EPERM before any of that.
    control = syscall(box, nr, *_args(args, box.outside), lock="none")
    assert control.result.get("errno") != errno.EPERM
    assert syscall(box, nr, *_args(args, box.outside)).errno == errno.EPERM


def test_metadata_calls_are_refused_in_scratch_too_while_shutil_still_copies_contents(
    box: Box,
) -> None:
    """The documented price of doing this in BPF: it cannot tell scratch from the host."""
    (box.scratch / "own.txt").write_text("x")
    assert syscall(box, 90, str(box.scratch / "own.txt"), 0o600).errno == errno.EPERM
    out = run(box, "shutil_copy", {"scratch": str(box.scratch)})
    assert out.result["value"]["copyfile"] == "ok"
    # shutil's mode and time copies take EPERM as "not copied" (the worker's compat shim).
    assert out.result["value"]["copy"] == {"ok": True, "value": str(box.scratch / "copy.txt")}
    assert out.result["value"]["copytree"] == {"ok": True, "value": str(box.scratch / "tree2")}
    assert (box.scratch / "copy.txt").read_text() == "data"
    assert (box.scratch / "tree2" / "src.txt").read_text() == "data"


def test_truncating_a_host_file_by_path_fails_with_eacces_from_landlock(box: Box) -> None:
    # truncate(2) is not seccomp's: Landlock's TRUNCATE right (ABI 3) governs it.
    out = run(box, "raw_syscall", {"nr": 76, "args": [str(box.outside), 0]}, only=["landlock-fs"],
              raw=True)  # fmt: skip
    assert out.errno == errno.EACCES
    assert box.outside.read_text() == "outside secret\n"
    control = syscall(box, 76, str(box.outside), 0, lock="none")
    assert control.result == {"ok": True, "value": 0}
    assert box.outside.read_text() == ""


def test_chattr_through_ioctl_on_a_read_only_fd_answers_enotty(box: Box) -> None:
    with open(box.outside, "rb") as f:
        buf = fcntl.ioctl(f.fileno(), FS_IOC_GETFLAGS, struct.pack("<q", 0))
    flags = struct.unpack("<q", buf)[0]
    args = ("@fd", FS_IOC_SETFLAGS, f"i32:{flags | FS_NOATIME_FL}")
    opened: dict[str, Any] = {
        "open": [str(box.outside), os.O_RDONLY],
        "read_paths": [str(box.outside)],
    }
    assert syscall(box, 16, *args, **opened).errno == errno.ENOTTY
    assert syscall(box, 16, *args, lock="seccomp", **opened).errno == errno.ENOTTY
    with open(box.outside, "rb") as f:
        unchanged = fcntl.ioctl(f.fileno(), FS_IOC_GETFLAGS, struct.pack("<q", 0))
    assert struct.unpack("<q", unchanged)[0] == flags
    control = syscall(box, 16, *args, lock="none", open=[str(box.outside), os.O_RDONLY])
    if control.result.get("errno") == errno.EOPNOTSUPP:
        pytest.skip("this filesystem has no inode flags: the control cannot show the change")
    assert control.result == {"ok": True, "value": 0}


# -- watching and listing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nr", "args"),
    [
        pytest.param(294, (0,), id="inotify_init1"),
        pytest.param(253, (), id="inotify_init"),
        pytest.param(300, (0, 0), id="fanotify_init"),
    ],
)
def test_filesystem_watches_cannot_be_created(box: Box, nr: int, args: tuple[Any, ...]) -> None:
    if nr == 300 and os.geteuid() != 0:
        pytest.skip("fanotify_init needs CAP_SYS_ADMIN for the control")
    assert syscall(box, nr, *args, lock="none").result["ok"] is True
    assert syscall(box, nr, *args).errno == errno.EPERM


@pytest.mark.parametrize(
    ("nr", "args"),
    [
        # struct mnt_id_req {u32 size; u32 spare; u64 mnt_id; u64 param; u64 mnt_ns_id}:
        # size 24 (VER0), mnt_id LSMT_ROOT (0xffffffffffffffff): the host's whole mount tree.
        pytest.param(458, ("@req", "buf:512", 64, 0), id="listmount"),
        pytest.param(457, ("@req", "buf:4096", 4096, 0), id="statmount"),
    ],
)
def test_the_hosts_mounts_cannot_be_listed(box: Box, nr: int, args: tuple[Any, ...]) -> None:
    req = struct.pack("<IIQQ", 24, 0, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF if nr == 457 else 0)
    spec_args = [f"hex:{req.hex()}" if a == "@req" else a for a in args]
    control = syscall(box, nr, *spec_args, lock="none")
    assert control.result.get("errno") != errno.EPERM
    assert syscall(box, nr, *spec_args).errno == errno.EPERM


# -- W^X -----------------------------------------------------------------------------------


def test_an_rwx_mapping_is_refused_but_rw_and_rx_are_not(box: Box) -> None:
    assert run(box, "mmap_rwx", {"prot": PROT_RWX}, lock=False).result["ok"] is True
    assert run(box, "mmap_rwx", {"prot": PROT_RWX}).errno == errno.EPERM
    assert run(box, "mmap_rwx", {"prot": PROT_RWX}, only=["seccomp"]).errno == errno.EPERM
    assert run(box, "mmap_rwx", {"prot": 3}).result == {"ok": True, "value": 4096}
    assert run(box, "mmap_rwx", {"prot": 5}).result == {"ok": True, "value": 4096}


def test_making_a_writable_page_executable_too_is_refused(box: Box) -> None:
    assert run(box, "mprotect_rwx", lock=False, raw=True).result == {"ok": True, "value": 0}
    assert kernel(box, "mprotect_rwx").errno == errno.EPERM


def test_numpy_computes_after_the_full_lock_down(box: Box) -> None:
    out = run(box, "numpy_matmul")
    assert out.result["ok"] is True, out.result
    assert out.result["value"] == pytest.approx(
        sum(float(i * 100 + k) * float(k * 100 + i) for i in range(100) for k in range(100))
    )


def test_a_thread_can_still_query_its_own_attributes(box: Box) -> None:
    assert run(box, "thread_attr").result == {"ok": True, "value": 0}


# -- scheduling: the parent is a stranger -----------------------------------------------------


@pytest.fixture
def stranger() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "120"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("nr", "args"),
    [
        pytest.param(141, (0, "{pid}", 19), id="setpriority"),
        pytest.param(144, ("{pid}", 5, "buf:8"), id="sched_setscheduler-idle"),
        pytest.param(203, ("{pid}", 8, "i32:1"), id="sched_setaffinity"),
        pytest.param(251, (1, "{pid}", 3 << 13), id="ioprio_set-idle"),
    ],
)
def test_the_kernel_alone_refuses_to_reschedule_a_stranger(
    box: Box, stranger: int, nr: int, args: tuple[Any, ...]
) -> None:
    real = [stranger if a == "{pid}" else a for a in args]
    assert syscall(box, nr, *real, lock="seccomp").errno == errno.EPERM
    assert syscall(box, nr, *real).errno == errno.EPERM
    assert os.getpriority(os.PRIO_PROCESS, stranger) == 0
    assert os.sched_getscheduler(stranger) == os.SCHED_OTHER
    control = syscall(box, nr, *real, lock="none")
    assert control.result == {"ok": True, "value": 0}


# -- leases and dnotify ---------------------------------------------------------------------

F_SETLEASE, F_NOTIFY, F_RDLCK, DN_CREATE = 1024, 1026, 0, 0x4


@pytest.mark.parametrize(
    ("cmd", "arg", "target"),
    [
        pytest.param(F_SETLEASE, F_RDLCK, "outside", id="read-lease-on-a-host-file"),
        pytest.param(F_NOTIFY, DN_CREATE, "plugin_dir", id="dnotify-on-a-readable-dir"),
    ],
)
def test_leases_and_dnotify_are_refused(box: Box, cmd: int, arg: int, target: str) -> None:
    path = str(getattr(box, target))
    opened = [path, os.O_RDONLY]
    control = syscall(box, 72, "@fd", cmd, arg, lock="none", open=opened)
    assert control.result == {"ok": True, "value": 0}
    out = syscall(box, 72, "@fd", cmd, arg, open=opened, read_paths=[path])
    assert out.errno == errno.EPERM


# -- a kernel without IPC namespaces -----------------------------------------------------------

CLONE_NEWIPC = 0x08000000


def test_strict_refuses_to_start_when_only_the_ipc_namespace_is_missing(box: Box) -> None:
    out = run(box, "nothing", raw=True, deny_first=[], deny_unshare_flags=CLONE_NEWIPC)
    assert out.returncode == 3
    assert out.report["lockdown_error"] == "SandboxUnavailable"
    assert out.report["fields"].endswith(
        "unavailable layer(s): ipcns: unshare(NEWIPC): Operation not permitted"
    )


def test_best_effort_without_ipc_namespaces_still_applies_every_other_layer(box: Box) -> None:
    out = run(box, "nothing", raw=True, deny_first=[], deny_unshare_flags=CLONE_NEWIPC,
              mode="best-effort")  # fmt: skip
    assert out.report.pop("ipcns") == "unavailable: unshare(NEWIPC): Operation not permitted"
    assert set(out.report.values()) == {"applied"}


# -- doctor -----------------------------------------------------------------------------------


def test_doctor_lists_the_ipc_namespace_and_strict_counts_it_as_required(tmp_path: Path) -> None:
    from cordon.runtime._cli._cmd_admin import _predicted_missing
    from cordon.worker._sandbox import LAYERS

    assert "ipcns" in LAYERS
    probe = {
        "landlock": {"available": True, "abi": 7},
        "seccomp": {"available": True},
        "user_namespaces": True,
        "net_namespaces": True,
        "ipc_namespaces": False,
    }
    assert _predicted_missing(probe) == ["ipcns"]
    assert _predicted_missing({**probe, "ipc_namespaces": True}) == []
    cordon = Path(sys.executable).with_name("cordon")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    text = subprocess.run(
        [str(cordon), "doctor"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = dict(line.split(None, 1) for line in text.splitlines() if line[:1] != " ")
    assert lines["ipc_namespaces"] == "True"
    assert lines["layers"].split(", ") == list(LAYERS)
