"""Where an idle worker's unique memory goes: forked from the zygote against spawned, phase by
phase.

    .venv/bin/python benchmarks/bench_worker_memory.py [--workers 6] [--calls 100]

Each launcher starts ``--workers`` hello workers under ``sandbox = "strict"`` (Landlock,
seccomp, namespaces; no cgroup: that is the host's, and costs the worker nothing), all alive
together as in a fleet, and this script speaks the protocol to each itself so it can stop
between the steps of the launch and read ``/proc/<pid>/smaps``:

* ``forked``: the hello is sent, the worker waits for its ``initialize``;
* ``locked down``: limits and lock-down applied (the ``locked-down`` notification came), the
  plugin's module begun and held at its first line (it opens a FIFO in its own directory and
  waits for the script to write to it);
* ``ready``: the plugin imported, ``initialize`` answered;
* ``activated``: ``activate`` answered;
* ``1st call``: one ``greet`` answered;
* ``idle``: ``--calls`` more answered, then left alone (what a fleet of idle workers holds).

Printed per phase: the median USS (private pages: what the worker alone costs; pages shared
with the zygote or with siblings cost nothing per worker), then for ``idle`` where the
private pages are: the brk heap, the anonymous mappings (CPython's obmalloc arenas, 1 MiB
each, and mmap'd blocks), libpython's data and bss (its static objects: small ints, static
types, the interpreter state, the deep-frozen stdlib code), the other libraries' data, the
stack, plus the worker's thread count. For forked workers (run as root: the zygote is not
dumpable), their private pages compared with the zygote's page at the same address: most
are copies that differ by a refcount or two, or not at all (CPython 3.11 writes an object's
refcount whenever it is used, and a page written once is copied for good). Medians over the
workers; the first forked worker is the zygote's first child, the others follow it as in a
fleet.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import select
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import _zygote_objects  # this directory's (the script's own sys.path entry)
import anyio
import msgspec

from cordon.protocol import (
    ACTIVATE,
    HELLO,
    INITIALIZE,
    INVOKE,
    LOCKED_DOWN,
    PROTOCOL_VERSION,
    FrameSplitter,
    InitializeParams,
    InvokeParams,
    Notification,
    Response,
    SandboxPolicy,
    decode_frame,
    encode_request,
)
from cordon.runtime._supervise import _zygote as _zygote_launcher
from cordon.runtime._supervise._launcher import LaunchedProcess, SpawnLauncher, StdioPipes
from cordon.runtime._supervise._worker_life import (
    ENV_ALLOWLIST,
    MALLOC_ARENA_MAX,
    MALLOC_TUNING,
)
from cordon.runtime._supervise._zygote import ZygoteLauncher

#: Each answer the script waits for: a worker's start is ~100 ms spawned on a quiet machine.
ANSWER_DEADLINE: Final = 60.0
PAGE: Final = 4096
PHASES: Final = ("forked", "locked down", "ready", "activated", "1st call", "idle")

#: The plugin: scale.py's fleet hello, its module held at its first line by a FIFO.
PLUGIN = """\
import os

with open(os.path.join(os.path.dirname(__file__), "gate"), "rb") as _gate:
    _gate.read(1)

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}"
"""


class Peer:
    """The host's end of one worker's channel, synchronous: this script waits for each
    answer before it looks at the worker's memory."""

    def __init__(self, process: LaunchedProcess, pipes: StdioPipes) -> None:
        self.process = process
        self.wfd, self.rfd = pipes.wfd, pipes.rfd
        pipes.wfd = pipes.rfd = -1
        self.splitter = FrameSplitter()
        self.frames: collections.deque[bytes] = collections.deque()
        self.next_id = 0

    def send(self, method: str, params: Any) -> int:
        self.next_id += 1
        os.write(self.wfd, encode_request(self.next_id, method, params))
        return self.next_id

    def wait_for(self, *, answer: int | None = None, note: str | None = None) -> Any:
        deadline = time.monotonic() + ANSWER_DEADLINE
        while True:
            while self.frames:
                msg = decode_frame(self.frames.popleft())
                if isinstance(msg, Response) and msg.id == answer:
                    if msg.error is not None:
                        raise RuntimeError(f"worker {self.process.pid}: {msg.error}")
                    return msg.result
                if isinstance(msg, Notification) and msg.method == note:
                    return msg.params
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"worker {self.process.pid}: nothing after {ANSWER_DEADLINE} s")
            data = os.read(self.rfd, 65536)
            if not data:
                raise RuntimeError(f"worker {self.process.pid} exited: {self.process.poll()}")
            self.frames.extend(f for f in self.splitter.feed(data) if isinstance(f, bytes))

    def call(self, method: str, params: Any) -> Any:
        return self.wait_for(answer=self.send(method, params))

    def close(self) -> None:
        for fd in (self.wfd, self.rfd):
            os.close(fd)


def private_kib(pid: int) -> dict[str, int]:
    """Private pages (dirty or clean) of ``pid`` in KiB, per kind of mapping."""
    kinds: collections.Counter[str] = collections.Counter()
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if not head.endswith(":"):
                fields = rest.split()
                name = fields[4] if len(fields) > 4 else ""
                if name == "[heap]":
                    kind = "heap"
                elif name == "[stack]":
                    kind = "stack"
                elif not name:
                    kind = "anon"
                elif "libpython" in name:
                    kind = "libpython"
                else:
                    kind = "other libs"
            elif head in ("Private_Dirty:", "Private_Clean:"):
                kinds[kind] += int(rest.split()[0])
    kinds["USS"] = sum(kinds.values())
    return dict(kinds)


def page_diffs(pid: int, zygote: int) -> dict[int, list[int] | None] | None:
    """A forked worker's private pages (pagemap: present, mapped once), each with the
    addresses of the words that differ from the zygote's page at the same address (empty:
    written and written back, a refcount up and down), or ``None`` where the zygote has no
    such page (the worker's own mapping). ``None`` without the right to read the zygote's
    memory (it is not dumpable: root only)."""
    pages: dict[int, list[int] | None] = {}
    try:
        with (
            open(f"/proc/{pid}/maps") as maps,
            open(f"/proc/{pid}/pagemap", "rb") as pagemap,
            open(f"/proc/{pid}/mem", "rb") as mine,
            open(f"/proc/{zygote}/mem", "rb") as theirs,
        ):
            for line in maps:
                fields = line.split()
                if not fields[1].startswith("rw"):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek(lo // PAGE * 8)
                entries = pagemap.read((hi - lo) // PAGE * 8)
                for i in range(len(entries) // 8):
                    bits = int.from_bytes(entries[i * 8 : i * 8 + 8], "little")
                    if not (bits >> 63 & 1 and bits >> 56 & 1):  # present, exclusive
                        continue
                    addr = lo + i * PAGE
                    mine.seek(addr)
                    page = mine.read(PAGE)
                    try:
                        theirs.seek(addr)
                        template = theirs.read(PAGE)
                    except OSError:
                        template = b""
                    if len(template) != PAGE:
                        pages[addr] = None
                        continue
                    pages[addr] = [
                        addr + w
                        for w in range(0, PAGE, 8)
                        if page[w : w + 8] != template[w : w + 8]
                    ]
    except PermissionError:
        return None
    return pages


def against_template(pages: dict[int, list[int] | None]) -> dict[str, int]:
    """:func:`page_diffs`'s pages sorted by how they differ from the zygote's: identical
    (written and written back: a refcount up and down), a few words apart (a refcount or
    two that moved), or more (the worker's own data)."""
    kinds = {"identical": 0, "<= 16 words": 0, "more": 0}
    for words in pages.values():
        n = len(words) if words is not None else PAGE
        kinds["identical" if not n else "<= 16 words" if n <= 16 else "more"] += 1
    return kinds


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def worker_env(home: str) -> dict[str, str]:
    """A worker's environment as the runtime makes it (``_worker_life``)."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(PATH="/usr/bin:/bin", HOME=home, TMPDIR=home, CORDON_HOST_PID=str(os.getpid()))
    env["MALLOC_ARENA_MAX"] = MALLOC_ARENA_MAX
    env.update(MALLOC_TUNING)
    return env


def make_plugin(where: Path) -> Path:
    where.mkdir()
    (where / "plugin.toml").write_text("")  # the script is the host: no manifest is read
    (where / "gated.py").write_text(PLUGIN)
    os.mkfifo(where / "gate")
    return where


async def start(launcher: Any, home: Path) -> Peer:
    pipes = StdioPipes()
    argv = [sys.executable, "-I", "-m", "cordon.worker"]
    try:
        process = await launcher.start(argv, env=worker_env(str(home)), cwd=str(home), pipes=pipes)
    except BaseException:
        pipes.close_all()
        raise
    peer = Peer(process, pipes)
    pipes.close_all()
    return peer


def run_phases(
    peer: Peer,
    plugin: Path,
    scratch: Path,
    calls: int,
    zygote: int | None,
    watch: Callable[[str], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Each phase's :func:`private_kib`; ``watch(phase)`` is called right after each."""
    pid = peer.process.pid
    seen: dict[str, dict[str, int]] = {}

    def snap(phase: str) -> None:
        seen[phase] = private_kib(pid)
        if watch is not None:
            watch(phase)

    peer.wait_for(note=HELLO)
    snap("forked")
    init = InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id=plugin.name,
        plugin_dir=str(plugin),
        entry="gated:plugin",
        scratch_dir=str(scratch),
        sandbox=SandboxPolicy(mode="strict"),
        host_pid=os.getpid(),
    )
    ident = peer.send(INITIALIZE, init)
    peer.wait_for(note=LOCKED_DOWN)
    # The plugin's first line opens the FIFO: wait until it has (a writer's open would
    # otherwise block until it does), then measure, then let it go.
    gate = os.open(plugin / "gate", os.O_WRONLY)
    snap("locked down")
    os.write(gate, b"x")
    os.close(gate)
    peer.wait_for(answer=ident)
    snap("ready")
    peer.call(ACTIVATE, None)
    snap("activated")
    greet = InvokeParams(name="greet", arguments=msgspec.Raw(b'{"name":"x"}'))
    peer.call(INVOKE, greet)
    snap("1st call")
    for _ in range(calls):
        peer.call(INVOKE, greet)
    snap("idle")
    seen["idle"]["threads"] = threads(pid)
    if zygote is not None:
        pages = page_diffs(pid, zygote)
        seen["pages"] = against_template(pages) if pages is not None else {}
    return seen


async def stop(peers: list[Peer]) -> None:
    for peer in peers:
        peer.close()  # EOF on its stdin: a worker leaves at once
    for peer in peers:
        with anyio.fail_after(ANSWER_DEADLINE):
            await peer.process.wait()
        await peer.process.aclose()


class Attribution:
    """``--objects``: after each phase, the pages one forked worker copied since the phase
    before, and the zygote's objects written on them (``_zygote_objects.py``)."""

    def __init__(self, objects_file: Path) -> None:
        self.file = objects_file
        self.objects: _zygote_objects.ObjectMap | None = None
        self.before: set[int] = set()
        self.rows: list[tuple[str, int, dict[str, Any]]] = []

    def watcher(self, pid: int, zygote: int) -> Callable[[str], None]:
        def watch(phase: str) -> None:
            if self.objects is None:
                self.objects = _zygote_objects.load(str(self.file))
            pages = page_diffs(pid, zygote) or {}
            new = {a: w for a, w in pages.items() if a not in self.before}
            self.before = set(pages)
            written = {a: w for a, w in new.items() if w}
            self.rows.append((phase, len(new), _zygote_objects.attribute(self.objects, written)))

        return watch

    def show(self) -> None:
        print("\na forked worker's pages copied from the zygote, by phase, and what was written")
        print("(pages written and written back, a refcount up and down, show no writer)")
        for phase, count, found in self.rows:
            print(f"\n{phase}: {count} pages")
            for title, rows in found.items():
                print(f"  {title}: " + ", ".join(f"{what} {n}" for what, n in rows))


@contextlib.contextmanager
def object_mapping_zygote(objects_file: Path) -> Iterator[None]:
    """The zygote launcher starts ``_zygote_objects.py`` instead, for this run only."""
    names = vars(_zygote_launcher)
    spawn = names["spawn"]
    script = str(Path(__file__).with_name("_zygote_objects.py"))

    def mapping_zygote(argv: list[str], **kwargs: Any) -> Any:
        return spawn([argv[0], "-I", script, argv[-1], str(objects_file)], **kwargs)

    names["spawn"] = mapping_zygote
    try:
        yield
    finally:
        names["spawn"] = spawn


async def measure(
    name: str, workers: int, calls: int, root: Path, attribution: Attribution | None = None
) -> list[dict[str, Any]]:
    launcher: Any = ZygoteLauncher() if name == "zygote" else SpawnLauncher()
    peers: list[Peer] = []
    results = []
    try:
        for i in range(workers):
            home = root / f"{name}-{i}"
            home.mkdir()
            plugin = make_plugin(home / "plugin")
            scratch = home / "scratch"
            scratch.mkdir()
            peer = await start(launcher, home)
            peers.append(peer)
            if peer.process.launcher != name:
                raise RuntimeError(f"asked for {name}, got {peer.process.launcher}")
            zygote = getattr(launcher, "pid", None)
            # The second child: the first may still pay for the zygote's own first fork.
            watch = None
            if attribution is not None and zygote is not None and i == 1:
                watch = attribution.watcher(peer.process.pid, zygote)
            results.append(run_phases(peer, plugin, scratch, calls, zygote, watch))
    finally:
        await stop(peers)
        await launcher.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument(
        "--objects",
        action="store_true",
        help="name the zygote's objects each phase's copied pages hold (root)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cordon-mem-") as tmp:
        attribution = Attribution(Path(tmp) / "objects.json") if args.objects else None
        with (
            object_mapping_zygote(Path(tmp) / "objects.json")
            if attribution
            else contextlib.nullcontext()
        ):
            forked = anyio.run(measure, "zygote", args.workers, args.calls, Path(tmp), attribution)
        runs = {
            "zygote": forked,
            "spawn": anyio.run(measure, "spawn", args.workers, args.calls, Path(tmp)),
        }
    print(f"USS per worker, KiB (median of {args.workers} workers each)")
    print(f"{'phase':<12}" + "".join(f"{name:>10}" for name in runs))
    for phase in PHASES:
        cells = [statistics.median(r[phase]["USS"] for r in rs) for rs in runs.values()]
        print(f"{phase:<12}" + "".join(f"{c:>10.0f}" for c in cells))
    kinds = ("heap", "anon", "libpython", "other libs", "stack", "threads")
    print(
        f"\nidle, by kind (KiB; threads: count)\n{'kind':<12}" + "".join(f"{n:>10}" for n in runs)
    )
    for kind in kinds:
        cells = [statistics.median(r["idle"].get(kind, 0) for r in rs) for rs in runs.values()]
        print(f"{kind:<12}" + "".join(f"{c:>10.0f}" for c in cells))
    pages = [r["pages"] for r in runs["zygote"] if r.get("pages")]
    if pages:
        print("\nan idle forked worker's private pages against the zygote's (median count)")
        for kind in pages[0]:
            print(f"  {kind:<14}{statistics.median(p[kind] for p in pages):>8.0f}")
    else:
        print("\n(the zygote's memory is not readable here: run as root to compare pages)")
    if attribution is not None:
        attribution.show()


if __name__ == "__main__":
    main()
