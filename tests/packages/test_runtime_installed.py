"""Installed plugins in the runtime, through real workers under ``sandbox = "strict"``: each
imports its dependencies from its own environment (conflicting versions side by side in one
runtime, ahead of a copy the host carries), and neither that environment nor its installed
version dir is writable to it; a ``.pth`` in the environment never runs; an fs-write grant
reaching the store is refused; ``Runtime.load(ID)``, ``load_all``, ``cordon call ID TOOL``,
``plugin list``/``info`` and ``stats`` see installed plugins; a hot reload follows an update.
(The store's reader and the manifest's ``dependencies``: ``test_store_reader.py``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import Runtime
from cordon.runtime._errors import ConfigError
from cordon.runtime._packages._errors import NotInstalled
from cordon.runtime._packages._install import commit, stage
from cordon.runtime._packages._lock import IndexOptions
from cordon.runtime._packages._store import (
    InstalledPlugin,
    installed,
)

from .wheelhouse import make_wheel, standard_wheelhouse

pytestmark = pytest.mark.anyio

CORDON = str(Path(sys.executable).parent / "cordon")
#: A call into a fresh strict worker (spawn, lock-down, import, answer) takes well under this.
CALL_DEADLINE = 60.0
#: ``cordon call`` as a subprocess: interpreter start, config, worker, call, exit.
CLI_TIMEOUT = 120.0
#: What the payload of the hostile ``.pth`` writes (relative: the worker's cwd is its scratch).
PTH_MARKER = "pth-ran"

PLUGIN_CODE = '''
import errno
import os
import sys

from cordon.worker import Plugin

plugin = Plugin()


@plugin.tool
def lib() -> dict:
    import cordonlib

    return {"version": cordonlib.VERSION, "file": cordonlib.__file__, "path": sys.path}


@plugin.tool
def which(module: str) -> dict:
    import importlib

    mod = importlib.import_module(module)
    return {"version": getattr(mod, "VERSION", None), "file": mod.__file__}


@plugin.tool
def here() -> dict:
    return {"cwd": os.getcwd(), "listing": sorted(os.listdir("."))}


@plugin.tool
def attempt(op: str, path: str) -> str:
    """One write-like operation on ``path``: "ok" or the errno's name."""
    try:
        if op == "create":
            with open(path, "x") as f:
                f.write("VERSION = 'poisoned'\\n")
        elif op == "append":
            with open(path, "a") as f:
                f.write("VERSION = 'poisoned'\\n")
        elif op == "truncate":
            os.truncate(path, 0)
        elif op == "unlink":
            os.unlink(path)
        elif op == "rename":
            os.rename(path, path + ".moved")
        elif op == "mkdir":
            os.mkdir(path)
        elif op == "symlink":
            os.symlink("/tmp", path)
        elif op == "chmod":
            os.chmod(path, 0o000)
        elif op == "utime":
            os.utime(path, (0, 0))
        elif op == "chown":
            os.chown(path, 12345, 12345)
        else:
            return "unknown op"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"
'''

#: What each write-like operation targets inside a read-only tree: a new name, or the
#: installed module itself (its content, its name, its metadata: chmod 000 on a hard-linked
#: file would break every env sharing it).
WRITES = [
    ("create", "new"),
    ("mkdir", "new"),
    ("symlink", "new"),
    ("append", "module"),
    ("truncate", "module"),
    ("unlink", "module"),
    ("rename", "module"),
    ("chmod", "module"),
    ("utime", "module"),
    ("chown", "module"),
]


def make_plugin(
    root: Path,
    plugin_id: str,
    dependencies: list[str],
    version: str = "1.0.0",
    permissions: tuple[str, ...] = (),
) -> Path:
    folder = root / f"{plugin_id}-src"
    folder.mkdir(parents=True)
    deps = ", ".join(json.dumps(d) for d in dependencies)
    (folder / "plugin.toml").write_text(
        "[plugin]\n"
        f'id = "{plugin_id}"\nname = "{plugin_id}"\nversion = "{version}"\n'
        f'entry = "{plugin_id}_main:plugin"\ndependencies = [{deps}]\n'
        f"permissions = {json.dumps(list(permissions))}\n"
    )
    (folder / f"{plugin_id}_main.py").write_text(PLUGIN_CODE)
    return folder


class Store:
    """A state dir with its wheelhouse (cordonlib 1.0 and 2.0, a wheel carrying a ``.pth``),
    into which plugins are installed through the real installer (uv included)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.wheelhouse = standard_wheelhouse(root / "wheelhouse")
        pth = f"import os; open(os.path.join(os.getcwd(), {PTH_MARKER!r}), 'w').close()\n"
        make_wheel(self.wheelhouse, "cordonpth", "1.0", extra_files={"zz_cordon.pth": pth.encode()})
        # A name the host's own environment also carries (a test dependency of cordon's).
        make_wheel(self.wheelhouse, "iniconfig", "0.1")
        self.options = IndexOptions(find_links=(str(self.wheelhouse),), offline=True)

    def install(
        self, plugin_id: str, *dependencies: str, permissions: tuple[str, ...] = ()
    ) -> InstalledPlugin:
        folder = make_plugin(
            self.root / "src", plugin_id, list(dependencies), permissions=permissions
        )
        _, staged = stage(
            str(folder),
            state_dir=self.state,
            trusted_keys=(),
            require_signatures=False,
            options=self.options,
        )
        return commit(staged)

    def config(self, sandbox: str = "strict") -> dict[str, Any]:
        return {
            "runtime": {"state-dir": str(self.state)},
            "defaults": {"sandbox": sandbox, "call-timeout": "30 s"},
        }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Built once for the module (each env is a real uv install): ``one`` needs cordonlib
    1.0, ``two`` cordonlib 2.0, ``pth`` cordonlib 1.0 and the wheel with the ``.pth``,
    ``shadow`` its own ``iniconfig`` (which the host's environment has too), ``perm``
    requests the storage permission. The
    tests only read it (what they try to write is refused)."""
    s = Store(tmp_path_factory.mktemp("installed"))
    s.install("one", "cordonlib==1.0")
    s.install("two", "cordonlib==2.0")
    s.install("pth", "cordonlib==1.0", "cordonpth==1.0")
    s.install("shadow", "iniconfig==0.1")
    s.install("perm", "cordonlib==1.0", permissions=("storage",))
    return s


@pytest.fixture
async def rt(store: Store) -> AsyncIterator[Runtime]:
    async with Runtime(store.config()) as runtime:
        yield runtime


async def call(rt: Runtime, plugin_id: str, tool: str, **args: Any) -> Any:
    with anyio.fail_after(CALL_DEADLINE):
        return await rt.get(plugin_id).call(tool, args)


# -- importing from its own environment -----------------------------------------------------


async def test_an_installed_plugin_loaded_by_id_imports_its_dependency_inside_the_strict_sandbox(
    rt: Runtime, store: Store
) -> None:
    record = installed(store.state, "one")
    assert record is not None and record.site_packages is not None
    handle = await rt.load("one")
    assert handle.manifest.directory == record.plugin_dir
    got = await call(rt, "one", "lib")
    assert got["version"] == "1.0"
    assert got["file"].startswith(record.site_packages + os.sep)
    # After the standard library (never shadowed), before the host's site-packages.
    at = got["path"].index(record.site_packages)
    stdlib = os.path.dirname(os.__file__)
    assert got["path"].index(stdlib) < at
    assert all(not p.endswith("site-packages") for p in got["path"][:at])
    assert handle.sandbox["landlock-fs"] == "applied"


async def test_two_installed_plugins_needing_conflicting_versions_each_import_their_own(
    rt: Runtime, store: Store
) -> None:
    await rt.load("one")
    await rt.load("two")
    one, two = installed(store.state, "one"), installed(store.state, "two")
    assert one is not None and two is not None and one.env_key != two.env_key
    assert (await call(rt, "one", "lib"))["version"] == "1.0"
    assert (await call(rt, "two", "lib"))["version"] == "2.0"
    # And again, in the other order, in the same workers: nothing leaked between them.
    assert (await call(rt, "two", "lib"))["version"] == "2.0"
    assert (await call(rt, "one", "lib"))["version"] == "1.0"


async def test_a_dependency_the_host_also_carries_comes_from_the_plugins_own_env(
    rt: Runtime, store: Store
) -> None:
    import iniconfig  # the host's copy: what an appended env would have given the plugin

    record = installed(store.state, "shadow")
    assert record is not None and record.site_packages is not None
    await rt.load("shadow")
    got = await call(rt, "shadow", "which", module="iniconfig")
    assert got == {"version": "0.1", "file": os.path.join(record.site_packages, "iniconfig.py")}
    assert got["file"] != iniconfig.__file__


async def test_cordon_run_loads_installed_plugins_which_still_need_the_operators_grants(
    store: Store,
) -> None:
    config = store.config()
    config["runtime"]["strict-permissions"] = True
    async with Runtime(config) as rt:
        with anyio.fail_after(CALL_DEADLINE):
            report = await rt.load_all(entry_points=False)
        assert {"one", "two", "pth", "shadow"} <= set(report.loaded)
        refused = {f.plugin: f for f in report.failed}
        assert set(refused) == {"perm"} and "storage" in refused["perm"].reason
        assert (await call(rt, "two", "lib"))["version"] == "2.0"
    config["plugins"] = {"perm": {"grant": ["storage"]}}
    async with Runtime(config) as rt:
        with anyio.fail_after(CALL_DEADLINE):
            report = await rt.load_all(entry_points=False)
        assert "perm" in report.loaded
        assert "storage" in rt.get("perm").permissions.effective


# -- the environment and the version dir are read-only ---------------------------------------


def _fingerprint(path: str) -> tuple[bytes, int, int, int, int]:
    """Content and the metadata a plugin could try to change (mode, owner, mtime)."""
    st = os.stat(path)
    return Path(path).read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns


def _target(base: str, what: str, module: str) -> str:
    return os.path.join(base, "planted_by_plugin.py" if what == "new" else module)


@pytest.mark.parametrize(("op", "what"), WRITES)
async def test_a_plugin_cannot_write_into_its_environment(
    rt: Runtime, store: Store, op: str, what: str
) -> None:
    record = installed(store.state, "one")
    assert record is not None and record.site_packages is not None
    await rt.load("one")
    module = os.path.join(record.site_packages, "cordonlib.py")
    before = _fingerprint(module)
    got = await call(rt, "one", "attempt", op=op, path=_target(record.site_packages, what, module))
    assert got in {"EACCES", "EROFS", "EPERM"}, got
    assert _fingerprint(module) == before
    assert not Path(record.site_packages, "planted_by_plugin.py").exists()
    # The other plugin sharing nothing still imports the genuine module, and so does this one.
    assert (await call(rt, "one", "lib"))["version"] == "1.0"


@pytest.mark.parametrize(("op", "what"), WRITES)
async def test_a_plugin_cannot_write_into_its_own_installed_version_dir(
    rt: Runtime, store: Store, op: str, what: str
) -> None:
    record = installed(store.state, "one")
    assert record is not None
    await rt.load("one")
    module = os.path.join(record.plugin_dir, "one_main.py")
    before = _fingerprint(module)
    got = await call(rt, "one", "attempt", op=op, path=_target(record.plugin_dir, what, module))
    assert got in {"EACCES", "EROFS", "EPERM"}, got
    assert _fingerprint(module) == before
    assert not Path(record.plugin_dir, "planted_by_plugin.py").exists()


async def test_without_the_sandbox_the_same_write_would_land_as_a_control(
    tmp_path: Path,
) -> None:
    # Its own store: this control really writes into the environment it was given.
    s = Store(tmp_path)
    record = s.install("one", "cordonlib==1.0")
    assert record.site_packages is not None
    async with Runtime(s.config(sandbox="off")) as rt:
        await rt.load("one")
        target = os.path.join(record.site_packages, "planted_by_plugin.py")
        assert await call(rt, "one", "attempt", op="create", path=target) == "ok"
    assert Path(target).exists()


@pytest.mark.parametrize("where", ["plugins", "envs", "uv-cache", "inside-env"])
async def test_an_fs_write_grant_reaching_the_store_is_refused_before_any_worker_starts(
    store: Store, where: str
) -> None:
    record = installed(store.state, "one")
    assert record is not None and record.site_packages is not None
    granted = {
        "plugins": store.state / "plugins",
        "envs": store.state / "envs",
        # Its files are the envs' files (hard links): writing one writes them all.
        "uv-cache": store.state / "uv-cache",
        "inside-env": Path(record.site_packages),
    }[where]
    config = store.config()
    config["plugins"] = {"one": {"fs-write": [str(granted)]}}
    async with Runtime(config) as rt:
        handle = await rt.load("one")
        with pytest.raises(ConfigError) as info, anyio.fail_after(CALL_DEADLINE):
            await handle.call("lib", {})
    assert [p["path"] for p in info.value.problems] == ["plugins.one.fs-write[0]"]


async def test_a_hot_reload_after_an_update_runs_the_new_version_in_its_new_env(
    tmp_path: Path,
) -> None:
    s = Store(tmp_path)
    first = s.install("upd", "cordonlib==1.0")
    async with Runtime(s.config()) as rt:
        await rt.load("upd")
        assert (await call(rt, "upd", "lib"))["version"] == "1.0"
        (tmp_path / "src").rename(tmp_path / "src-1")
        second_src = make_plugin(tmp_path / "src", "upd", ["cordonlib==2.0"], version="2.0.0")
        _, staged = stage(
            str(second_src),
            state_dir=s.state,
            trusted_keys=(),
            require_signatures=False,
            options=s.options,
        )
        second = commit(staged)
        assert second.env_key != first.env_key
        # Until the reload, the running worker keeps the version (and env) it started with.
        assert (await call(rt, "upd", "lib"))["version"] == "1.0"
        with anyio.fail_after(CALL_DEADLINE):
            await rt.reload("upd")
        assert rt.get("upd").manifest.version == "2.0.0"
        assert rt.get("upd").manifest.directory == second.plugin_dir
        got = await call(rt, "upd", "lib")
        assert second.site_packages is not None
        assert got["version"] == "2.0" and got["file"].startswith(second.site_packages)


# -- .pth files never run --------------------------------------------------------------------


async def test_a_pth_file_in_the_environment_never_runs_in_the_worker(
    rt: Runtime, store: Store, tmp_path: Path
) -> None:
    record = installed(store.state, "pth")
    assert record is not None and record.site_packages is not None
    assert Path(record.site_packages, "zz_cordon.pth").is_file()
    await rt.load("pth")
    assert (await call(rt, "pth", "lib"))["version"] == "1.0"
    here = await call(rt, "pth", "here")
    assert PTH_MARKER not in here["listing"]
    assert rt.state_dir is not None
    assert not (rt.state_dir / "scratch" / "pth" / PTH_MARKER).exists()
    # Control: the same environment handed to ``site`` does run it.
    subprocess.run(
        [sys.executable, "-I", "-c", f"import site; site.addsitedir({record.site_packages!r})"],
        cwd=tmp_path,
        check=True,
        timeout=CLI_TIMEOUT,
    )
    assert (tmp_path / PTH_MARKER).exists()


# -- found by id -----------------------------------------------------------------------------


async def test_loading_an_id_that_is_nowhere_is_a_typed_not_installed(rt: Runtime) -> None:
    with pytest.raises(NotInstalled) as info:
        await rt.load("nosuchplugin")
    assert info.value.plugin == "nosuchplugin"


def test_cordon_call_with_an_installed_id_runs_its_tool(store: Store, tmp_path: Path) -> None:
    config = tmp_path / "cordon.toml"
    config.write_text(f'[runtime]\nstate-dir = "{store.state}"\n[defaults]\nsandbox = "strict"\n')
    r = subprocess.run(
        [CORDON, "call", "two", "lib", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "2.0"


def _cli(tmp_path: Path, store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "cordon.toml"
    config.write_text(f'[runtime]\nstate-dir = "{store.state}"\n[defaults]\nsandbox = "strict"\n')
    return subprocess.run(
        [CORDON, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )


def test_plugin_list_shows_each_installed_plugins_version_source_signature_and_env_size(
    store: Store, tmp_path: Path
) -> None:
    r = _cli(tmp_path, store, "plugin", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert {"one", "two", "pth"} <= set(rows)
    inst = rows["two"]["installed"]
    assert inst["version"] == rows["two"]["version"] == "1.0.0"
    assert inst["source"] == str(store.root / "src" / "two-src")
    assert inst["signature"] == "unsigned" and inst["signer"] is None
    assert inst["env_bytes"] > 0
    text = _cli(tmp_path, store, "plugin", "list")
    assert text.returncode == 0, text.stderr
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("two "))
    assert "unsigned" in line and "env=" in line and "two-src" in line


def test_plugin_info_and_stats_show_what_is_installed(store: Store, tmp_path: Path) -> None:
    info = _cli(tmp_path, store, "plugin", "info", "one", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["installed"]["version"] == "1.0.0"
    stats = _cli(tmp_path, store, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    got = json.loads(stats.stdout)
    assert got["one"]["installed"]["source"] == str(store.root / "src" / "one-src")
    assert got["two"]["state"] == "active"  # started from the store, in its own env


# -- bytecode ---------------------------------------------------------------------------------

_IMPORT_AUDITED = """
import json, os, sys
from importlib.machinery import SourceFileLoader
compiled = []
sys.addaudithook(lambda e, a: compiled.append(str(a[1])) if e == "compile" else None)
sys.dont_write_bytecode = True  # as a worker: nothing may be written beside the sources
sys.path.insert(0, sys.argv[2])
import cordonlib
# The plugin's own module, read the way its import reads it, without running it (it needs
# the worker's cordon): the loader takes valid bytecode, or compiles the source.
main = os.path.join(sys.argv[1], "one_main.py")
code = SourceFileLoader("one_main", main).get_code("one_main")
compile("control = 1", "<control>", "exec")
print(json.dumps({"compiled": compiled, "plugin": main, "lib": cordonlib.__file__,
                  "shown": code.co_filename}))
"""


def test_an_installed_plugin_and_its_environment_import_from_bytecode_compiled_at_install(
    store: Store,
) -> None:
    """A worker may write neither its plugin's folder nor its env, so the installer compiles
    both: a worker's import reads bytecode and compiles nothing, and tracebacks name the
    installed files, not the staging dir they were compiled in."""
    record = installed(store.state, "one")
    assert record is not None and record.site_packages is not None
    places = [record.plugin_dir, record.site_packages]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMPORT_AUDITED, *places],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["plugin"] == os.path.join(record.plugin_dir, "one_main.py")
    assert seen["lib"].startswith(record.site_packages + os.sep)
    assert seen["shown"] == seen["plugin"]
    ours = [f for f in seen["compiled"] if f.startswith((record.plugin_dir, record.site_packages))]
    assert ours == []
    # The control: the hook does see a compile.
    assert "<control>" in seen["compiled"]
