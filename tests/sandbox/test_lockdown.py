"""The lock-down, proven from the outside: a real ``python -I`` child locks itself down and
tries to escape; each test asserts the exact refusal (errno, or the signal that killed it).

Most escapes are tried twice where it matters: through the full lock-down (what a plugin
meets: often the audit hook answers first), and against a single kernel layer with the audit
hook off (``only=[...]``, raw libc calls prepared before the lock-down), so every kernel
layer is shown to hold on its own. Controls run the same action unlocked where the action
is harmless, to show the test could fail.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("lockdown_child.py")
KERNEL = [
    "fds",
    "rlimits",
    "netns",
    "userns",
    "ipcns",
    "no-new-privs",
    "landlock-fs",
    "landlock-net",
    "landlock-scope",
    "seccomp",
]
ALL = [*KERNEL, "audit-hook"]
CHILD_TIMEOUT = 30


@dataclass
class Box:
    root: Path
    scratch: Path
    plugin_dir: Path
    other_scratch: Path
    outside: Path


@dataclass
class Outcome:
    returncode: int
    report: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""

    @property
    def errno(self) -> int | None:
        assert not self.result.get("ok"), f"escape succeeded: {self.result}"
        return self.result.get("errno")


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
    (b.plugin_dir / "plugin_code.py").write_text("X = 1\n")
    (b.other_scratch / "secret.txt").write_text("sibling secret\n")
    b.outside.write_text("outside secret\n")
    return b


def run(
    box: Box,
    action: str,
    args: dict[str, Any] | None = None,
    *,
    only: list[str] | None = None,
    raw: bool = False,
    pass_fds: tuple[int, ...] = (),
    **spec: Any,
) -> Outcome:
    full = {
        "action": action,
        "args": args or {},
        "scratch": str(box.scratch),
        "plugin_dir": str(box.plugin_dir),
        "only": only,
        "raw": raw,
        "keep_fds": spec.pop("keep_fds", []),
        **spec,
    }
    proc = subprocess.run(
        [sys.executable, "-I", str(CHILD), json.dumps(full)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        pass_fds=pass_fds,
        start_new_session=True,
        check=False,
    )
    lines = proc.stdout.splitlines()
    out = Outcome(proc.returncode, stderr=proc.stderr)
    if lines:
        out.report = json.loads(lines[0])
    if len(lines) > 1:
        out.result = json.loads(lines[1])
    return out


def kernel(box: Box, action: str, args: dict[str, Any] | None = None, **kw: Any) -> Outcome:
    """Every kernel layer, no audit hook: the kernel alone must refuse."""
    return run(box, action, args, only=KERNEL, raw=True, **kw)


# -- report and modes -------------------------------------------------------------------------


def test_strict_lock_down_reports_every_layer_applied(box: Box) -> None:
    out = run(box, "nothing")
    assert out.returncode == 0, out.stderr
    assert out.report == dict.fromkeys(ALL, "applied")


def test_off_mode_applies_only_rlimits_and_leaves_the_filesystem_open(box: Box) -> None:
    out = run(box, "read_file", {"path": str(box.outside)}, mode="off")
    assert out.report == {**dict.fromkeys(ALL, "off"), "rlimits": "applied"}
    assert out.result == {"ok": True, "value": "outside secret\n"}


def test_strict_refuses_to_start_when_the_container_denies_namespaces(box: Box) -> None:
    out = run(box, "nothing", raw=True, deny_first=[272])  # unshare → EPERM, like Docker
    assert out.returncode == 3
    assert out.report["lockdown_error"] == "SandboxUnavailable"
    assert "netns: unshare(NEWNET): Operation not permitted" in out.report["fields"]
    assert "userns: unshare(NEWUSER|NEWNET): Operation not permitted" in out.report["fields"]
    assert "ipcns: unshare(NEWIPC): Operation not permitted" in out.report["fields"]


def test_best_effort_reports_a_missing_layer_and_applies_the_rest(box: Box) -> None:
    out = run(box, "read_file", {"path": "/etc/passwd"}, raw=True, deny_first=[272],
              mode="best-effort")  # fmt: skip
    assert out.report["netns"].startswith("unavailable: ")
    assert out.report["userns"].startswith("unavailable: ")
    assert out.report["ipcns"].startswith("unavailable: ")
    missing = {"netns", "userns", "ipcns"}
    assert {k for k, v in out.report.items() if v == "applied"} == set(ALL) - missing
    assert out.errno == errno.EACCES


# -- filesystem -------------------------------------------------------------------------------

FS_LAYERS = [pytest.param(None, id="full"), pytest.param(["landlock-fs"], id="landlock-alone")]


@pytest.mark.parametrize("only", FS_LAYERS)
@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/proc/1/environ", "/proc/self/environ", "{outside}", "{sibling}"],
)
def test_reading_outside_the_allowed_paths_fails_with_eacces(
    box: Box, only: list[str] | None, path: str
) -> None:
    path = path.format(outside=box.outside, sibling=box.other_scratch / "secret.txt")
    assert run(box, "read_file", {"path": path}, only=only).errno == errno.EACCES


def test_reading_the_parents_environment_through_proc_fails_with_eacces(box: Box) -> None:
    path = f"/proc/{os.getpid()}/environ"
    assert run(box, "read_file", {"path": path}).errno == errno.EACCES


def test_reading_is_allowed_where_granted_as_a_control(box: Box) -> None:
    out = run(box, "read_file", {"path": str(box.plugin_dir / "plugin_code.py")})
    assert out.result == {"ok": True, "value": "X = 1\n"}


@pytest.mark.parametrize("only", FS_LAYERS)
@pytest.mark.parametrize(
    "path",
    ["{scratch}/../escaped.txt", "{root}/escaped.txt", "{plugin}/new.py", "{plugin}/plugin_code.py",
     "{sibling}/secret.txt", "/tmp/cordon-escape-test.txt"],
)  # fmt: skip
def test_writing_outside_scratch_fails_with_eacces(
    box: Box, only: list[str] | None, path: str
) -> None:
    path = path.format(
        scratch=box.scratch, root=box.root, plugin=box.plugin_dir, sibling=box.other_scratch
    )
    assert run(box, "write_file", {"path": path}, only=only).errno == errno.EACCES
    assert not Path(path).exists() or Path(path).read_text() != "written"


def test_truncating_a_read_only_file_fails_with_eacces(box: Box) -> None:
    args = {"path": str(box.plugin_dir / "plugin_code.py"), "flags": os.O_TRUNC}
    assert run(box, "write_file", args).errno == errno.EACCES
    assert (box.plugin_dir / "plugin_code.py").read_text() == "X = 1\n"


def test_a_symlink_in_scratch_does_not_open_the_file_it_points_to(box: Box) -> None:
    link = str(box.scratch / "link")
    out = run(box, "symlink_read", {"target": "/etc/passwd", "path": link})
    assert out.errno == errno.EACCES


def test_writing_through_a_symlink_in_scratch_to_outside_fails_with_eacces(box: Box) -> None:
    link = str(box.scratch / "link")
    out = run(box, "symlink_write", {"target": str(box.outside), "path": link})
    assert out.errno == errno.EACCES
    assert box.outside.read_text() == "outside secret\n"


@pytest.mark.parametrize("src", ["{outside}", "{plugin}/plugin_code.py", "/etc/passwd"])
def test_hardlinking_a_file_into_scratch_to_gain_write_fails_with_exdev(box: Box, src: str) -> None:
    src = src.format(outside=box.outside, plugin=box.plugin_dir)
    out = run(box, "hardlink", {"src": src, "dst": str(box.scratch / "linked")})
    assert out.errno == errno.EXDEV
    assert not (box.scratch / "linked").exists()


def test_moving_a_scratch_file_out_of_scratch_is_refused(box: Box) -> None:
    (box.scratch / "f").write_text("data")
    out = run(box, "rename", {"src": str(box.scratch / "f"), "dst": str(box.root / "f")})
    assert out.errno == errno.EACCES
    assert (box.scratch / "f").exists()


def test_policy_fs_read_and_fs_write_extend_the_grants(box: Box) -> None:
    extra = box.root / "extra"
    extra.mkdir()
    out = run(box, "write_file", {"path": str(extra / "w.txt")}, fs_write=[str(extra)])
    assert out.result == {"ok": True, "value": 7}
    out = run(box, "read_file", {"path": str(box.outside)}, fs_read=[str(box.outside)])
    assert out.result == {"ok": True, "value": "outside secret\n"}
    out = run(box, "read_file", {"path": str(box.outside)}, read_paths=[str(box.outside)])
    assert out.result["ok"] is True


# -- network ----------------------------------------------------------------------------------


@pytest.fixture
def tcp_server() -> Iterator[tuple[str, int]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv.getsockname()
    srv.close()


def test_a_tcp_connect_to_a_listening_host_port_works_unlocked_as_a_control(
    box: Box, tcp_server: tuple[str, int]
) -> None:
    args = {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "connect": list(tcp_server)}
    assert run(box, "py_socket", args, lock=False).result == {"ok": True, "value": None}


@pytest.mark.parametrize(
    ("only", "expected"),
    [
        pytest.param(None, errno.EPERM, id="full-audit-hook"),
        pytest.param(KERNEL, errno.EPERM, id="kernel-seccomp"),
        pytest.param(["netns"], errno.ENETUNREACH, id="netns-alone"),
        pytest.param(["landlock-net"], errno.EACCES, id="landlock-alone"),
    ],
)
def test_a_tcp_connect_to_a_listening_host_port_is_refused(
    box: Box, tcp_server: tuple[str, int], only: list[str] | None, expected: int
) -> None:
    args = {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "connect": list(tcp_server)}
    assert run(box, "py_socket", args, only=only).errno == expected


def test_a_udp_datagram_to_the_host_is_refused(box: Box) -> None:
    args = {"family": socket.AF_INET, "type": socket.SOCK_DGRAM, "sendto": ["127.0.0.1", 9]}
    assert run(box, "py_socket", args).errno == errno.EPERM
    assert run(box, "py_socket", args, only=["netns"]).errno == errno.ENETUNREACH


@pytest.mark.parametrize(
    ("family", "type_"),
    [
        (socket.AF_INET, socket.SOCK_STREAM),
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET6, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_DGRAM),
        (socket.AF_NETLINK, socket.SOCK_RAW),
        (socket.AF_PACKET, socket.SOCK_RAW),
    ],
)
def test_seccomp_alone_refuses_every_socket_family_with_eperm(
    box: Box, family: int, type_: int
) -> None:
    args = {"family": family, "type": type_}
    assert run(box, "raw_socket", args, only=["seccomp"], raw=True).errno == errno.EPERM


def test_connecting_to_a_host_unix_socket_is_refused(box: Box) -> None:
    path = str(box.root / "host.sock")
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(path)
        srv.listen()
        args = {"family": socket.AF_UNIX, "type": socket.SOCK_STREAM, "connect": path}
        assert run(box, "py_socket", args, lock=False).result["ok"] is True  # control
        assert run(box, "py_socket", args).errno == errno.EPERM
    finally:
        srv.close()


def test_landlock_scope_alone_refuses_a_host_abstract_unix_socket_with_eperm(box: Box) -> None:
    name = f"\0cordon-test-{os.getpid()}-{box.root.name}"
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(name)
        srv.listen()
        args = {"family": socket.AF_UNIX, "type": socket.SOCK_STREAM, "connect": name}
        assert run(box, "py_socket", args, lock=False).result["ok"] is True  # control
        assert run(box, "py_socket", args, only=["landlock-scope"]).errno == errno.EPERM
    finally:
        srv.close()


def test_dns_resolution_is_refused(box: Box) -> None:
    assert run(box, "dns", {"host": "localhost"}).errno == errno.EPERM
    out = run(box, "dns", {"host": "example.com"}, only=["netns", "landlock-fs"])
    assert out.result["exc"] == "gaierror"


def test_socketpair_keeps_working_for_asyncio(box: Box) -> None:
    assert run(box, "socketpair").result == {"ok": True, "value": "ping"}


# -- programs and processes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "event"),
    [("os_system", "os.system"), ("subprocess", "subprocess.Popen"), ("os_fork", "os.fork")],
)
def test_starting_programs_from_python_is_refused_by_the_audit_hook(
    box: Box, action: str, event: str
) -> None:
    out = run(box, action)
    assert out.errno == errno.EPERM
    assert out.result["msg"] == f"[Errno 1] cordon sandbox refuses {event}"


@pytest.mark.parametrize(
    "action", ["fork_exec", "raw_execve", "raw_fork", "raw_clone_process", "os_fork", "subprocess"]
)
def test_the_kernel_alone_refuses_exec_and_fork_with_eperm(box: Box, action: str) -> None:
    out = kernel(box, action)
    assert out.errno == errno.EPERM, out.result


def test_a_fork_bomb_as_root_creates_no_process_when_processes_is_zero(box: Box) -> None:
    assert os.geteuid() == 0 or pytest.skip("the point is that RLIMIT_NPROC does not bind root")
    control = run(box, "fork_bomb", {"tries": 3}, lock=False, raw=True)
    assert control.result == {"ok": True, "value": 3}
    out = kernel(box, "fork_bomb", {"tries": 200}, limits={"processes": 0})
    assert out.errno == errno.EPERM


def test_ptrace_of_the_parent_fails_with_eperm(box: Box) -> None:
    assert kernel(box, "ptrace_parent").errno == errno.EPERM
    assert run(box, "ptrace_parent", only=["seccomp"], raw=True).errno == errno.EPERM


def test_signalling_the_parent_is_refused(box: Box) -> None:
    assert run(box, "raw_kill_parent", lock=False, raw=True).result["ok"] is True  # control
    assert run(box, "kill_parent").errno == errno.EPERM  # audit hook
    out = run(box, "raw_kill_parent", {"signal": signal.SIGCONT}, only=["landlock-scope"],
              raw=True)  # fmt: skip
    assert out.errno == errno.EPERM


# -- limits -----------------------------------------------------------------------------------


def test_raising_an_rlimit_fails_with_eperm_even_as_root(box: Box) -> None:
    assert run(box, "raw_setrlimit", lock=False, raw=True).result["ok"] is True  # control
    assert run(box, "raw_setrlimit", only=["seccomp"], raw=True).errno == errno.EPERM
    out = run(box, "raise_rlimit", limits={"open_files": 64})
    assert out.result["msg"] == "not allowed to raise maximum limit"  # CPython's EPERM text


def test_the_configured_limits_are_in_force_and_readable(box: Box) -> None:
    import resource

    lim = {"open_files": 64, "cpu_seconds": 30, "memory": 2**32, "file_size": 2**20}
    for res, expected in [
        (resource.RLIMIT_NOFILE, [64, 64]),
        (resource.RLIMIT_CPU, [30, 31]),
        (resource.RLIMIT_AS, [2**32, 2**32]),
        (resource.RLIMIT_FSIZE, [2**20, 2**20]),
        (resource.RLIMIT_CORE, [0, 0]),
    ]:
        out = run(box, "read_rlimit", {"resource": res}, limits=lim)
        assert out.result == {"ok": True, "value": expected}, res


def test_writing_past_the_file_size_limit_fails_with_efbig(box: Box) -> None:
    args = {"scratch": str(box.scratch), "size": 2 * 2**20}
    out = run(box, "write_big", args, limits={"file_size": 2**20})
    assert out.errno == errno.EFBIG


# -- seccomp itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["stack_filter_seccomp", "stack_filter_prctl"])
def test_stacking_another_seccomp_filter_fails_with_eperm(box: Box, action: str) -> None:
    assert run(box, action, lock=False, raw=True).result == {"ok": True, "value": 0}  # control
    assert kernel(box, action).errno == errno.EPERM


def test_the_32_bit_int80_abi_kills_the_worker_with_sigsys(box: Box) -> None:
    control = run(box, "int80_getpid", lock=False, raw=True)
    if control.returncode != 0:
        pytest.skip(f"this kernel has no 32-bit syscall ABI (int 0x80 → {control.returncode})")
    assert control.result["ok"] is True
    out = kernel(box, "int80_getpid")
    assert out.report["seccomp"] == "applied"
    assert out.returncode == -signal.SIGSYS
    assert out.result == {}


def test_an_x32_syscall_number_kills_the_worker_with_sigsys(box: Box) -> None:
    out = kernel(box, "x32_getpid")
    assert out.report["seccomp"] == "applied"
    assert out.returncode == -signal.SIGSYS


# -- fds and environment ----------------------------------------------------------------------


def test_an_inherited_fd_is_closed_and_kept_fds_stay_open(box: Box) -> None:
    leaked = os.open(box.outside, os.O_RDONLY)  # os.open is CLOEXEC; pass_fds makes it inherit
    r, w = os.pipe()
    try:
        args = {"fds": [leaked, w]}
        out = run(box, "fd_state", args, pass_fds=(leaked, w), keep_fds=[w])
        assert out.result == {"ok": True, "value": {str(leaked): "EBADF", str(w): "open"}}
        control = run(box, "fd_state", args, pass_fds=(leaked, w), lock=False)
        assert control.result["value"][str(leaked)] == "open"
    finally:
        for fd in (leaked, r, w):
            os.close(fd)


def test_a_kept_pipe_fd_still_carries_data_after_lock_down(box: Box) -> None:
    r, w = os.pipe()
    try:
        out = run(box, "pipe_write", {"fd": w}, pass_fds=(w,), keep_fds=[w])
        assert out.result == {"ok": True, "value": 16}
        assert os.read(r, 100) == b"through the pipe"
    finally:
        os.close(r)
        os.close(w)


# -- what must keep working -------------------------------------------------------------------


def test_json_sqlite3_and_ssl_import_and_work_after_lock_down(box: Box) -> None:
    out = run(box, "imports", {"scratch": str(box.scratch)})
    assert out.result["ok"] is True, out.result
    assert out.result["value"]["sqlite"] == 42
    assert out.result["value"]["json"] == [1]


def test_an_asyncio_loop_with_its_thread_executor_runs(box: Box) -> None:
    assert run(box, "asyncio").result == {"ok": True, "value": [0, 1, 2, 3]}


def test_threads_can_be_started_and_joined(box: Box) -> None:
    assert run(box, "threads").result == {"ok": True, "value": list(range(8))}


def test_the_scratch_dir_is_fully_usable(box: Box) -> None:
    assert run(box, "scratch_work", {"scratch": str(box.scratch)}).result["value"] == "hello"
    assert (box.scratch / "b.txt").read_text() == "hello"


def test_os_cpu_count_still_answers(box: Box) -> None:
    assert run(box, "cpu_count").result == {"ok": True, "value": os.cpu_count()}


def test_ctypes_imports_and_calls_libc_after_lock_down(box: Box) -> None:
    out = run(box, "ctypes_after_lock_down")
    assert out.result["ok"] is True, out.result
    assert out.result["value"] > 0


def test_the_audit_hook_holds_after_its_module_and_builtins_are_rewritten(box: Box) -> None:
    out = run(box, "tamper_audit_then_system", {"pid": os.getpid()})
    assert out.result["exc"] == "PermissionError"
    assert out.result["msg"] == "[Errno 1] cordon sandbox refuses os.system"


# -- probe ------------------------------------------------------------------------------------


def test_probe_reports_what_this_machine_supports() -> None:
    from cordon.worker._sandbox import probe

    found = probe()
    # Seen failing once in eight loaded runs of the whole suite, without its report: say
    # what the probe found, so the next failure explains itself.
    assert "error" not in found, found
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
    landlock = found["landlock"]
    assert isinstance(landlock, dict)
    assert landlock["abi"] == max(abi, 0)
    assert landlock["available"] is (abi > 0)
    assert found["root"] is (os.geteuid() == 0)
    assert found["seccomp"] == {"available": True}, found
    assert found["user_namespaces"] is True, found
    assert found["net_namespaces"] is True, found
    assert found["ipc_namespaces"] is True, found
    with open("/proc/self/mountinfo") as f:
        fstypes = {line.partition(" - ")[2].split()[0] for line in f}
    cgroups = found["cgroups"]
    assert isinstance(cgroups, dict)
    assert ("cgroup" in fstypes) == bool(cgroups["v1"])
    assert ("cgroup2" in fstypes) == bool(cgroups["v2_mount"])
