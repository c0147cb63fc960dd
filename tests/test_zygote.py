"""The zygote: workers forked from a template process are the host's own children, hold
nothing of the template (no fd, no shared random state), cannot reach it, and are locked down
like spawned ones; a zygote that dies or wedges costs the next start a spawn, never the start.

The sandbox, quota, crash, cgroup and spare suites run against forked workers by default
(and under ``CORDON_LAUNCHER=spawn`` in CI); these tests are about the fork itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
import pytest

from cordon.protocol import PROTOCOL_VERSION, InitializeParams, SandboxPolicy
from cordon.runtime import Runtime
from cordon.runtime._supervise import _zygote
from cordon.runtime._supervise._launcher import zygote_unsupported
from cordon.runtime._supervise._worker import WorkerProcess
from cordon.runtime._supervise._zygote import ZygoteLauncher
from tests.conftest import TEST_PLUGINS, base_config
from tests.test_launcher import _probe_params

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(zygote_unsupported() is not None, reason=str(zygote_unsupported())),
]

WITNESS = TEST_PLUGINS / "fork_witness"
PROBE = TEST_PLUGINS / "probe"


def _config(tmp_path: Path, launcher: str = "zygote", **defaults: Any) -> dict[str, Any]:
    config = base_config(tmp_path, **defaults)
    config["runtime"] = {**config["runtime"], "launcher": launcher}  # type: ignore[dict-item]
    return config


def _zygote_of(rt: Runtime) -> ZygoteLauncher:
    assert isinstance(rt.launcher, ZygoteLauncher)
    return rt.launcher


def _zygote_socket_inode(pid: int) -> int:
    """The inode of the zygote's end of its control socket (fd 3), as the host sees it."""
    link = os.readlink(f"/proc/{pid}/fd/3")
    assert link.startswith("socket:["), link
    return int(link[len("socket:[") : -1])


async def test_a_forked_worker_is_the_hosts_child_in_its_own_session_with_every_layer(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path, sandbox="strict")) as rt:
            witness = await rt.load(WITNESS)
            ids = await witness.call("ids")
            zygote = _zygote_of(rt)
            assert zygote.pid is not None and zygote.forks == 1
            assert witness.worker is not None and witness.worker.process is not None
            assert witness.worker.process.launcher == "zygote"
            assert ids["ppid"] == os.getpid()  # the host reaps it, not the zygote
            assert ids["sid"] == ids["pid"]  # its own session (the host signals the group)
            assert psutil.Process(ids["pid"]).ppid() == os.getpid()
            assert set(witness.sandbox.values()) == {"applied"}
            # glibc's record of the thread names the child's own tid, as after glibc's fork.
            record = await witness.call("thread_record")
            assert record["glibc"] == record["kernel"] == ids["pid"], record
            assert rt.stats()["fork_witness"].launcher == "zygote"


async def test_a_forked_worker_holds_no_fd_of_the_zygote_only_what_a_spawned_worker_holds(
    tmp_path: Path,
) -> None:
    """fds compared by kind with a spawned worker's (same count, same types), and no fd the
    zygote's socket, checked by inode, under the sandbox and without it."""
    shapes = {}
    with anyio.fail_after(90):
        for launcher in ("zygote", "spawn"):
            async with Runtime(_config(tmp_path / launcher, launcher, sandbox="off")) as rt:
                witness = await rt.load(WITNESS)
                fds = await witness.call("fds")
                if launcher == "zygote":
                    zygote = _zygote_of(rt)
                    assert zygote.pid is not None
                    inode = _zygote_socket_inode(zygote.pid)
                    assert inode not in {ino for ino, _kind in fds.values()}
                shapes[launcher] = sorted((int(fd), kind) for fd, (_ino, kind) in fds.items())
    assert shapes["zygote"] == shapes["spawn"]


async def test_forked_workers_draw_different_random_numbers_from_each_other(
    tmp_path: Path,
) -> None:
    """random is re-seeded after the fork (os.register_at_fork); secrets, uuid4 and urandom
    come from the kernel. The str hash secret is per interpreter: forks of one zygote share it
    (the README says why that is acceptable), and it is not the host's."""
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            first = await rt.load(WITNESS)
            a = await first.call("randomness")
            await first.stop()
            b = await first.call("randomness")
            assert _zygote_of(rt).forks == 2
    for key in ("random", "secrets", "urandom", "uuid4"):
        assert a[key] != b[key], key
    assert a["hash"] == b["hash"]
    assert a["hash"] != str(hash("cordon-fork-witness"))


async def test_a_forked_worker_cannot_signal_open_or_read_the_zygote(tmp_path: Path) -> None:
    """Under the sandbox every way in is refused; the control (sandbox off) shows the same
    attempts reach the zygote (same uid), so the refusals are the sandbox's doing."""
    with anyio.fail_after(90):
        async with Runtime(_config(tmp_path / "strict", sandbox="strict")) as rt:
            witness = await rt.load(WITNESS)
            own_pid = (await witness.call("ids"))["pid"]  # started: the zygote runs
            zygote = _zygote_of(rt)
            assert zygote.pid is not None
            locked = await witness.call("reach", {"pid": zygote.pid})
            own = await witness.call("reach", {"pid": own_pid})
        async with Runtime(_config(tmp_path / "off", sandbox="off")) as rt:
            witness = await rt.load(WITNESS)
            await witness.call("ids")
            zygote = _zygote_of(rt)
            assert zygote.pid is not None
            control = await witness.call("reach", {"pid": zygote.pid})
    assert all(result != "ok" for result in locked.values()), locked
    assert own["signal"] == "ok"  # the same call on itself works: the target is what is refused
    assert control["signal"] == control["sigcont"] == control["pidfd"] == "ok", control
    # Not dumpable: even the same uid, unsandboxed, cannot read its memory or take its fds.
    assert control["proc_mem"] != "ok" and control["proc_fd"] != "ok", control


async def test_a_forked_worker_is_dumpable_as_a_spawned_one_is_though_the_zygote_is_not(
    tmp_path: Path,
) -> None:
    """A non-root host reads its workers' /proc (memory sampling, USS) only if they are
    dumpable: the fork undoes the zygote's ``PR_SET_DUMPABLE 0`` for the child alone."""
    with anyio.fail_after(60):
        for launcher in ("zygote", "spawn"):
            async with Runtime(_config(tmp_path / launcher, launcher)) as rt:
                witness = await rt.load(WITNESS)
                assert await witness.call("dumpable") == 1, launcher
                assert witness.worker is not None and witness.worker.process is not None
                assert witness.worker.process.launcher == launcher


async def test_the_zygote_is_narrowed_no_new_privs_not_dumpable_cwd_root_only_its_socket(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            await (await rt.load(PROBE)).call("pid")
            zygote = _zygote_of(rt)
            assert zygote.pid is not None
            pid = zygote.pid
            status = Path(f"/proc/{pid}/status").read_text()
            assert "\nNoNewPrivs:\t1\n" in status
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, 3]
            assert len(os.listdir(f"/proc/{pid}/task")) == 1  # single-threaded
            env = dict(
                v.decode().split("=", 1)
                for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if v
            )
            # Only what a worker's own environment has (its allow-list), home at "/".
            worker_env = WorkerProcess(plugin_id="x", params=None)._env()
            assert set(env) <= set(worker_env), env
            assert env["HOME"] == env["TMPDIR"] == "/"
        # The runtime's exit stopped and reaped it.
        assert not psutil.pid_exists(pid)


async def _kill_and_wait(pid: int) -> None:
    """SIGKILL the zygote and wait until it has ended (its pidfd turns readable): a kill is
    delivered asynchronously, and a start racing it would meet a zygote still dying (which
    the launcher survives by spawning, but that is the next test's subject)."""
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def test_a_zygote_killed_mid_run_is_restarted_for_the_next_start(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            first = await probe.call("pid")
            zygote = _zygote_of(rt)
            old = zygote.pid
            assert old is not None
            await _kill_and_wait(old)
            # The running worker is the host's child: the zygote's death does not touch it.
            assert await probe.call("pid") == first
            await probe.stop()
            second = await probe.call("pid")
            assert second != first
            assert zygote.pid not in (None, old)
            assert probe.worker is not None and probe.worker.process is not None
            assert probe.worker.process.launcher == "zygote"
        assert not psutil.pid_exists(old)


async def test_past_its_restarts_a_dying_zygote_leaves_the_next_starts_to_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_zygote, "RESTARTS", 0)
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            await probe.call("pid")
            zygote = _zygote_of(rt)
            assert zygote.pid is not None
            await _kill_and_wait(zygote.pid)
            await probe.stop()
            await probe.call("pid")
            assert probe.worker is not None and probe.worker.process is not None
            assert probe.worker.process.launcher == "spawn"
            assert zygote.pid is None


async def test_a_wedged_zygote_misses_the_fork_deadline_and_the_worker_is_spawned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_zygote, "FORK_TIMEOUT", 0.5)
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            await probe.call("pid")
            zygote = _zygote_of(rt)
            wedged = zygote.pid
            assert wedged is not None
            # Alive, holding its socket, answering nothing: stopped (waited for, so the next
            # request surely meets a stopped zygote).
            fd = os.pidfd_open(wedged)
            try:
                signal.pidfd_send_signal(fd, signal.SIGSTOP)
                os.waitid(os.P_PIDFD, fd, os.WSTOPPED | os.WNOWAIT)
            finally:
                os.close(fd)
            await probe.stop()
            await probe.call("pid")
            assert probe.worker is not None and probe.worker.process is not None
            assert probe.worker.process.launcher == "spawn"
            assert not psutil.pid_exists(wedged)  # killed and reaped, not left stopped
            # The next start has a zygote again.
            await probe.stop()
            await probe.call("pid")
            assert probe.worker.process.launcher == "zygote"
            assert zygote.pid not in (None, wedged)


HOST_SCRIPT = """
import sys, anyio
from cordon.protocol import PROTOCOL_VERSION, InitializeParams, SandboxPolicy
from cordon.runtime import Runtime

async def main():
    config = {"runtime": {"state-dir": sys.argv[1], "warm-workers": 0, "launcher": "zygote"}}
    async with Runtime(config) as rt:
        with anyio.fail_after(60):  # the test's deadline: it reads until this line or EOF
            probe = await rt.load(sys.argv[2])
            worker = await probe.call("pid")
        print("PIDS", rt.launcher.pid, worker, flush=True)
        sys.stdin.read()

anyio.run(main)
"""


@pytest.mark.parametrize("zygote_stopped", [False, True])
def test_the_zygote_and_its_forked_workers_die_with_a_host_killed_outright(
    tmp_path: Path, zygote_stopped: bool
) -> None:
    """A running zygote reads EOF on its socket; a stopped one (it cannot read) is ended by
    its PDEATHSIG, which SIGKILLs even a stopped process."""
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, str(tmp_path / "state"), str(PROBE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        while line and not line.startswith("PIDS "):  # the host's log lines come first
            line = host.stdout.readline()
        zygote_pid, worker_pid = map(int, line.split()[1:])
        zygote, worker = psutil.Process(zygote_pid), psutil.Process(worker_pid)
        assert worker.ppid() == host.pid  # the host's child, not the zygote's
        if zygote_stopped:
            zygote.suspend()
        host.kill()  # no cleanup runs: only PDEATHSIG can end them
        host.wait(timeout=30)
        _gone, alive = psutil.wait_procs([zygote, worker], timeout=30)
        for proc in alive:
            proc.kill()  # leave nothing behind, then fail
        assert not alive, alive
    finally:
        host.kill()
        host.wait(timeout=30)
        assert host.stdin is not None and host.stdout is not None
        host.stdin.close()
        host.stdout.close()


async def test_a_zygote_that_cannot_start_leaves_workers_to_spawn_and_says_why(
    tmp_path: Path,
) -> None:
    """An interpreter on which the zygote dies at start (here a wrapper that refuses it):
    the worker is spawned with that interpreter, and the zygote's last words are kept."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *cordon.worker._zygote*) echo "zygote refused here" >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    launcher = ZygoteLauncher(str(python))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    params = InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id="probe",
        plugin_dir=str(PROBE),
        entry="probe_plugin:plugin",
        scratch_dir=str(scratch),
        sandbox=SandboxPolicy(mode="best-effort"),
    )
    worker = WorkerProcess(plugin_id="probe", params=params, python=str(python))
    worker.launcher = launcher
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                assert worker.launched_by == "spawn"
                await worker.stop()
    finally:
        await launcher.aclose()
    assert launcher.forks == 0 and launcher.pid is None
    assert launcher.broken is not None and "zygote refused here" in launcher.broken


async def test_workers_started_all_at_once_are_each_forked_once_with_their_own_pipes(
    tmp_path: Path,
) -> None:
    launcher = ZygoteLauncher()
    workers = [
        WorkerProcess(plugin_id=f"p{i}", params=_probe_params(tmp_path, f"p{i}")) for i in range(12)
    ]
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:

                async def start(worker: WorkerProcess) -> None:
                    worker.launcher = launcher
                    await tg.start(worker.run)

                async with anyio.create_task_group() as starting:
                    for worker in workers:
                        starting.start_soon(start, worker)
                answers = [await w.invoke("pid", {}, timeout=30) for w in workers]
                for worker in workers:
                    await worker.stop()
    finally:
        await launcher.aclose()
    assert launcher.forks == len(workers)
    assert [int(a) for a in answers] == [w.pid for w in workers]
    assert len({w.pid for w in workers}) == len(workers)


@pytest.mark.parametrize("after", [0.0, 0.002, 0.01, 0.05, 0.2])
async def test_a_start_cancelled_at_any_point_leaves_no_process_and_no_fd(
    tmp_path: Path, after: float
) -> None:
    """Cancelled while the zygote starts, while it forks, or during the handshake: whatever
    was started is reaped (the leak checks of conftest run after each)."""
    launcher = ZygoteLauncher()
    worker = WorkerProcess(plugin_id="p", params=_probe_params(tmp_path, "p"))
    worker.launcher = launcher
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                with anyio.move_on_after(after):
                    await tg.start(worker.run)
                    await worker.stop()
                tg.cancel_scope.cancel()
    finally:
        await launcher.aclose()
    assert worker.process is None or worker.process.returncode is not None


async def test_a_forked_worker_sees_exactly_the_environment_and_cwd_a_spawned_one_sees(
    tmp_path: Path,
) -> None:
    seen = {}
    with anyio.fail_after(90):
        for launcher in ("zygote", "spawn"):
            async with Runtime(_config(tmp_path / launcher, launcher)) as rt:
                probe = await rt.load(PROBE)
                env = await probe.call("env")
                assert probe.worker is not None
                assert probe.worker.launched_by == launcher
                # The scratch dirs differ by state dir only.
                seen[launcher] = {
                    k: v.replace(str(tmp_path / launcher), "<state>") for k, v in env.items()
                }
    assert seen["zygote"] == seen["spawn"]
    assert seen["zygote"]["HOME"].startswith("<state>")


async def test_a_forked_worker_gets_exactly_its_own_environment_not_the_zygotes(
    tmp_path: Path,
) -> None:
    """The zygote started with the first worker's environment; a later worker whose own
    differs from it (a variable gone, one changed, one new) has exactly its own: the child
    applies the difference from the template's environment, nothing of it stays behind."""
    launcher = ZygoteLauncher()
    first = WorkerProcess(
        plugin_id="a",
        params=_probe_params(tmp_path, "a"),
        extra_env={"CORDON_T_KEPT": "1", "CORDON_T_GONE": "2", "CORDON_T_CHANGED": "old"},
    )
    second = WorkerProcess(
        plugin_id="b",
        params=_probe_params(tmp_path, "b"),
        extra_env={"CORDON_T_KEPT": "1", "CORDON_T_CHANGED": "new", "CORDON_T_ADDED": "3"},
    )
    seen = {}
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for worker in (first, second):
                    worker.launcher = launcher
                    await tg.start(worker.run)
                    raw = await worker.invoke("env", {}, timeout=30)
                    seen[worker.plugin_id] = msgspec.json.decode(raw)
                    assert worker.process is not None
                    assert worker.process.launcher == "zygote"
                    await worker.stop()
    finally:
        await launcher.aclose()
    assert launcher.forks == 2
    ours = {k: v for k, v in seen["b"].items() if k.startswith("CORDON_T_")}
    assert ours == {"CORDON_T_KEPT": "1", "CORDON_T_CHANGED": "new", "CORDON_T_ADDED": "3"}
    assert seen["a"]["CORDON_T_GONE"] == "2"
    # Everything else is the worker's own environment (its scratch dir as home).
    assert {k for k in seen["b"] if not k.startswith("CORDON_T_")} == {
        k for k in seen["a"] if not k.startswith("CORDON_T_")
    }
    assert seen["b"]["HOME"] == str(tmp_path / "b")


async def test_a_malformed_fork_request_is_refused_with_a_reason_and_the_zygote_serves_on(
    tmp_path: Path,
) -> None:
    """Whatever reaches the zygote's socket that is not a request (not JSON, a field missing
    or of the wrong type, not three fds) is answered with an error, forks nothing, keeps no
    fd it was sent, and the next real start is still a fork."""
    good = b'{"env": {}, "cwd": "/"}'
    refused = [
        (b"not json", 3),
        (b"[]", 3),
        (b'{"env": {}}', 3),
        (b'{"env": [], "cwd": "/"}', 3),
        (b'{"env": {"A": 1}, "cwd": "/"}', 3),
        (b'{"env": {}, "cwd": 7}', 3),
        (good, 2),
    ]
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            await probe.call("pid")
            launcher = _zygote_of(rt)
            zygote, pid = launcher._zygote, launcher.pid
            assert zygote is not None and pid is not None
            for payload, nfds in refused:
                r, w = os.pipe()
                try:
                    async with launcher._lock:
                        answer = await zygote.request(payload, [r, w, w][:nfds])
                finally:
                    os.close(r)
                    os.close(w)
                assert list(answer) == ["error"], (payload, answer)
                assert "a request" in answer["error"]
            assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, 3]
            assert launcher.forks == 1
            await probe.stop()
            await probe.call("pid")
            assert launcher.forks == 2
            assert launcher.pid == pid
