"""The lock-down's native helper: structs reach the kernel as the bytes they were packed in,
and a forked worker uses the helper the zygote made (tests/sandbox/test_lockdown.py runs
every layer through it against the real kernel)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import pytest

from cordon.worker._sandbox import _native


def test_a_bytes_argument_is_passed_as_a_pointer_to_its_own_bytes() -> None:
    data = struct.pack("<QQQ", 0x1122334455667788, 0, 0xFFFF) + b"\x00tail"
    addr = _native.native().address(data)
    assert ctypes.string_at(addr, len(data)) == data


def test_the_kernel_reads_a_struct_given_as_bytes() -> None:
    # landlock_create_ruleset reads a struct landlock_ruleset_attr from the pointer: a
    # handled set the kernel knows gives a ruleset fd; one it does not is EINVAL (so the
    # kernel did read the bytes, not a copy of something else).
    nat = _native.native()
    try:
        nat.syscall(_native.NR.LANDLOCK_CREATE_RULESET, 0, 0, 1)
    except OSError as exc:
        pytest.skip(f"no Landlock here: {exc}")
    good = struct.pack("<QQQ", 1, 0, 0)  # FS_EXECUTE
    os.close(nat.syscall(_native.NR.LANDLOCK_CREATE_RULESET, good, len(good), 0))
    bad = struct.pack("<QQQ", 1 << 63, 0, 0)
    with pytest.raises(OSError) as refused:
        nat.syscall(_native.NR.LANDLOCK_CREATE_RULESET, bad, len(bad), 0)
    assert refused.value.errno == errno.EINVAL


def test_the_helper_the_zygote_made_is_the_one_every_lock_down_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_native, "_instance", None)
    monkeypatch.setattr(_native, "_frozen", None)
    _native.freeze()
    made = _native._frozen
    assert made is not None
    assert _native.native() is made
    _native.release()  # the end of one lock-down: the template stays for the next
    assert _native.native() is made
