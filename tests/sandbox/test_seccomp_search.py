"""The seccomp filter finds a syscall's rule by binary search, not by one comparison per
listed number in a row: the kernel runs a new filter once per syscall number when it is
installed (to cache the always-allowed ones), so the length of each number's path is paid
~460 times in every worker's start. These check the search over the whole number space with
the reference evaluator; tests/sandbox/test_lockdown.py proves the kernel runs the same
program (``ja`` included) and refuses what it should."""

from __future__ import annotations

import errno

import pytest

from cordon.worker._sandbox import _bpf, _seccomp

X86_64 = _seccomp.AUDIT_ARCH_X86_64
ALLOW = _seccomp.RET_ALLOW
EPERM = _seccomp.RET_ERRNO | errno.EPERM
ENOSYS = _seccomp.RET_ERRNO | errno.ENOSYS
PID = 4242
PROG = _seccomp.build(PID)
#: Past every x86_64 syscall number (the table ends in the 460s): the whole space and more.
NUMBERS = range(0, 1024)
#: Numbers whose rule depends on the arguments (a later check, not the search's answer).
BY_ARGUMENTS = {
    nr
    for table in (
        _seccomp.PRIORITY,
        _seccomp.IOPRIO,
        _seccomp.OWN_PID_OR_ZERO,
        _seccomp.OWN_PID,
        _seccomp.PROT_CALLS,
    )
    for nr in table.values()
} | {
    _seccomp.SCHED_GETAFFINITY,
    _seccomp.SHMAT,
    _seccomp.IOCTL,
    _seccomp.CLONE,
    _seccomp.PRLIMIT64,
    _seccomp.PRCTL,
    _seccomp.FCNTL,
}
#: The longest walk through the filter the search allows for any number (prologue, ~5
#: levels of tree, a leaf of SEARCH_LEAF comparisons, a return). The row it replaced walked
#: ~135 for an unlisted number.
LONGEST_PATH = 40


def path(nr: int, *args: int) -> list[int]:
    trace: list[int] = []
    _bpf.evaluate(PROG, nr=nr, arch=X86_64, args=args, trace=trace)
    return trace


def test_every_number_outside_the_tables_is_allowed_and_every_denied_one_refused() -> None:
    denied = set(_seccomp.DENIED.values())
    for nr in NUMBERS:
        if nr in BY_ARGUMENTS:
            continue
        got = _bpf.evaluate(PROG, nr=nr, arch=X86_64)
        if nr in denied:
            assert got == EPERM, nr
        elif nr == _seccomp.CLONE3:
            assert got == ENOSYS
        else:
            assert got == ALLOW, nr


def test_numbers_near_the_search_pivots_are_not_mistaken_for_their_neighbours() -> None:
    denied = set(_seccomp.DENIED.values())
    for nr in sorted(denied):
        for near in (nr - 1, nr + 1):
            if near in denied or near in BY_ARGUMENTS or near == _seccomp.CLONE3:
                continue
            assert _bpf.evaluate(PROG, nr=near, arch=X86_64) == ALLOW, near


def test_a_number_above_every_table_is_let_through_for_the_kernel_to_answer_enosys() -> None:
    # Above the last pivot: the search's rightmost leaf, then ALLOW (the kernel has no such
    # call). -1 and anything else with the x32 bit set die first (test_seccomp_filter.py).
    assert _bpf.evaluate(PROG, nr=0x3FFF_FFFF, arch=X86_64) == ALLOW


def test_no_syscall_number_walks_more_than_a_few_dozen_instructions() -> None:
    longest = max(len(path(nr)) for nr in NUMBERS)
    assert longest <= LONGEST_PATH
    # Arguments checked too: the handlers are short, whatever the call.
    assert max(len(path(nr, 1, 2, 3)) for nr in BY_ARGUMENTS) <= LONGEST_PATH + 20


def test_ja_jumps_forward_to_its_label_and_the_assembler_refuses_any_other() -> None:
    prog = _bpf.assemble([_bpf.ja("out"), _bpf.ret(EPERM), _bpf.Label("out"), _bpf.ret(ALLOW)])
    assert prog[0] == (0x05, 0, 0, 1)
    assert _bpf.evaluate(prog, nr=0, arch=X86_64) == ALLOW
    with pytest.raises(ValueError, match="ja needs one defined label"):
        _bpf.assemble([_bpf.ja("nowhere"), _bpf.ret(ALLOW)])
    with pytest.raises(ValueError, match="back"):
        _bpf.assemble([_bpf.Label("top"), _bpf.ld(0), _bpf.ja("top"), _bpf.ret(ALLOW)])


def test_a_table_too_long_for_one_byte_jumps_is_still_searched_right() -> None:
    # Three times the numbers of today's tables: the tree's upper halves outgrow a
    # conditional jump's 255 instructions, and the search hops over a ``ja`` instead.
    route = [(nr, "eperm" if nr % 3 else "enosys") for nr in range(0, 2000, 5)]
    prog = _bpf.assemble([_bpf.ld(_bpf.NR), *_seccomp._search(route, "t")])
    assert any(code == 0x05 for code, *_ in prog)  # a ja was needed
    expected = dict(route)
    for nr in range(0, 2010):
        want = {"eperm": EPERM, "enosys": ENOSYS}.get(expected.get(nr, ""), ALLOW)
        assert _bpf.evaluate(prog, nr=nr, arch=X86_64) == want, nr
