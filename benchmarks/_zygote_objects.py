"""Which of the zygote's objects a forked worker copies: ``python -I
benchmarks/_zygote_objects.py FD MAP`` is ``cordon.worker._zygote`` that, just before its
first fork, has a throwaway fork of itself write a map of its heap to the file ``MAP``
(``bench_worker_memory.py --objects`` runs it, then reads the map with :func:`load`).

The map lists every object reachable from the garbage collector's lists (``gc.unfreeze`` in
the throwaway: frozen objects are not in them), with the ``gc.get_referents`` closure for the
untracked ones (strings, ints, code's bytes): address, GC header size, size, type, a label
(module, qualified name, string head). The throwaway has the zygote's heap page for page (a
fork), so addresses are the zygote's; the zygote itself allocates nothing for the map.
:func:`attribute` then names, for each word a worker changed on a page it copied from the
zygote, the object it lies in. Measurement only: nothing here is part of cordon.
"""

from __future__ import annotations

import bisect
import collections
import gc
import json
import os
import sys
import types
from typing import Any

from cordon.worker import _zygote

#: ``(address, GC header bytes, size, type name, label)`` per object.
Row = tuple[int, int, int, str, str]
_HEAD = 40  # characters of a string's repr kept as its label
TOP = 12  # rows printed per list
_GC_FLAG = 1 << 14  # Py_TPFLAGS_HAVE_GC


def _label(o: Any) -> str:
    try:
        if isinstance(o, types.FunctionType | type):
            return f"{o.__module__}.{o.__qualname__}"
        if isinstance(o, types.CodeType):
            return f"{o.co_filename.rsplit('/', 1)[-1]}:{o.co_qualname}"
        if isinstance(o, types.ModuleType):
            return o.__name__
        if isinstance(o, str | bytes | int | float):
            return repr(o)[:_HEAD]
    except Exception:  # a hostile __getattr__ cannot be here, but a broken one can
        return ""
    return getattr(o, "__qualname__", "") if isinstance(getattr(o, "__qualname__", 0), str) else ""


def _rows() -> list[Row]:
    gc.unfreeze()
    seen: dict[int, Any] = {}
    stack: list[Any] = [*gc.get_objects(), sys.modules]
    while stack:
        o = stack.pop()
        if id(o) not in seen:
            seen[id(o)] = o
            stack.extend(gc.get_referents(o))
    owners = {id(m.__dict__): f"module dict {m.__name__}" for m in list(sys.modules.values())}
    rows: list[Row] = []
    for addr, o in seen.items():
        t = type(o)
        head = 16 if t.__flags__ & _GC_FLAG else 0
        # A dict's, list's or set's items live in a block of their own: its header only.
        size = t.__basicsize__ if isinstance(o, dict | list | set | frozenset) else 0
        if not size:
            try:
                size = sys.getsizeof(o) - head
            except TypeError:
                size = t.__basicsize__
        rows.append((addr, head, size, t.__qualname__, owners.get(addr) or _label(o)))
    return rows


def _clone_mapping(path: str) -> Any:
    clone = _zygote.clone_parent
    done = False

    def first_maps(tid_addr: int) -> int:
        nonlocal done
        if not done:
            done = True
            pid = os.fork()
            if pid == 0:
                try:
                    with open(path, "w") as f:
                        json.dump(_rows(), f)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        return clone(tid_addr)

    return first_maps


class ObjectMap:
    """The zygote's objects by address."""

    def __init__(self, rows: list[Row]) -> None:
        rows.sort()
        self.rows = rows
        self.starts = [r[0] - r[1] for r in rows]
        self.at = {r[0]: r for r in rows}

    def owner(self, addr: int) -> tuple[str, str, str]:
        """``("refcount", type, label)`` for a word at an object's address, ``("in", type,
        label)`` for a word inside one (a code object's counters, a type's caches, ...),
        ``("?", "", "")`` outside every object (a dict's or list's items, malloc'd buffers,
        the interpreter's static data)."""
        row = self.at.get(addr)
        if row is not None:
            return "refcount", row[3], row[4]
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and self.starts[i] <= addr < self.rows[i][0] + self.rows[i][2]:
            return "in", self.rows[i][3], self.rows[i][4]
        return "?", "", ""


def load(path: str) -> ObjectMap:
    with open(path) as f:
        return ObjectMap([(a, h, s, t, lab) for a, h, s, t, lab in json.load(f)])


def attribute(objects: ObjectMap, changed: dict[int, list[int]]) -> dict[str, Any]:
    """For pages a worker copied (page address -> addresses of the words that differ from the
    zygote's page): per page, the types of the objects written on it (a page written and
    written back, a refcount up and down, shows none), and the objects written most."""
    per_page: collections.Counter[str] = collections.Counter()
    words: collections.Counter[str] = collections.Counter()
    for addrs in changed.values():
        owners = [objects.owner(a) for a in addrs]
        words.update(" ".join(o).strip() for o in owners)
        per_page.update({f"{how} {kind}".strip() for how, kind, _ in owners})
    return {"pages by writer": per_page.most_common(TOP), "words by object": words.most_common(TOP)}


def main() -> None:
    path = sys.argv.pop(2)  # the zygote itself reads only its socket's fd
    _zygote.clone_parent = _clone_mapping(path)
    _zygote.main()


if __name__ == "__main__":
    main()
