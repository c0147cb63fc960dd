"""Test child: lock itself down, then attempt one escape and print what happened.

Run as ``python -I lockdown_child.py '<json spec>'`` by tests/sandbox/test_lockdown.py. The
spec names the action, the sandbox inputs, and whether to keep a libc handle for *raw*
syscalls (loaded before the lock-down, so the kernel layers are tested without the Python
audit hook getting there first). Prints two JSON lines on stdout: the lock-down report, then
the action's outcome ``{"ok": ..., "errno": ..., "exc": ...}``. An action that gets the
process killed prints no second line; the test reads the exit signal instead.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

from cordon.protocol import Limits, SandboxPolicy
from cordon.worker._sandbox import _lockdown

SPEC: dict[str, Any] = json.loads(sys.argv[1])
ARGS: dict[str, Any] = SPEC.get("args", {})
LIBC: Any = None
CT: Any = None

if SPEC.get("raw"):
    import ctypes as CT

    LIBC = CT.CDLL(None, use_errno=True)
    for fn in ("syscall", "socket", "execve", "ptrace", "kill", "system", "prctl"):
        getattr(LIBC, fn)  # resolved now: the symbol lookup is itself refusable later
    LIBC.syscall.restype = CT.c_long


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = fn()
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "exc": type(exc).__name__, "msg": str(exc)}
    except Exception as exc:
        return {"ok": False, "errno": None, "exc": type(exc).__name__, "msg": str(exc)}
    return {"ok": True, "value": value}


def raw(rc: int) -> int:
    """libc's -1/errno convention as an exception, so raw calls report like Python ones."""
    if rc == -1:
        e = CT.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def sys_call(nr: int, *args: int) -> int:
    return raw(LIBC.syscall(CT.c_long(nr), *[CT.c_long(a) for a in args]))


# -- actions -----------------------------------------------------------------------------


def read_file() -> str:
    with open(ARGS["path"], "rb") as f:
        return f.read(64).decode("latin-1")


def write_file() -> int:
    fd = os.open(ARGS["path"], os.O_WRONLY | os.O_CREAT | ARGS.get("flags", 0), 0o644)
    try:
        return os.write(fd, b"written")
    finally:
        os.close(fd)


def symlink_then(action: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        os.symlink(ARGS["target"], ARGS["path"])
        return action()

    return run


def hardlink() -> None:
    os.link(ARGS["src"], ARGS["dst"])


def rename() -> None:
    os.rename(ARGS["src"], ARGS["dst"])


def py_socket() -> None:
    import socket

    s = socket.socket(ARGS["family"], ARGS["type"])
    try:
        if "connect" in ARGS:
            addr = ARGS["connect"]
            s.settimeout(5)
            s.connect(tuple(addr) if isinstance(addr, list) else addr)
        if "sendto" in ARGS:
            s.sendto(b"x", tuple(ARGS["sendto"]))
    finally:
        s.close()


def raw_socket() -> int:
    fd = raw(LIBC.socket(ARGS["family"], ARGS["type"], 0))
    os.close(fd)
    return fd


def socketpair() -> str:
    import socket

    a, b = socket.socketpair()
    a.sendall(b"ping")
    data = b.recv(4)
    a.close()
    b.close()
    return data.decode()


def dns() -> Any:
    import socket

    return socket.getaddrinfo(ARGS["host"], 80)[0][4][0]


def os_system() -> int:
    return os.system("echo escaped > /dev/null")


def libc_system() -> int:
    # system(3) returns -1 with errno set when it cannot create the child at all.
    return raw(LIBC.system(b"true"))


def run_subprocess() -> int:
    import subprocess

    return subprocess.run(["/bin/sh", "-c", "true"], check=False, timeout=5).returncode


def fork_exec() -> int:
    import _posixsubprocess

    fork_exec: Any = _posixsubprocess.fork_exec  # typeshed's signature lags 3.11's
    r, w = os.pipe()
    return int(
        fork_exec(
            [b"/bin/sh", b"-c", b"true"], [b"/bin/sh"], True, (w,), None, None,
            -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, True,
        )
    )  # fmt: skip


def raw_execve() -> int:
    argv = (CT.c_char_p * 2)(b"/bin/sh", None)
    envp = (CT.c_char_p * 1)(None)
    return raw(LIBC.execve(b"/bin/sh", argv, envp))


def os_fork() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def raw_fork() -> int:
    return sys_call(57)  # fork(2); a child (if any) would return 0 and print "escaped"


def raw_clone_process() -> int:
    return sys_call(56, 17, 0, 0, 0, 0)  # clone(SIGCHLD, ...): a process, not a thread


def fork_bomb() -> int:
    """Fork as fast as possible; count the children that got created."""
    made = 0
    for _ in range(ARGS.get("tries", 200)):
        try:
            pid = sys_call(57)
        except OSError:
            break
        if pid == 0:
            os._exit(0)
        made += 1
    if made == 0:
        sys_call(57)  # re-raise the refusal so the outcome carries its errno
    return made


def ptrace_parent() -> int:
    # PTRACE_SEIZE, not ATTACH: should it ever get through, the parent is not stopped.
    return raw(LIBC.ptrace(CT.c_long(0x4206), CT.c_long(os.getppid()), None, None))


def kill_parent() -> None:
    # Signal 0 (permission check only) and SIGCONT: harmless to pytest if they got through.
    os.kill(os.getppid(), ARGS.get("signal", 0))


def raw_kill_parent() -> int:
    return raw(LIBC.kill(os.getppid(), ARGS.get("signal", 0)))


def raise_rlimit() -> list[int]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return [soft, hard]


def raw_setrlimit() -> int:
    buf = CT.create_string_buffer(struct.pack("<QQ", 4096, 4096), 16)
    return sys_call(160, 7, CT.addressof(buf))  # setrlimit(RLIMIT_NOFILE, ...)


def read_rlimit() -> list[int]:
    import resource

    return list(resource.getrlimit(ARGS.get("resource", resource.RLIMIT_NOFILE)))


def stack_filter(use_prctl: bool) -> Callable[[], int]:
    def run() -> int:
        # An allow-everything filter: the point is whether a second one may be installed.
        insn = CT.create_string_buffer(struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000), 8)
        prog = CT.create_string_buffer(struct.pack("<H6xQ", 1, CT.addressof(insn)), 16)
        if use_prctl:
            return sys_call(157, 22, 2, CT.addressof(prog), 0, 0)  # PR_SET_SECCOMP, FILTER
        return sys_call(317, 1, 0, CT.addressof(prog))

    return run


def int80_getpid() -> int:
    """Call getpid through the 32-bit ABI (``int 0x80``) from a mapped code blob."""
    import mmap

    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
    m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m.write(code)
    addr = CT.addressof(CT.c_char.from_buffer(m))
    # Written, then made executable (never both at once: W^X allows this order).
    sys_call(10, addr, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC)
    return int(CT.CFUNCTYPE(CT.c_int)(addr)())


def x32_getpid() -> int:
    return sys_call(0x40000000 | 39)


def fd_state() -> dict[str, Any]:
    out = {}
    for fd in ARGS["fds"]:
        try:
            os.fstat(fd)
            out[str(fd)] = "open"
        except OSError as exc:
            out[str(fd)] = errno.errorcode[exc.errno or 0]
    return out


def environ() -> dict[str, str]:
    return dict(os.environ)


def imports() -> dict[str, Any]:
    import json as _json
    import sqlite3
    import ssl

    db = sqlite3.connect(os.path.join(ARGS["scratch"], "t.db"))
    db.execute("create table t (x)")
    db.execute("insert into t values (42)")
    db.commit()
    (x,) = db.execute("select x from t").fetchone()
    db.close()
    ssl.create_default_context()
    return {"json": _json.loads("[1]"), "sqlite": x, "openssl": ssl.OPENSSL_VERSION}


def run_asyncio() -> list[int]:
    import asyncio

    async def main() -> list[int]:
        await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, abs, -i) for i in range(4))))

    return asyncio.run(main())


def threads() -> list[int]:
    import threading

    seen: list[int] = []
    ts = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    return sorted(seen)


def scratch_work() -> str:
    d = os.path.join(ARGS["scratch"], "sub")
    os.mkdir(d)
    p = os.path.join(d, "a.txt")
    with open(p, "w") as f:
        f.write("hello")
    os.rename(p, os.path.join(ARGS["scratch"], "b.txt"))
    os.symlink("b.txt", os.path.join(ARGS["scratch"], "c.txt"))
    with open(os.path.join(ARGS["scratch"], "c.txt")) as f:
        text = f.read()
    os.unlink(os.path.join(ARGS["scratch"], "c.txt"))
    os.rmdir(d)
    return text


def pipe_write() -> int:
    return os.write(ARGS["fd"], b"through the pipe")


def ctypes_after_lock_down() -> int:
    import ctypes

    return int(ctypes.CDLL(None).getpid())


def tamper_audit_then_system() -> int:
    """Rewrite everything the audit hook could read at call time, then try os.system."""
    import builtins

    from cordon.worker._sandbox import _audit

    _audit.REFUSED = frozenset()  # type: ignore[misc]
    vars(_audit).clear()
    os.getpid = lambda: ARGS.get("pid", 1)
    saved = builtins.PermissionError, builtins.len
    builtins.PermissionError = RuntimeError  # type: ignore[misc,assignment]
    builtins.len = lambda _x: 0
    try:
        return os.system("true")
    finally:
        builtins.PermissionError, builtins.len = saved  # type: ignore[misc]


def raw_syscall() -> int:
    """``syscall(nr, *args)``: ints as longs, ``"@fd"`` the fd of ``open`` ([path, flags]),
    ``"@self"`` our pid, ``"buf:N"`` N zeroed bytes, ``"i32:V"`` a pointer to the int V,
    ``"hex:H"`` a pointer to the bytes H, other strings as C strings."""
    keep: list[Any] = []
    fd = os.open(ARGS["open"][0], ARGS["open"][1]) if ARGS.get("open") else -1
    cargs: list[int] = []
    for a in ARGS["args"]:
        if a == "@fd":
            cargs.append(fd)
        elif a == "@self":
            cargs.append(os.getpid())
        elif isinstance(a, str) and a.startswith(("i32:", "hex:")):
            data = struct.pack("<i", int(a[4:])) if a[:4] == "i32:" else bytes.fromhex(a[4:])
            buf = CT.create_string_buffer(data, max(len(data), 8))
            keep.append(buf)
            cargs.append(CT.addressof(buf))
        elif isinstance(a, str):
            size = int(a[4:]) if a.startswith("buf:") else 0
            buf = CT.create_string_buffer(size) if size else CT.create_string_buffer(a.encode())
            keep.append(buf)
            cargs.append(CT.addressof(buf))
        else:
            cargs.append(a)
    try:
        return sys_call(ARGS["nr"], *cargs)
    finally:
        if fd >= 0:
            os.close(fd)


def mmap_rwx() -> int:
    import mmap

    with mmap.mmap(-1, mmap.PAGESIZE, prot=ARGS["prot"]) as m:
        return len(m)


def mprotect_rwx() -> int:
    """A writable page turned writable *and* executable (what a JIT without W^X does)."""
    import mmap

    m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    addr = CT.addressof(CT.c_char.from_buffer(m))
    try:
        return sys_call(10, addr, mmap.PAGESIZE, 7)
    finally:
        sys_call(10, addr, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)  # let mmap close


def shutil_copy() -> dict[str, Any]:
    import shutil

    src = os.path.join(ARGS["scratch"], "src.txt")
    with open(src, "w") as f:
        f.write("data")
    shutil.copyfile(src, os.path.join(ARGS["scratch"], "copyfile.txt"))
    copy = outcome(lambda: shutil.copy(src, os.path.join(ARGS["scratch"], "copy.txt")))
    tree = os.path.join(ARGS["scratch"], "tree")
    os.mkdir(tree)
    shutil.copy2(src, tree)
    copytree = outcome(lambda: shutil.copytree(tree, os.path.join(ARGS["scratch"], "tree2")))
    return {"copyfile": "ok", "copy": copy, "copytree": copytree}


def thread_attr() -> int:
    """glibc's pthread_getattr_np from a new thread (it asks for the thread's affinity)."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_ulong
    rcs: list[int] = []

    def query() -> None:
        attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on x86_64
        rcs.append(libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr))
        libc.pthread_attr_destroy(attr)

    t = threading.Thread(target=query)
    t.start()
    t.join(timeout=10)
    return rcs[0]


def numpy_matmul() -> float:
    import numpy as np

    a = np.arange(10000.0).reshape(100, 100)
    return float((a @ a).trace())


def write_big() -> int:
    with open(os.path.join(ARGS["scratch"], "big"), "wb") as f:
        return f.write(b"x" * ARGS["size"])


def cpu_count() -> Any:
    return os.cpu_count()


ACTIONS: dict[str, Callable[[], Any]] = {
    "read_file": read_file,
    "write_file": write_file,
    "symlink_read": symlink_then(read_file),
    "symlink_write": symlink_then(write_file),
    "hardlink": hardlink,
    "rename": rename,
    "py_socket": py_socket,
    "raw_socket": raw_socket,
    "socketpair": socketpair,
    "dns": dns,
    "os_system": os_system,
    "libc_system": libc_system,
    "subprocess": run_subprocess,
    "fork_exec": fork_exec,
    "raw_execve": raw_execve,
    "os_fork": os_fork,
    "raw_fork": raw_fork,
    "raw_clone_process": raw_clone_process,
    "fork_bomb": fork_bomb,
    "ptrace_parent": ptrace_parent,
    "kill_parent": kill_parent,
    "raw_kill_parent": raw_kill_parent,
    "raise_rlimit": raise_rlimit,
    "raw_setrlimit": raw_setrlimit,
    "read_rlimit": read_rlimit,
    "stack_filter_seccomp": stack_filter(use_prctl=False),
    "stack_filter_prctl": stack_filter(use_prctl=True),
    "int80_getpid": int80_getpid,
    "x32_getpid": x32_getpid,
    "fd_state": fd_state,
    "environ": environ,
    "imports": imports,
    "asyncio": run_asyncio,
    "threads": threads,
    "scratch_work": scratch_work,
    "pipe_write": pipe_write,
    "ctypes_after_lock_down": ctypes_after_lock_down,
    "tamper_audit_then_system": tamper_audit_then_system,
    "raw_syscall": raw_syscall,
    "mmap_rwx": mmap_rwx,
    "mprotect_rwx": mprotect_rwx,
    "shutil_copy": shutil_copy,
    "numpy_matmul": numpy_matmul,
    "thread_attr": thread_attr,
    "write_big": write_big,
    "cpu_count": cpu_count,
    "nothing": lambda: None,
}


def deny_first(numbers: list[int]) -> None:
    """Play a container runtime's seccomp profile: make these syscalls fail with EPERM
    before cordon's lock-down runs (Docker's default profile does this to unshare)."""
    from cordon.worker._sandbox import _bpf

    prog: list[Any] = [_bpf.ld(_bpf.NR)]
    prog += [_bpf.jeq(nr, jt="eperm") for nr in numbers]
    if SPEC.get("deny_unshare_flags"):
        # Only unshare calls carrying these flags (a kernel without, say, IPC namespaces).
        prog += [
            _bpf.jeq(272, jf="allow"),
            _bpf.ld(_bpf.ARG_LO(0)),
            _bpf.jset(SPEC["deny_unshare_flags"], jt="eperm"),
        ]
    prog += [
        _bpf.Label("allow"),
        _bpf.ret(0x7FFF0000),
        _bpf.Label("eperm"),
        _bpf.ret(0x00050000 | errno.EPERM),
    ]
    code = _bpf.to_bytes(_bpf.assemble(prog))
    insns = CT.create_string_buffer(code, len(code))
    fprog = CT.create_string_buffer(struct.pack("<H6xQ", len(code) // 8, CT.addressof(insns)), 16)
    sys_call(157, 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    sys_call(317, 1, 0, CT.addressof(fprog))


def main() -> None:
    if SPEC.get("deny_first") is not None:
        deny_first(SPEC["deny_first"])
    if SPEC.get("lock", True):
        policy = SandboxPolicy(
            mode=SPEC.get("mode", "strict"),
            fs_read=SPEC.get("fs_read", []),
            fs_write=SPEC.get("fs_write", []),
        )
        try:
            report = _lockdown.lock_down(
                plugin_id="test",
                policy=policy,
                limits=Limits(**SPEC.get("limits", {})),
                plugin_dir=SPEC["plugin_dir"],
                scratch_dir=SPEC["scratch"],
                read_paths=SPEC.get("read_paths", []),
                keep_fds=[0, 1, 2, *SPEC.get("keep_fds", [])],
                only=SPEC.get("only"),
            )
        except Exception as exc:
            print(json.dumps({"lockdown_error": type(exc).__name__, "fields": str(exc)}))
            sys.stdout.flush()
            os._exit(3)
    else:
        report = {}
    print(json.dumps(report))
    sys.stdout.flush()
    print(json.dumps(outcome(ACTIONS[SPEC["action"]]), default=repr))
    sys.stdout.flush()
    os._exit(0)


main()
