"""A tiny classic-BPF assembler for seccomp filters, plus a reference evaluator.

Only the handful of instructions a syscall filter needs: load a 32-bit word of
``struct seccomp_data``, compare the accumulator with a constant (``jeq``/``jset``/``jge``),
jump (``ja``) and return an action. Conditional jumps are *relative forward* offsets of at
most 255 instructions (the ``jt``/``jf`` fields are bytes); ``ja``'s offset is its 32-bit
constant, still forward only (cBPF has no backward jump). :func:`assemble` resolves symbolic
labels and refuses any program whose jumps do not fit, so a filter can never silently jump
somewhere else.

:func:`evaluate` runs a program the way the kernel does (``kernel/seccomp.c`` runs cBPF over
``struct seccomp_data``); the tests use it to check the generated filter syscall by syscall
without having to trust the generator's own reading of itself.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ARCH",
    "ARG_HI",
    "ARG_LO",
    "MAX_JUMP",
    "NR",
    "Insn",
    "Label",
    "assemble",
    "evaluate",
    "ja",
    "jeq",
    "jge",
    "jset",
    "ld",
    "ret",
]

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
NR: Final = 0
ARCH: Final = 4


def ARG_LO(i: int) -> int:
    """Offset of the low 32 bits of ``args[i]`` (x86_64 is little-endian)."""
    return 16 + 8 * i


def ARG_HI(i: int) -> int:
    return 16 + 8 * i + 4


# Opcodes (include/uapi/linux/bpf_common.h): class | size | mode / class | op | src.
_LD_W_ABS: Final = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JA: Final = 0x05 | 0x00  # BPF_JMP | BPF_JA
#: The furthest a conditional jump reaches: ``jt``/``jf`` are one byte each.
MAX_JUMP: Final = 255
_JEQ_K: Final = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K: Final = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K: Final = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_RET_K: Final = 0x06 | 0x00  # BPF_RET | BPF_K


@dataclass(frozen=True)
class Label:
    name: str


@dataclass(frozen=True)
class Insn:
    code: int
    k: int
    jt: str | None = None  # label name, or None for "next instruction"
    jf: str | None = None


def ja(target: str) -> Insn:
    """Jump to ``target`` unconditionally (``jt`` holds the label; the offset goes to ``k``)."""
    return Insn(_JA, 0, target)


def ld(offset: int) -> Insn:
    return Insn(_LD_W_ABS, offset)


def jeq(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(_JEQ_K, k, jt, jf)


def jge(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(_JGE_K, k, jt, jf)


def jset(k: int, jt: str | None = None, jf: str | None = None) -> Insn:
    return Insn(_JSET_K, k, jt, jf)


def ret(action: int) -> Insn:
    return Insn(_RET_K, action)


def assemble(program: Sequence[Insn | Label]) -> list[tuple[int, int, int, int]]:
    """Resolve labels into ``(code, jt, jf, k)`` tuples; raise ``ValueError`` on any doubt."""
    where: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name!r} defined twice")
            where[item.name] = len(insns)
        else:
            insns.append(item)
    if not insns or insns[-1].code != _RET_K:
        raise ValueError("a seccomp program must end with a return")
    out: list[tuple[int, int, int, int]] = []
    for pc, insn in enumerate(insns):
        if insn.code == _JA:
            if insn.jt not in where or insn.jf is not None:
                raise ValueError(f"ja needs one defined label, got {insn.jt!r}")
            off = where[insn.jt] - pc - 1
            if off < 0:
                raise ValueError(f"jump from {pc} back to {insn.jt!r}")
            out.append((insn.code, 0, 0, off))
            continue
        offs = []
        for target in (insn.jt, insn.jf):
            if target is None:
                offs.append(0)
                continue
            if target not in where:
                raise ValueError(f"undefined label {target!r}")
            off = where[target] - pc - 1
            if not 0 <= off <= MAX_JUMP:
                raise ValueError(f"jump from {pc} to {target!r} out of range ({off})")
            offs.append(off)
        if insn.code == _RET_K and (insn.jt or insn.jf):
            raise ValueError("a return cannot jump")
        if not 0 <= insn.k <= 0xFFFFFFFF:
            raise ValueError(f"constant {insn.k:#x} is not 32-bit")
        out.append((insn.code, offs[0], offs[1], insn.k))
    if len(out) > 4096:  # BPF_MAXINSNS
        raise ValueError("program too long")
    return out


def to_bytes(program: list[tuple[int, int, int, int]]) -> bytes:
    """``struct sock_filter[]``: ``{__u16 code; __u8 jt; __u8 jf; __u32 k;}`` each."""
    return b"".join(struct.pack("<HBBI", code, jt, jf, k) for code, jt, jf, k in program)


def evaluate(
    program: list[tuple[int, int, int, int]],
    *,
    nr: int,
    arch: int,
    args: Sequence[int] = (),
    ip: int = 0,
    trace: list[int] | None = None,
) -> int:
    """Run ``program`` over a ``seccomp_data`` the way the kernel would; return the action.
    ``trace`` receives the index of each instruction run, in order."""
    full = [*args, *([0] * (6 - len(args)))]
    data = struct.pack("<iIQ6Q", nr, arch, ip, *full)
    acc = 0
    pc = 0
    while True:
        if trace is not None:
            trace.append(pc)
        code, jt, jf, k = program[pc]
        if code == _LD_W_ABS:
            if k % 4 or k + 4 > len(data):
                raise ValueError(f"bad load offset {k}")
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == _JA:
            pc += 1 + k
        elif code in (_JEQ_K, _JGE_K, _JSET_K):
            if code == _JEQ_K:
                taken = acc == k
            elif code == _JGE_K:
                taken = acc >= k
            else:
                taken = bool(acc & k)
            pc += 1 + (jt if taken else jf)
        elif code == _RET_K:
            return k
        else:
            raise ValueError(f"unknown opcode {code:#x}")
