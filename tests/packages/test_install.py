"""Installing from a URL (a loopback HTTP server stands in for the publisher), and an
interrupted install: ``cordon plugin install`` SIGKILLed at each moment of an update
leaves the previous version whole (or, once ``current`` is swapped, the new one whole), and
the next install sweeps what the killed one left and succeeds.

The moments: as soon as its staging dir appears; while its ``uv`` is downloading a wheel (a
loopback find-links server holds the download until the test has killed the installer); and at
the named points of the installer's documented test hook (``CORDON_TEST_INSTALL_PAUSE``):
after staging, after the env build, right before ``.state.json`` is replaced, and right
after. ``cordon plugin rollback`` is SIGKILLed at each of its points too (lock taken, right
before and right after its one write): the pointers are the old pair or the swapped pair,
never both naming one version, and a rollback afterwards works.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cordon.runtime._packages._install import PAUSE_ENV
from cordon.runtime._packages._store import InstalledPlugin, installed, previous
from tests.packages.installing import (
    CORDON,
    Room,
    assert_nothing_placed,
    leftovers,
    make_room,
    one_line_error,
    pack_plugin,
    plugin_folder,
)

#: How long the installer may take to reach a point (a cold uv on a loaded box).
REACH_DEADLINE = 60.0


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return make_room(tmp_path)


@pytest.fixture
def updating(room: Room) -> tuple[Room, Path]:
    """1.0.0 installed (env with cordonlib 1.0); 2.0.0's folder, locked, needing cordonlib 2.0."""
    v1 = plugin_folder(room.root, "alpha", "1.0.0", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "install", str(v1), "--yes").returncode == 0
    v2 = plugin_folder(room.root, "alpha", "2.0.0", dependencies=("cordonlib==2.0",))
    assert room.cordon("plugin", "lock", str(v2)).returncode == 0
    return room, v2


def _start(
    room: Room, source: Path, *index: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return _start_cli(room, "install", str(source), "--yes", *index, env=env)


def _start_cli(
    room: Room, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CORDON, "plugin", *args, "--config", str(room.config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=room.root,
    )


def _wait_for(proc: subprocess.Popen[bytes], what: str, found: object) -> None:
    deadline = time.monotonic() + REACH_DEADLINE
    while not found():  # type: ignore[operator]
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            _kill(proc)
            raise AssertionError(f"the installer exited ({proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError(f"the installer did not reach {what} in {REACH_DEADLINE} s")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def _whole(record: InstalledPlugin | None, version: str, lib: str) -> None:
    """The record, its version dir and its env all agree and are complete."""
    assert record is not None and record.version == version
    assert (Path(record.plugin_dir) / "alpha_main.py").is_file()
    assert f'version = "{version}"' in (Path(record.plugin_dir) / "plugin.toml").read_text()
    assert record.site_packages is not None
    assert f'VERSION = "{lib}"' in (Path(record.site_packages) / "cordonlib.py").read_text()


def _then_install_succeeds(room: Room, v2: Path) -> None:
    proc = room.cordon("plugin", "install", str(v2), "--yes")
    assert proc.returncode == 0, proc.stderr
    _whole(installed(room.state, "alpha"), "2.0.0", "2.0")
    _whole(previous(room.state, "alpha"), "1.0.0", "1.0")
    assert list((room.state / "plugins" / ".staging").iterdir()) == []
    # Nothing but the two versions (dirs, records), their pointers and their two envs.
    top = {p.split("/")[2] for p in leftovers(room.state) if p.startswith("plugins/alpha/")}
    assert top == {"1.0.0", "1.0.0.json", "2.0.0", "2.0.0.json", ".state.json"}
    assert len([p for p in leftovers(room.state) if p.startswith("envs/")]) == 2


@pytest.mark.parametrize("point", ["staged", "env-built", "before-swap", "after-swap"])
def test_a_sigkill_at_each_named_point_of_an_update_leaves_a_whole_version(
    updating: tuple[Room, Path], point: str
) -> None:
    room, v2 = updating
    index = ("--find-links", str(room.wheelhouse), "--offline")
    proc = _start(room, v2, *index, env={PAUSE_ENV: point})
    marker = room.state / "plugins" / ".staging" / f"paused-{point}"
    _wait_for(proc, point, marker.exists)
    _kill(proc)
    if point == "after-swap":  # current was swapped: the new version, whole
        _whole(installed(room.state, "alpha"), "2.0.0", "2.0")
    else:
        _whole(installed(room.state, "alpha"), "1.0.0", "1.0")
    _then_install_succeeds(room, v2)


@pytest.mark.parametrize(
    "point", ["rollback-locked", "rollback-before-swap", "rollback-after-swap"]
)
def test_a_sigkill_at_each_point_of_a_rollback_leaves_both_versions_named_and_rollback_works(
    updating: tuple[Room, Path], point: str
) -> None:
    room, v2 = updating
    assert room.cordon("plugin", "install", str(v2), "--yes").returncode == 0
    proc = _start_cli(room, "rollback", "alpha", env={PAUSE_ENV: point})
    marker = room.state / "plugins" / ".staging" / f"paused-{point}"
    _wait_for(proc, point, marker.exists)
    _kill(proc)
    swapped = point == "rollback-after-swap"
    now, before = ("1.0.0", "2.0.0") if swapped else ("2.0.0", "1.0.0")
    lib = {"1.0.0": "1.0", "2.0.0": "2.0"}
    _whole(installed(room.state, "alpha"), now, lib[now])
    _whole(previous(room.state, "alpha"), before, lib[before])
    # The next rollback swaps them (nothing was lost), and the one after swaps them back.
    for expected, other in ((before, now), (now, before)):
        done = room.cordon("plugin", "rollback", "alpha", index=False)
        assert done.returncode == 0, done.stderr
        _whole(installed(room.state, "alpha"), expected, lib[expected])
        _whole(previous(room.state, "alpha"), other, lib[other])


def test_a_sigkill_as_soon_as_the_staging_dir_appears_leaves_the_previous_version(
    updating: tuple[Room, Path],
) -> None:
    room, v2 = updating
    staging = room.state / "plugins" / ".staging"
    proc = _start(room, v2, "--find-links", str(room.wheelhouse), "--offline")
    _wait_for(proc, "staging", lambda: any(staging.glob("install-*")))
    _kill(proc)
    _whole(installed(room.state, "alpha"), "1.0.0", "1.0")
    _then_install_succeeds(room, v2)


class _HeldWheels(http.server.SimpleHTTPRequestHandler):
    """A find-links server whose wheel downloads wait until the test releases them."""

    release = threading.Event()
    requested = threading.Event()

    def do_GET(self) -> None:
        if self.path.endswith(".whl"):
            type(self).requested.set()
            type(self).release.wait(REACH_DEADLINE)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def _uv_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm == "uv":
            found.append(int(entry.name))
    return found


def test_a_sigkill_while_uv_downloads_a_wheel_leaves_the_previous_version_and_no_uv(
    updating: tuple[Room, Path],
) -> None:
    room, v2 = updating
    wheelhouse = str(room.wheelhouse)

    class Handler(_HeldWheels):
        release = threading.Event()
        requested = threading.Event()

        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=wheelhouse, **kw)  # type: ignore[arg-type]

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        proc = _start(room, v2, "--find-links", url)
        _wait_for(proc, "uv's wheel download", Handler.requested.is_set)
        uvs = _uv_children(proc.pid)
        assert uvs, "uv is the one downloading"
        _kill(proc)
        # uv dies with its builder (parent-death signal): nothing keeps writing into the state.
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{u}").exists() for u in uvs):
            assert time.monotonic() < deadline, f"uv {uvs} outlived the killed installer"
            time.sleep(0.01)
    finally:
        Handler.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    _whole(installed(room.state, "alpha"), "1.0.0", "1.0")
    _then_install_succeeds(room, v2)


def test_a_sigkilled_first_install_leaves_nothing_installed_and_the_retry_succeeds(
    room: Room,
) -> None:
    folder = plugin_folder(room.root, "alpha", dependencies=("cordonlib==1.0",))
    index = ("--find-links", str(room.wheelhouse), "--offline")
    proc = _start(room, folder, *index, env={PAUSE_ENV: "before-swap"})
    marker = room.state / "plugins" / ".staging" / "paused-before-swap"
    _wait_for(proc, "before-swap", marker.exists)
    _kill(proc)
    assert installed(room.state, "alpha") is None
    proc2 = room.cordon("plugin", "install", str(folder), "--yes")
    assert proc2.returncode == 0, proc2.stderr
    rec = installed(room.state, "alpha")
    assert rec is not None and previous(room.state, "alpha") is None
    assert list((room.state / "plugins" / ".staging").iterdir()) == []


# -- downloads ----------------------------------------------------------------------------------


class _Server:
    def __init__(self, root: Path, headers: dict[str, str] | None = None) -> None:
        extra = headers or {}

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: object, **kw: object) -> None:
                super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

            def end_headers(self) -> None:
                for k, v in extra.items():
                    self.send_header(k, v)
                super().end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def served(room: Room) -> Iterator[tuple[_Server, Path]]:
    package = pack_plugin(room, plugin_folder(room.root, "alpha", dependencies=("cordonlib==1.0",)))
    with _Server(package.parent) as server:
        yield server, package


def test_a_package_downloads_from_a_loopback_server_when_explicitly_allowed(
    room: Room, served: tuple[_Server, Path]
) -> None:
    server, package = served
    url = f"http://127.0.0.1:{server.port}/{package.name}"
    proc = room.cordon("plugin", "install", url, "--yes", "--allow-insecure-localhost")
    assert proc.returncode == 0, proc.stderr
    rec = installed(room.state, "alpha")
    assert rec is not None and rec.source == url
    assert list((room.state / "plugins" / ".staging").iterdir()) == []


def test_a_plain_http_url_is_refused_without_the_explicit_flag(
    room: Room, served: tuple[_Server, Path]
) -> None:
    server, package = served
    for url in (
        f"http://127.0.0.1:{server.port}/{package.name}",
        f"http://localhost:{server.port}/{package.name}",
        f"ftp://127.0.0.1:{server.port}/{package.name}",
    ):
        proc = room.cordon("plugin", "install", url, "--yes")
        one_line_error(proc, 22, "PackageInvalid", "only https://")
    # The flag admits 127.0.0.1 only, never another http host.
    url = f"http://localhost:{server.port}/{package.name}"
    proc = room.cordon("plugin", "install", url, "--yes", "--allow-insecure-localhost")
    one_line_error(proc, 22, "PackageInvalid", "only https://")
    assert_nothing_placed(room)


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Sends every request to ``location`` (set per test)."""

    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", type(self).location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirect_to_another_plain_http_host_is_refused(
    room: Room, served: tuple[_Server, Path]
) -> None:
    server, package = served

    class Handler(_Redirect):
        location = f"http://localhost:{server.port}/{package.name}"

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{package.name}"
        proc = room.cordon("plugin", "install", url, "--yes", "--allow-insecure-localhost")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    one_line_error(proc, 22, "PackageInvalid", "only https://", "localhost")
    assert_nothing_placed(room)


class _Huge(http.server.BaseHTTPRequestHandler):
    """Claims a terabyte, sends a few bytes, then holds the connection open."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(b"PK")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


def test_a_download_announcing_more_than_the_cap_is_refused_before_it_is_read(
    room: Room,
) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Huge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/big.cordon"
        proc = room.cordon("plugin", "install", url, "--yes", "--allow-insecure-localhost")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    one_line_error(proc, 22, "PackageInvalid", "larger than", str(10**12))
    assert_nothing_placed(room)


def test_a_missing_download_is_refused_naming_the_http_error(
    room: Room, served: tuple[_Server, Path]
) -> None:
    server, package = served
    url = f"http://127.0.0.1:{server.port}/{package.name}-missing"
    proc = room.cordon("plugin", "install", url, "--yes", "--allow-insecure-localhost")
    one_line_error(proc, 22, "PackageInvalid", "download failed", "404")
    assert_nothing_placed(room)
