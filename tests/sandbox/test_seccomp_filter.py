"""The generated seccomp program, checked syscall by syscall with the reference evaluator
(no kernel involved: these pin the filter's logic; test_lockdown.py proves the kernel agrees)."""

from __future__ import annotations

import errno

import pytest

from cordon.worker._sandbox import _bpf, _seccomp

X86_64 = _seccomp.AUDIT_ARCH_X86_64
I386 = 0x40000003
ALLOW = _seccomp.RET_ALLOW
EPERM = _seccomp.RET_ERRNO | errno.EPERM
ENOSYS = _seccomp.RET_ERRNO | errno.ENOSYS
KILL = _seccomp.RET_KILL_PROCESS

PID = 4242
PROG = _seccomp.build(PID)
OTHER = 1
THREAD_FLAGS = 0x003D0F00  # glibc pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...


def action(nr: int, *args: int, arch: int = X86_64) -> int:
    return _bpf.evaluate(PROG, nr=nr, arch=arch, args=args)


@pytest.mark.parametrize("name", sorted(_seccomp.DENIED))
def test_every_denied_syscall_returns_eperm(name: str) -> None:
    assert action(_seccomp.DENIED[name]) == EPERM


@pytest.mark.parametrize(
    "nr", [0, 1, 3, 9, 10, 53, 202, 231, 257, 444, 445, 446]
)  # read write close mmap mprotect socketpair futex exit_group openat landlock_*
def test_ordinary_syscalls_are_allowed(nr: int) -> None:
    assert action(nr) == ALLOW


def test_a_foreign_architecture_kills_the_process() -> None:
    assert action(20, arch=I386) == KILL  # getpid via int 0x80
    assert action(39, arch=0) == KILL


def test_x32_syscall_numbers_kill_the_process() -> None:
    assert action(0x40000000 | 39) == KILL
    assert action(0x40000000 | 59) == KILL


def test_clone_makes_threads_but_not_processes_or_namespaces() -> None:
    assert action(_seccomp.CLONE, THREAD_FLAGS) == ALLOW
    assert action(_seccomp.CLONE, 17) == EPERM  # SIGCHLD: fork()
    assert action(_seccomp.CLONE, 0x4111) == EPERM  # CLONE_VM|CLONE_VFORK|SIGCHLD: posix_spawn
    for ns in (0x00020000, 0x10000000, 0x20000000, 0x40000000):
        assert action(_seccomp.CLONE, THREAD_FLAGS | ns) == EPERM


def test_clone3_answers_enosys_so_glibc_falls_back_to_clone() -> None:
    assert action(_seccomp.CLONE3, 0, 88) == ENOSYS


def test_prlimit64_reads_are_allowed_and_writes_refused() -> None:
    assert action(_seccomp.PRLIMIT64, 0, 7, 0, 0x7FFC0000) == ALLOW
    assert action(_seccomp.PRLIMIT64, PID, 7, 0, 0x7FFC0000) == ALLOW
    assert action(_seccomp.PRLIMIT64, OTHER, 7, 0, 0x7FFC0000) == EPERM  # another's limits
    assert action(_seccomp.PRLIMIT64, 0, 7, 0x7FFC0000, 0) == EPERM
    assert action(_seccomp.PRLIMIT64, 0, 7, 0x7FFC_0000_0000, 0) == EPERM  # high word only


def test_prctl_set_seccomp_is_refused_and_other_options_allowed() -> None:
    assert action(_seccomp.PRCTL, 22, 2) == EPERM
    assert action(_seccomp.PRCTL, 15, 0) == ALLOW  # PR_SET_NAME
    assert action(_seccomp.PRCTL, 1 << 32 | 15) == ALLOW  # the kernel reads an int


def test_the_assembler_rejects_programs_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="undefined label"):
        _bpf.assemble([_bpf.jeq(1, jt="nowhere"), _bpf.ret(0)])
    with pytest.raises(ValueError, match="must end with a return"):
        _bpf.assemble([_bpf.ld(0)])
    far: list[_bpf.Insn | _bpf.Label] = [
        _bpf.jeq(1, jt="end"),
        *[_bpf.ld(0)] * 300,
        _bpf.Label("end"),
        _bpf.ret(0),
    ]
    with pytest.raises(ValueError, match="out of range"):
        _bpf.assemble(far)
    with pytest.raises(ValueError, match="defined twice"):
        _bpf.assemble([_bpf.Label("a"), _bpf.Label("a"), _bpf.ret(0)])


def test_the_encoded_program_is_eight_bytes_per_instruction() -> None:
    code = _bpf.to_bytes(PROG)
    assert len(code) == 8 * len(PROG)
    assert code[:8] == bytes([0x20, 0, 0, 0, 4, 0, 0, 0])  # ld [4] (arch)


def test_the_deny_table_has_no_number_twice_and_no_allowed_call() -> None:
    numbers = list(_seccomp.DENIED.values())
    assert len(numbers) == len(set(numbers))
    assert not set(numbers) & set(_seccomp.FAST_ALLOW)


@pytest.mark.parametrize(
    ("name", "nr"),
    [
        ("chmod", 90), ("fchmod", 91), ("fchmodat", 268), ("fchmodat2", 452), ("chown", 92),
        ("fchown", 93), ("lchown", 94), ("fchownat", 260), ("utime", 132), ("utimes", 235),
        ("futimesat", 261), ("utimensat", 280), ("setxattr", 188), ("lsetxattr", 189),
        ("fsetxattr", 190), ("setxattrat", 463), ("removexattr", 197), ("lremovexattr", 198),
        ("fremovexattr", 199), ("removexattrat", 466), ("file_setattr", 469),
        ("inotify_init", 253), ("inotify_init1", 294), ("inotify_add_watch", 254),
        ("fanotify_init", 300), ("fanotify_mark", 301), ("statmount", 457), ("listmount", 458),
        ("open_tree_attr", 467), ("quotactl", 179), ("quotactl_fd", 443), ("tkill", 200),
        ("capget", 125),
    ],
)  # fmt: skip
def test_the_new_classes_are_denied_under_their_x86_64_numbers(name: str, nr: int) -> None:
    assert _seccomp.DENIED[name] == nr
    assert action(nr) == EPERM


@pytest.mark.parametrize("nr", [140, 141])  # getpriority, setpriority
def test_priorities_only_of_the_worker_itself_and_only_per_process(nr: int) -> None:
    assert action(nr, 0, 0, 5) == ALLOW  # PRIO_PROCESS, the caller
    assert action(nr, 0, PID, 5) == ALLOW
    assert action(nr, 0, OTHER, 5) == EPERM
    assert action(nr, 1, 0, 5) == EPERM  # PRIO_PGRP
    assert action(nr, 2, 0, 5) == EPERM  # PRIO_USER: every process of the uid
    assert action(nr, 0, 1 << 32 | PID, 5) == ALLOW  # the kernel reads an int


@pytest.mark.parametrize("nr", [251, 252])  # ioprio_set, ioprio_get
def test_io_priorities_only_of_the_worker_itself(nr: int) -> None:
    assert action(nr, 1, 0, 0) == ALLOW
    assert action(nr, 1, PID, 0) == ALLOW
    assert action(nr, 1, OTHER, 0) == EPERM
    assert action(nr, 2, 0, 0) == EPERM  # IOPRIO_WHO_PGRP
    assert action(nr, 3, 0, 0) == EPERM  # IOPRIO_WHO_USER


@pytest.mark.parametrize("name", sorted(_seccomp.OWN_PID_OR_ZERO))
def test_pid_taking_calls_name_only_the_worker_or_zero(name: str) -> None:
    nr = _seccomp.OWN_PID_OR_ZERO[name]
    assert action(nr, 0) == ALLOW
    assert action(nr, PID) == ALLOW
    assert action(nr, OTHER) == EPERM
    assert action(nr, PID + 1) == EPERM  # e.g. a sibling thread's tid: refused, as documented


@pytest.mark.parametrize("name", sorted(_seccomp.OWN_PID))
def test_signals_reach_only_the_worker_itself(name: str) -> None:
    nr = _seccomp.OWN_PID[name]
    assert action(nr, PID, 0) == ALLOW
    for target in (OTHER, 0, 0xFFFFFFFF, (-PID) & 0xFFFFFFFF):  # pgrp, everyone, -pgrp
        assert action(nr, target, 0) == EPERM


@pytest.mark.parametrize("name", sorted(_seccomp.PROT_CALLS))
def test_a_mapping_may_be_writable_or_executable_but_not_both(name: str) -> None:
    nr = _seccomp.PROT_CALLS[name]
    for prot, expected in [(0, ALLOW), (1, ALLOW), (3, ALLOW), (5, ALLOW), (6, EPERM), (7, EPERM)]:
        assert action(nr, 0, 4096, prot, 0x22) == expected, prot


def test_shmat_with_exec_is_refused_unless_read_only() -> None:
    assert action(_seccomp.SHMAT, 1, 0, 0) == ALLOW
    assert action(_seccomp.SHMAT, 1, 0, _seccomp.SHM_EXEC) == EPERM
    assert action(_seccomp.SHMAT, 1, 0, _seccomp.SHM_EXEC | _seccomp.SHM_RDONLY) == ALLOW


def test_only_listed_ioctls_pass_and_the_rest_answer_enotty() -> None:
    for cmd in _seccomp.ALLOWED_IOCTLS.values():
        assert action(_seccomp.IOCTL, 3, cmd) == ALLOW
    enotty = _seccomp.RET_ERRNO | errno.ENOTTY
    for cmd in (0x40086602, 0x401C5820, 0x40806685, 0x5412):  # SETFLAGS FSSETXATTR verity STI
        assert action(_seccomp.IOCTL, 3, cmd) == enotty


def test_leases_dnotify_and_core_scheduling_cookies_are_refused() -> None:
    assert action(_seccomp.FCNTL, 3, 1024, 1) == EPERM  # F_SETLEASE, F_WRLCK
    assert action(_seccomp.FCNTL, 3, 1026, 0x80000001) == EPERM  # F_NOTIFY
    assert action(_seccomp.FCNTL, 3, 4, 0o4000) == ALLOW  # F_SETFL O_NONBLOCK
    assert action(_seccomp.FCNTL, 3, 6, 0) == ALLOW  # F_SETLK
    assert action(_seccomp.PRCTL, 62, 2, 1, 0, 0) == EPERM  # PR_SCHED_CORE share to pid 1


def test_another_pids_affinity_answers_enosys_which_glibc_reads_as_no_information() -> None:
    assert action(_seccomp.SCHED_GETAFFINITY, 0, 128) == ALLOW
    assert action(_seccomp.SCHED_GETAFFINITY, PID, 128) == ALLOW
    assert action(_seccomp.SCHED_GETAFFINITY, OTHER, 128) == ENOSYS
    assert action(_seccomp.SCHED_GETAFFINITY, PID + 1, 128) == ENOSYS  # own thread's tid


@pytest.mark.parametrize("pid", [1, 2, 56, 4242, 0x1357_9BDF, 0x2468_ACE0, 2**22, 2**31 - 1])
def test_a_forked_workers_filter_from_the_zygotes_template_is_the_one_built_for_its_pid(
    pid: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_seccomp, "_template", None)
    built = _bpf.to_bytes(_seccomp.build(pid))
    assert _seccomp.program(pid) == built  # no template: assembled here
    _seccomp.freeze()
    assert _seccomp.program(pid) == built
