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

PROG = _seccomp.build()
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
