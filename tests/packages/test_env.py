"""Per-lock environments built by real ``uv`` from a wheelhouse the tests build (no network):
conflicting versions side by side, sharing through hard links, atomic against SIGKILL,
serialised between processes, refusing a wheel that is not the locked one."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from cordon.runtime._packages import _env
from cordon.runtime._packages._env import (
    ENV_MARKER,
    PluginEnv,
    env_for,
    env_size,
    envs_disk_usage,
    prune_envs,
)
from cordon.runtime._packages._errors import EnvBuildError, LockError
from cordon.runtime._packages._lock import IndexOptions, Lock, lock_requirements

from .wheelhouse import make_wheel, standard_wheelhouse

#: A subprocess importing from an env, or building one, finishes in well under this.
CHILD_TIMEOUT = 60.0
#: Waiting for uv to reach a point of its build, or to be gone after its builder was killed.
UV_WAIT = 30.0

_BUILD_IN_CHILD = """
import sys
from pathlib import Path
import msgspec
from cordon.runtime._packages._env import env_for
from cordon.runtime._packages._lock import IndexOptions, Lock
lock = msgspec.json.decode(Path(sys.argv[1]).read_bytes(), type=Lock)
options = msgspec.json.decode(Path(sys.argv[2]).read_bytes(), type=IndexOptions)
print(env_for(lock, envs_root=Path(sys.argv[3]), cache_dir=Path(sys.argv[4]), options=options).path)
"""


class Room:
    """A wheelhouse, an envs root and a uv cache, all under one tmp_path (one filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheelhouse = standard_wheelhouse(root / "wheelhouse")
        self.envs = root / "envs"
        self.cache = root / "uv-cache"
        self.options = IndexOptions(find_links=(str(self.wheelhouse),), offline=True)

    def lock(self, *requirements: str) -> Lock:
        return lock_requirements(list(requirements), self.options)

    def env(self, lock: Lock) -> PluginEnv:
        return env_for(lock, envs_root=self.envs, cache_dir=self.cache, options=self.options)

    def child_args(self, lock: Lock) -> list[str]:
        lock_file = self.root / f"lock-{lock.content_hash()[:12]}.json"
        lock_file.write_bytes(msgspec.json.encode(lock))
        opts = self.root / "options.json"
        opts.write_bytes(msgspec.json.encode(self.options))
        args = [str(lock_file), str(opts), str(self.envs), str(self.cache)]
        return [sys.executable, "-c", _BUILD_IN_CHILD, *args]

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.envs.glob(".build-*"))


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return Room(tmp_path)


def imported(env: PluginEnv, module: str) -> str:
    """What ``module`` says its VERSION is, imported the way the worker does: an isolated
    interpreter without ``site`` that appends the env's site-packages to ``sys.path``."""
    code = f"import sys; sys.path.append({env.site_packages!r}); import {module}; "
    code += f"print({module}.VERSION)"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=True,
    )
    return out.stdout.strip()


def test_two_locks_needing_conflicting_versions_get_two_envs_each_importing_its_own(
    room: Room,
) -> None:
    old = room.env(room.lock("cordonlib==1.0"))
    new = room.env(room.lock("cordonhelper"))  # cordonhelper needs cordonlib>=1: gets 2.0

    assert old.path != new.path
    assert imported(old, "cordonlib") == "1.0"
    assert imported(new, "cordonlib") == "2.0"
    assert imported(new, "cordonhelper") == "1.0"


def test_the_same_lock_reuses_its_env_without_building_again(room: Room) -> None:
    lock = room.lock("cordonhelper")
    first = room.env(lock)
    marker = os.stat(Path(first.path) / ENV_MARKER)
    for wheel in room.wheelhouse.iterdir():  # a rebuild could not find a single wheel
        wheel.unlink()

    second = room.env(lock)

    assert second == first and first.key == lock.content_hash()
    assert os.stat(Path(second.path) / ENV_MARKER).st_ino == marker.st_ino
    assert imported(second, "cordonhelper") == "1.0"


def test_envs_sharing_a_wheel_share_its_files_through_hard_links(room: Room) -> None:
    alone = room.env(room.lock("cordonlib==1.0"))
    shared = room.env(room.lock("cordonhelper", "cordonlib<2"))

    a = os.stat(Path(alone.site_packages) / "cordonlib.py")
    b = os.stat(Path(shared.site_packages) / "cordonlib.py")
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    assert envs_disk_usage([alone, shared]) < env_size(alone) + env_size(shared)
    assert env_size(alone) > 0


def test_a_built_env_is_read_only_and_holds_no_build_leftovers(room: Room) -> None:
    env = room.env(room.lock("cordonhelper"))

    for dirpath, dirnames, filenames in os.walk(env.path):
        for name in (*dirnames, *filenames):
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert os.path.islink(os.path.join(dirpath, name)) or not mode & 0o222, name
    assert room.leftovers() == []


def test_a_pth_file_in_a_wheel_never_runs_when_the_env_is_used_as_the_worker_does(
    room: Room,
) -> None:
    ran = room.root / "pth-ran"
    hook = f"import pathlib; pathlib.Path({str(ran)!r}).write_text('x')\n".encode()
    make_wheel(room.wheelhouse, "cordonhook", "1.0", extra_files={"cordonhook.pth": hook})
    env = room.env(room.lock("cordonhook"))

    assert imported(env, "cordonhook") == "1.0"
    assert not ran.exists()
    # Control: the same env through site.addsitedir (what the worker never does) runs it.
    code = f"import site; site.addsitedir({env.site_packages!r})"
    subprocess.run([sys.executable, "-I", "-S", "-c", code], timeout=CHILD_TIMEOUT, check=True)
    assert ran.exists()


def test_the_env_installs_the_very_wheel_file_the_lock_pinned_among_several(room: Room) -> None:
    house = room.root / "tagged"
    make_wheel(house, "cordontag", "1.0", module_source="VERSION = 'pure'\n")
    options = IndexOptions(find_links=(str(house),), offline=True)
    pure = lock_requirements(["cordontag"], options)
    # The running interpreter's own CPython tag (cp311 on 3.11): a wheel for another version
    # is not installable here, and the lock would rightly pass it over.
    cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
    native_tag = f"{cp}-{cp}-manylinux_2_17_x86_64"
    make_wheel(house, "cordontag", "1.0", module_source="VERSION = 'native'\n", tag=native_tag)
    native = lock_requirements(["cordontag"], options)

    def build(lock: Lock) -> PluginEnv:
        return env_for(lock, envs_root=room.envs, cache_dir=room.cache, options=options)

    # The lock's choice is the installer's: the better-ranked wheel, installed as locked;
    # and a better wheel published after a lock does not displace the file that lock pinned.
    assert imported(build(native), "cordontag") == "native"
    assert imported(build(pure), "cordontag") == "pure"
    assert room.leftovers() == []


def test_a_lock_whose_fields_would_inject_uv_options_is_refused_before_uv_runs(
    room: Room,
) -> None:
    good = room.lock("cordonlib==1.0")
    evil = msgspec.structs.replace(good.wheels[0], version="1.0\n--index-url http://evil/simple")
    lock = msgspec.structs.replace(good, wheels=(evil,))

    with pytest.raises(LockError) as caught:
        room.env(lock)

    assert caught.value.field == "wheels[0].version"
    assert not room.envs.exists()


def test_a_lock_made_for_another_interpreter_or_platform_is_refused(room: Room) -> None:
    lock = msgspec.structs.replace(room.lock("cordonlib==1.0"), python="3.99")

    with pytest.raises(EnvBuildError, match="lock again"):
        room.env(lock)

    assert not room.envs.exists() or list(room.envs.iterdir()) == []


def test_a_uv_call_past_its_deadline_is_killed_and_leaves_nothing_under_the_key(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = room.lock("cordonlib==1.0")
    wheel = room.wheelhouse / lock.wheels[0].filename
    wheel.unlink()
    os.mkfifo(wheel)  # no writer ever comes: uv blocks until its deadline
    monkeypatch.setattr(_env, "ENV_INSTALL_TIMEOUT", 1.0)

    with pytest.raises(EnvBuildError, match="longer than 1 s"):
        room.env(lock)

    assert not (room.envs / lock.content_hash()).exists()
    assert room.leftovers() == []
    with pytest.raises(OSError) as no_reader:  # uv, its only reader, is gone
        os.close(os.open(wheel, os.O_WRONLY | os.O_NONBLOCK))
    assert no_reader.value.errno == errno.ENXIO


def test_a_wheel_swapped_after_locking_is_refused_and_nothing_is_left_under_the_key(
    room: Room,
) -> None:
    lock = room.lock("cordonhelper")
    make_wheel(room.wheelhouse, "cordonlib", "2.0", module_source="VERSION = 'evil'\n")

    with pytest.raises(EnvBuildError) as caught:
        room.env(lock)

    assert caught.value.key == lock.content_hash()
    assert "hash" in str(caught.value).lower()
    assert not (room.envs / lock.content_hash()).exists()
    assert room.leftovers() == []


def test_a_wheel_installing_a_distribution_the_lock_does_not_name_is_refused(
    room: Room,
) -> None:
    smuggled = b"Metadata-Version: 2.1\nName: cordonlib\nVersion: 9.0\n"
    make_wheel(
        room.wheelhouse,
        "cordonsneaky",
        "1.0",
        extra_files={"cordonlib-9.0.egg-info/PKG-INFO": smuggled},
    )
    lock = room.lock("cordonsneaky")

    with pytest.raises(EnvBuildError, match="does not match its lock"):
        room.env(lock)

    assert not (room.envs / lock.content_hash()).exists()
    assert room.leftovers() == []


def test_prune_removes_the_envs_not_kept_and_leaves_the_others_usable(room: Room) -> None:
    keep = room.env(room.lock("cordonlib==1.0"))
    drop = room.env(room.lock("cordonhelper"))

    assert prune_envs(room.envs, {keep.key}) == [drop.key]

    assert not Path(drop.path).exists()
    assert imported(keep, "cordonlib") == "1.0"
    assert prune_envs(room.envs, {keep.key}) == []


def test_two_processes_building_the_same_env_end_with_one_good_env(room: Room) -> None:
    lock = room.lock("cordonhelper", "cordonextra")
    args = room.child_args(lock)
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=CHILD_TIMEOUT)[0].strip() for p in procs]

    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(room.envs / lock.content_hash())
    assert room.leftovers() == []
    assert imported(room.env(lock), "cordonextra") == "1.0"


# -- SIGKILL in the middle of a build ------------------------------------------------------------


def _wait_for_reader(fifo: Path) -> int:
    """Open ``fifo`` for writing once a reader has it open (uv, hashing the "wheel"); the
    read end then blocks until this writer writes or closes."""
    deadline = time.monotonic() + UV_WAIT
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
        time.sleep(0.01)  # polling the FIFO: the kernel offers no wait for "has a reader"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.fixture
def pidfds() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def test_sigkill_mid_build_leaves_the_previous_state_intact_and_the_next_build_succeeds(
    room: Room, pidfds: list[int]
) -> None:
    before = room.env(room.lock("cordonlib==1.0"))
    lock = room.lock("cordonhelper")
    wheel = room.wheelhouse / next(w.filename for w in lock.wheels if w.name == "cordonhelper")
    good = wheel.read_bytes()
    wheel.unlink()
    os.mkfifo(wheel)  # uv blocks reading it: the build is provably mid-way when we kill

    builder = subprocess.Popen(room.child_args(lock), stdout=subprocess.DEVNULL)
    writer: int | None = None
    try:
        writer = _wait_for_reader(wheel)
        (uv,) = _children(builder.pid)
        pidfds.append(os.pidfd_open(uv))
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=CHILD_TIMEOUT)
        # uv dies with its builder (parent-death signal), not writing on as an orphan.
        assert select.select([pidfds[0]], [], [], UV_WAIT)[0], "uv outlived its killed builder"
    finally:
        if writer is not None:
            os.close(writer)  # EOF: an orphaned uv, if any, fails its hash check and exits
        if builder.poll() is None:
            builder.kill()
            builder.wait(timeout=CHILD_TIMEOUT)

    assert not (room.envs / lock.content_hash()).exists()
    assert room.leftovers() != []  # the killed build's dir, for the next build to remove
    assert imported(before, "cordonlib") == "1.0"

    wheel.unlink()
    wheel.write_bytes(good)
    after = room.env(lock)

    assert imported(after, "cordonhelper") == "1.0"
    assert room.leftovers() == []
    assert imported(before, "cordonlib") == "1.0"
