"""Each class the seccomp filter and the namespaces close, tried through a real strict
worker with raw syscalls made *through ctypes* (allowed: no guarantee rests on hiding it).
Every attempt comes back as the kernel's own errno; where running it is harmless, a control
run in an unsandboxed worker shows the same call would have gone through."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import PluginError, PluginHandle, Runtime

pytestmark = pytest.mark.anyio

HOSTILE = Path(__file__).resolve().parent / "hostile"
#: A worker call never needs long; the deadline only guards against a hang.
CALL_DEADLINE = 30
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
O_PATH = 0o10000000
IPC_RMID = 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(tmp_path: Path, sandbox: str) -> dict[str, Any]:
    return {
        "runtime": {"state-dir": str(tmp_path / "state")},
        "defaults": {"call-timeout": "20 s", "max-call-timeout": "60 s", "sandbox": sandbox},
    }


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(_config(tmp_path, "strict")) as runtime:
        yield runtime


@pytest.fixture
async def escaper(rt: Runtime) -> PluginHandle:
    return await rt.load(HOSTILE / "escaper")


@pytest.fixture
async def unsandboxed(tmp_path: Path) -> AsyncIterator[PluginHandle]:
    """The same plugin with ``sandbox = "off"``: the control runs."""
    async with Runtime(_config(tmp_path / "off", "off")) as runtime:
        yield await runtime.load(HOSTILE / "escaper")


@pytest.fixture
def stranger() -> Iterator[int]:
    """An unrelated process of the same user, for the scheduling attempts to aim at."""
    proc = subprocess.Popen(["sleep", "120"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def syscall(plugin: PluginHandle, nr: int, *args: Any, **kw: Any) -> int:
    with anyio.fail_after(CALL_DEADLINE):
        return int(await plugin.call("syscall", {"nr": nr, "args": list(args), **kw}))


async def refused_errno(plugin: PluginHandle, nr: int, *args: Any, **kw: Any) -> int:
    with pytest.raises(PluginError) as info, anyio.fail_after(CALL_DEADLINE):
        await plugin.call("syscall", {"nr": nr, "args": list(args), **kw})
    message = str(info.value.exc_message)
    assert message.startswith("[Errno "), info.value
    return int(message.split("]")[0].removeprefix("[Errno "))


# -- every denied class, through ctypes -------------------------------------------------------

CLASSES = [
    pytest.param(41, (2, 1, 0), id="socket-inet"),
    pytest.param(41, (1, 1, 0), id="socket-unix"),
    pytest.param(59, ("/bin/sh", 0, 0), id="execve"),
    pytest.param(57, (), id="fork"),
    pytest.param(56, (17, 0, 0, 0, 0), id="clone-process"),
    pytest.param(101, (0x4206, 1, 0, 0), id="ptrace-seize-init"),
    pytest.param(165, ("none", "/tmp", "tmpfs", 0, 0), id="mount"),
    pytest.param(272, (0x40000000,), id="unshare-net"),
    pytest.param(308, (0, 0), id="setns"),
    pytest.param(458, ("buf:32", "buf:64", 8, 0), id="listmount"),
    pytest.param(457, ("buf:32", "buf:512", 512, 0), id="statmount"),
    pytest.param(294, (0,), id="inotify_init1"),
    pytest.param(300, (0, 0), id="fanotify_init"),
    pytest.param(90, ("/etc/passwd", 0o666), id="chmod-etc-passwd"),
    pytest.param(92, ("/etc/passwd", 0, 0), id="chown-etc-passwd"),
    pytest.param(280, (AT_FDCWD, "/etc/passwd", 0, 0), id="utimensat-etc-passwd"),
    pytest.param(188, ("/etc/passwd", "user.x", "v", 1, 0), id="setxattr-etc-passwd"),
    pytest.param(141, (0, 1, 19), id="setpriority-pid-1"),
    pytest.param(141, (2, 0, 19), id="setpriority-whole-user"),
    pytest.param(140, (0, 1), id="getpriority-pid-1"),
    pytest.param(203, (1, 8, "buf:8"), id="sched_setaffinity-pid-1"),
    pytest.param(251, (1, 1, 0), id="ioprio_set-pid-1"),
    pytest.param(62, (1, 0), id="kill-pid-1"),
    pytest.param(62, (-1, 0), id="kill-everyone"),
    pytest.param(302, (1, 7, 0, "buf:16"), id="prlimit64-read-pid-1"),
    pytest.param(9, (0, 4096, 7, 0x22, -1, 0), id="mmap-rwx"),
    pytest.param(321, (0, 0, 0), id="bpf"),
    pytest.param(425, (1, "buf:120"), id="io_uring_setup"),
    pytest.param(250, (0, 0), id="keyctl"),
    pytest.param(298, ("buf:128", 0, -1, -1, 0), id="perf_event_open"),
    pytest.param(162, (), id="sync"),
    pytest.param(317, (1, 0, "buf:16"), id="seccomp"),
    pytest.param(160, (7, "buf:16"), id="setrlimit"),
    pytest.param(200, (1, 0), id="tkill-pid-1"),
    pytest.param(154, (1, "buf:16", 16), id="modify_ldt"),
]


def test_every_denied_class_is_tried_through_ctypes() -> None:
    from cordon.worker._sandbox._syscalls import DENIED_CLASSES

    tried = {p.values[0] for p in CLASSES}
    untried = {name for name, table in DENIED_CLASSES.items() if not set(table.values()) & tried}
    assert untried == set()


@pytest.mark.parametrize(("nr", "args"), CLASSES)
async def test_a_raw_syscall_through_ctypes_meets_seccomp_with_eperm(
    escaper: PluginHandle, nr: int, args: tuple[Any, ...]
) -> None:
    assert await refused_errno(escaper, nr, *args) == errno.EPERM


async def test_opening_a_host_file_for_writing_through_ctypes_meets_landlock(
    escaper: PluginHandle, tmp_path: Path
) -> None:
    target = tmp_path / "host-file"
    target.write_text("host")
    # openat(AT_FDCWD, path, O_WRONLY | O_TRUNC)
    assert await refused_errno(escaper, 257, AT_FDCWD, str(target), 0o1001) == errno.EACCES
    assert target.read_text() == "host"


# -- file metadata ------------------------------------------------------------------------------


def _fingerprint(path: Path) -> tuple[int, int, int, int, list[str]]:
    st = path.stat()
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, os.listxattr(path))


METADATA = [
    pytest.param(90, ("{path}", 0o666), {}, id="chmod"),
    pytest.param(268, (AT_FDCWD, "{path}", 0o666), {}, id="fchmodat"),
    pytest.param(452, (AT_FDCWD, "{path}", 0o666, 0), {}, id="fchmodat2"),
    pytest.param(
        452, ("@fd", "", 0o666, AT_EMPTY_PATH), {"open_flags": O_PATH}, id="fchmodat2-o_path"
    ),
    pytest.param(92, ("{path}", "{uid}", "{gid}"), {}, id="chown"),
    pytest.param(94, ("{path}", "{uid}", "{gid}"), {}, id="lchown"),
    pytest.param(
        260,
        ("@fd", "", "{uid}", "{gid}", AT_EMPTY_PATH),
        {"open_flags": O_PATH},
        id="fchownat-o_path",
    ),
    pytest.param(132, ("{path}", 0), {}, id="utime"),
    pytest.param(235, ("{path}", 0), {}, id="utimes"),
    pytest.param(261, (AT_FDCWD, "{path}", 0), {}, id="futimesat"),
    pytest.param(280, (AT_FDCWD, "{path}", 0, 0), {}, id="utimensat"),
    pytest.param(188, ("{path}", "user.cordon", "v", 1, 0), {}, id="setxattr"),
    pytest.param(189, ("{path}", "user.cordon", "v", 1, 0), {}, id="lsetxattr"),
]


@pytest.mark.parametrize("db", ["storage.db", "audit.db"])
@pytest.mark.parametrize(("nr", "args", "kw"), METADATA)
async def test_the_hosts_own_databases_keep_their_metadata(
    rt: Runtime,
    escaper: PluginHandle,
    tmp_path: Path,
    db: str,
    nr: int,
    args: tuple[Any, ...],
    kw: dict[str, Any],
) -> None:
    path = tmp_path / "state" / db
    assert path.exists()
    before = _fingerprint(path)
    values = {"path": str(path), "uid": os.getuid(), "gid": os.getgid()}
    real = [values[a[1:-1]] if isinstance(a, str) and a[:1] == "{" else a for a in args]
    if "open_flags" in kw:
        kw = {**kw, "open_path": str(path)}
    assert await refused_errno(escaper, nr, *real, **kw) == errno.EPERM
    assert _fingerprint(path) == before


@pytest.mark.parametrize(("nr", "args", "kw"), METADATA)
async def test_the_same_metadata_change_works_unsandboxed_as_a_control(
    unsandboxed: PluginHandle,
    tmp_path: Path,
    nr: int,
    args: tuple[Any, ...],
    kw: dict[str, Any],
) -> None:
    path = tmp_path / "ours.txt"
    path.write_text("made by the test")
    os.chmod(path, 0o600)
    os.utime(path, (1_000_000, 1_000_000))
    before = _fingerprint(path)
    values = {"path": str(path), "uid": os.getuid(), "gid": os.getgid()}
    real = [values[a[1:-1]] if isinstance(a, str) and a[:1] == "{" else a for a in args]
    if "open_flags" in kw:
        kw = {**kw, "open_path": str(path)}
    assert await syscall(unsandboxed, nr, *real, **kw) == 0
    after = _fingerprint(path)
    if nr in (92, 94, 260):  # chown to its own owner: permitted, visibly nothing to change
        assert after == before
    else:
        assert after != before


async def test_fchmod_of_a_read_only_fd_of_a_host_file_is_refused(
    escaper: PluginHandle,
) -> None:
    # A file the worker may read (its interpreter's stdlib): an fd, but not the right to chmod.
    path = os.path.realpath(os.__file__)
    before = os.stat(path).st_mode
    assert await refused_errno(escaper, 91, "@fd", 0o777, open_path=path) == errno.EPERM
    assert os.stat(path).st_mode == before


# -- scheduling: only itself ------------------------------------------------------------------


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


async def test_a_stranger_process_cannot_be_reniced_or_rescheduled(
    escaper: PluginHandle, stranger: int
) -> None:
    nice_before = _nice(stranger)
    affinity_before = os.sched_getaffinity(stranger)
    policy_before = os.sched_getscheduler(stranger)
    attempts = [
        (141, (0, stranger, 19)),  # setpriority
        (140, (0, stranger)),  # getpriority: would tell the stranger exists
        (203, (stranger, 8, "buf:8")),  # sched_setaffinity (empty mask)
        (144, (stranger, 5, "buf:8")),  # sched_setscheduler(SCHED_IDLE)
        (145, (stranger,)),  # sched_getscheduler
        (142, (stranger, "buf:8")),  # sched_setparam
        (314, (stranger, "buf:56", 0)),  # sched_setattr
        (315, (stranger, "buf:56", 56, 0)),  # sched_getattr
        (251, (1, stranger, (3 << 13))),  # ioprio_set(IOPRIO_CLASS_IDLE)
        (252, (1, stranger)),  # ioprio_get
        (302, (stranger, 7, 0, "buf:16")),  # prlimit64 read
        (62, (stranger, 0)),  # kill(stranger, 0)
        (234, (stranger, stranger, 0)),  # tgkill
        (434, (stranger, 0)),  # pidfd_open
        (124, (stranger,)),  # getsid
        (125, ("hex:" + struct.pack("<Ii", 0x20080522, stranger).hex(), "buf:24")),  # capget
    ]
    for nr, args in attempts:
        assert await refused_errno(escaper, nr, *args) == errno.EPERM, nr
    # Another pid's affinity: "not implemented", the same answer whether it exists or not.
    assert await refused_errno(escaper, 204, stranger, 8, "buf:8") == errno.ENOSYS
    assert await refused_errno(escaper, 204, 2**22 - 1, 8, "buf:8") == errno.ENOSYS
    assert _nice(stranger) == nice_before
    assert os.sched_getaffinity(stranger) == affinity_before
    assert os.sched_getscheduler(stranger) == policy_before


async def test_renicing_a_stranger_works_unsandboxed_as_a_control(
    unsandboxed: PluginHandle, stranger: int
) -> None:
    assert await syscall(unsandboxed, 141, 0, stranger, 19) == 0
    assert _nice(stranger) == 19


async def test_renicing_every_process_of_the_user_is_refused(
    escaper: PluginHandle, unsandboxed: PluginHandle
) -> None:
    # A uid with no process: the kernel itself answers ESRCH, so the control changes nothing.
    absent_uid = 3_999_999
    assert await refused_errno(unsandboxed, 141, 2, absent_uid, 19) == errno.ESRCH
    assert await refused_errno(escaper, 141, 2, absent_uid, 19) == errno.EPERM
    assert await refused_errno(escaper, 141, 1, 0, 19) == errno.EPERM  # PRIO_PGRP


async def test_a_worker_may_still_adjust_and_read_its_own_scheduling(
    escaper: PluginHandle,
) -> None:
    me = int(await escaper.call("pid", {}))
    assert await syscall(escaper, 141, 0, 0, 3) == 0
    assert _nice(me) == 3
    assert await syscall(escaper, 141, 0, "@self", 4) == 0
    assert _nice(me) == 4
    assert await syscall(escaper, 204, 0, 128, "buf:128") > 0
    assert await syscall(escaper, 204, "@self", 128, "buf:128") > 0
    assert await syscall(escaper, 302, 0, 7, 0, "buf:16") == 0
    assert await syscall(escaper, 62, "@self", 0) == 0


# -- SysV IPC ---------------------------------------------------------------------------------


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc


def _host_has(kind: str, key: int) -> bool:
    """Whether the host's own IPC namespace holds the object ``key``."""
    if kind != "mq":
        with open(f"/proc/sysvipc/{kind}") as f:
            return key in {int(line.split()[0]) for line in f.readlines()[1:]}
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(240, f"cordon-{key}".encode(), os.O_RDWR, 0, None)  # mq_open
    if fd < 0:
        assert ctypes.get_errno() == errno.ENOENT
        return False
    os.close(fd)
    libc.syscall(241, f"cordon-{key}".encode())  # mq_unlink: a test must leave nothing
    return True


def _ipc_key(tmp_path: Path, salt: int) -> int:
    return (0x0C0D0000 | (os.getpid() & 0xFFF) << 4 | salt) + (hash(tmp_path.name) & 0xF)


@pytest.mark.parametrize("kind", ["shm", "msg", "sem"])
async def test_a_plugins_sysv_ipc_objects_stay_in_its_own_namespace(
    rt: Runtime, escaper: PluginHandle, tmp_path: Path, kind: str
) -> None:
    key = _ipc_key(tmp_path, 1)
    with anyio.fail_after(CALL_DEADLINE):
        made = await escaper.call("ipc_get", {"kind": kind, "key": key, "create": True})
        # Real: the same worker finds it again ...
        assert await escaper.call("ipc_get", {"kind": kind, "key": key, "create": False}) == made
        # ... while the host's tables never list it.
        assert not _host_has(kind, key)
        old_pid = await escaper.call("pid", {})
        await escaper.stop()
        assert await escaper.call("pid", {}) != old_pid
    # A new worker, a new namespace: the object died with the old one.
    with pytest.raises(PluginError) as info, anyio.fail_after(CALL_DEADLINE):
        await escaper.call("ipc_get", {"kind": kind, "key": key, "create": False})
    assert info.value.exc_message == "[Errno 2] No such file or directory"


async def test_a_posix_message_queue_cannot_reach_the_hosts_namespace(
    escaper: PluginHandle, unsandboxed: PluginHandle, tmp_path: Path
) -> None:
    key = _ipc_key(tmp_path, 4)
    # Inside: the queue would live in the worker's own mqueue namespace, whose filesystem
    # belongs to its user namespace, where the worker's uid has no mapping: EOVERFLOW.
    with pytest.raises(PluginError) as info, anyio.fail_after(CALL_DEADLINE):
        await escaper.call("ipc_get", {"kind": "mq", "key": key, "create": True})
    assert info.value.exc_message == "[Errno 75] Value too large for defined data type"
    assert not _host_has("mq", key)
    # Control: unsandboxed, the same call lands in the host's namespace (and is removed).
    with anyio.fail_after(CALL_DEADLINE):
        await unsandboxed.call("ipc_get", {"kind": "mq", "key": key, "create": True})
    assert _host_has("mq", key)


async def test_a_hosts_shared_memory_segment_is_invisible_to_a_plugin(
    escaper: PluginHandle, unsandboxed: PluginHandle, tmp_path: Path
) -> None:
    libc = _libc()
    key = _ipc_key(tmp_path, 2)
    shmid = libc.shmget(key, 4096, 0o1600)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    try:
        got = await unsandboxed.call("ipc_get", {"kind": "shm", "key": key, "create": False})
        assert got == shmid  # control: without the namespace, the host's segment is right there
        with pytest.raises(PluginError) as info, anyio.fail_after(CALL_DEADLINE):
            await escaper.call("ipc_get", {"kind": "shm", "key": key, "create": False})
        assert info.value.exc_message == "[Errno 2] No such file or directory"
    finally:
        libc.shmctl(shmid, IPC_RMID, None)


async def test_an_unsandboxed_plugins_segment_lands_in_the_hosts_table_as_a_control(
    unsandboxed: PluginHandle, tmp_path: Path
) -> None:
    key = _ipc_key(tmp_path, 3)
    shmid = await unsandboxed.call("ipc_get", {"kind": "shm", "key": key, "create": True})
    try:
        assert _host_has("shm", key)
    finally:
        _libc().shmctl(shmid, IPC_RMID, None)


# -- what keeps working -------------------------------------------------------------------------


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def test_numpy_imports_and_computes_with_openblas_threads_under_strict(
    rt: Runtime,
) -> None:
    numeric = await rt.load(HOSTILE / "numeric")
    with anyio.fail_after(CALL_DEADLINE):
        pid = int(await numeric.call("pid", {}))
        before = _threads(pid)
        out = await numeric.call("matmul", {"n": 400})
    assert numeric.sandbox and set(numeric.sandbox.values()) == {"applied"}
    assert out["trace"] == pytest.approx(_expected_trace(400))
    if (os.cpu_count() or 1) > 1:
        assert _threads(pid) > before  # OpenBLAS started its thread pool inside the sandbox


def _expected_trace(n: int) -> float:
    # trace(A A^T) = sum of squares of A's entries, A[i, j] = (i n + j) / n^2.
    total = sum(k * k for k in range(n * n))
    return total / float(n**4)


async def test_a_ctypes_callback_works_under_strict_with_w_xor_x(rt: Runtime) -> None:
    numeric = await rt.load(HOSTILE / "numeric")
    with anyio.fail_after(CALL_DEADLINE):
        assert await numeric.call("ctypes_callback", {}) == [1, 2, 3, 4, 5]


async def test_a_plugin_may_renice_and_pin_itself(rt: Runtime) -> None:
    numeric = await rt.load(HOSTILE / "numeric")
    with anyio.fail_after(CALL_DEADLINE):
        out = await numeric.call("own_scheduling", {})
    assert out["nice"] == 5
    assert out["affinity"] == sorted(os.sched_getaffinity(0))
