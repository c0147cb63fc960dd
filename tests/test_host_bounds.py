"""The host does bounded work for a plugin: worker → host request floods and huge frames,
from real sandboxed workers, while a bystander plugin keeps answering promptly and the
host's memory stays bounded; and a running plugin cannot claim the sandbox failed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import anyio
import psutil
import pytest

from cordon.protocol import IncompatibleProtocol, SandboxUnavailable
from cordon.runtime import PluginError, PluginHandle, Runtime
from cordon.runtime._cli._main import exit_code_for
from cordon.runtime._errors import ConfigError
from cordon.runtime._hostapi._storage import Storage
from cordon.runtime._settings._config import parse_config
from cordon.runtime._supervise._worker import WorkerProcess
from tests.conftest import EXAMPLES, base_config

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
FLOOD = HERE / "sandbox" / "hostile" / "flood_storage"
ABUSER = HERE / "hostapi_plugins" / "abuser"
CORDON = str(Path(sys.executable).parent / "cordon")

#: The flood of the report: 30,000 storage.set frames grew the host by 279 MiB and stalled
#: another plugin's storage for 13-16 s.
FLOOD_SIZE: Final = 30_000
#: Generous: a bystander's op takes milliseconds; before the bound it took 13-16 s.
BYSTANDER_MAX: Final = 2.0
#: Host RSS growth allowed during a flood (before the bound: 279 MiB).
RSS_GROWTH_MAX: Final = 64 * 1024 * 1024
#: The whole flood, with margin for a loaded CI machine.
FLOOD_DEADLINE: Final = 240.0
#: Bystander round trips measured during a flood.
BYSTANDER_OPS: Final = 10


def _config(tmp_path: Path, **flood: object) -> dict[str, Any]:
    config = base_config(tmp_path, call_timeout="120 s", max_call_timeout="240 s", activate="eager")
    config["plugins"] = {
        "flood_storage": {"grant": ["storage", "log"], "storage-quota": "64 MiB", **flood},
        "abuser": {"grant": ["storage"]},
    }
    return config


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(_config(tmp_path)) as runtime:
        yield runtime


def _store(rt: Runtime) -> Storage:
    assert rt.storage is not None
    return rt.storage


def _worker(plugin: PluginHandle) -> WorkerProcess:
    assert plugin._worker is not None
    return plugin._worker


class Watch:
    """Samples the host's RSS (the host is this test process) and a worker's in-flight host
    requests until stopped."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.proc = psutil.Process()
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self.worker = worker
        self.max_inflight = 0
        self.stop = anyio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.max_inflight = max(self.max_inflight, self.worker._host_inflight)
            with anyio.move_on_after(0.01):
                await self.stop.wait()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def _bystander_round_trips(abuser: PluginHandle, hello: PluginHandle) -> list[float]:
    """Storage writes and reads, and plain calls, of another plugin: each one's seconds."""
    took = []
    for i in range(BYSTANDER_OPS):
        t0 = time.monotonic()
        assert await abuser.call("put_get", {"key": f"b{i}", "value": i}) == i
        assert await hello.call("greet", {"name": "B"}) == "Hello B"
        took.append(time.monotonic() - t0)
    return took


async def _until(predicate: Any) -> None:
    """Wait until ``predicate()`` holds, under a deadline. Polled: what it reads (rows in
    the host's storage, a worker's counters) has no event to wait on."""
    with anyio.fail_after(60):
        while not await predicate():  # noqa: ASYNC110 - nothing to wait on (see above)
            await anyio.sleep(0.01)


async def test_a_storage_flood_leaves_a_bystanders_storage_prompt_and_host_memory_bounded(
    rt: Runtime,
) -> None:
    flood = await rt.load(FLOOD)
    abuser = await rt.load(ABUSER)
    hello = await rt.load(EXAMPLES / "hello")
    await abuser.call("put_get", {"key": "warm", "value": 0})
    watch = Watch(_worker(flood))
    result: dict[str, Any] = {}
    storm_done = anyio.Event()

    async def storm() -> None:
        result.update(await flood.call("storm", {"n": FLOOD_SIZE}, timeout=FLOOD_DEADLINE))
        storm_done.set()

    async def flood_under_way() -> bool:
        return (await _store(rt).usage("flood_storage")).keys >= 500

    with anyio.fail_after(FLOOD_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run)
            tg.start_soon(storm)
            await _until(flood_under_way)
            took = await _bystander_round_trips(abuser, hello)
            during = not storm_done.is_set()
            await storm_done.wait()
            watch.stop.set()
    # Every request of the flood was answered, none lost or failed.
    assert result == {"ok": FLOOD_SIZE, "errors": {}}
    assert (await _store(rt).usage("flood_storage")).keys == FLOOD_SIZE
    assert during, "the flood ended before the bystander was measured: make it larger"
    assert max(took) < BYSTANDER_MAX, took
    assert watch.growth < RSS_GROWTH_MAX, watch.growth
    assert 0 < watch.max_inflight <= _worker(flood).host_requests_max


async def test_raw_batch_frames_of_requests_are_held_to_the_same_bound(rt: Runtime) -> None:
    flood = await rt.load(FLOOD)
    abuser = await rt.load(ABUSER)
    hello = await rt.load(EXAMPLES / "hello")
    worker = _worker(flood)
    watch = Watch(worker)
    written: list[int] = []

    async def storm() -> None:
        # Batches of 2,000 requests per frame; the worker never reads the answers' ids.
        written.append(
            await flood.call(
                "raw_storm", {"n": FLOOD_SIZE, "per_frame": 2000}, timeout=FLOOD_DEADLINE
            )
        )

    async def flood_under_way() -> bool:
        return bool(worker._host_inflight)

    async def all_served() -> bool:
        usage = await _store(rt).usage("flood_storage")
        return usage.keys == 100 and not worker._host_inflight and not worker._host_waiting

    with anyio.fail_after(FLOOD_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run)
            tg.start_soon(storm)
            await _until(flood_under_way)
            took = await _bystander_round_trips(abuser, hello)
            await _until(all_served)
            watch.stop.set()
    assert written and written[0] > 0
    assert max(took) < BYSTANDER_MAX, took
    assert watch.growth < RSS_GROWTH_MAX, watch.growth
    assert watch.max_inflight <= worker.host_requests_max


@pytest.mark.parametrize(
    ("bounds", "size", "most"),
    [
        ({"host-requests": 4}, 0, 4),
        # 20 KiB values against 64 KiB of params: three fit at once.
        ({"host-request-memory": "64 KiB"}, 20 * 1024, 3),
    ],
)
async def test_the_host_serves_at_most_the_configured_requests_of_a_plugin_at_once(
    tmp_path: Path, bounds: dict[str, Any], size: int, most: int
) -> None:
    async with Runtime(_config(tmp_path, **bounds)) as rt:
        flood = await rt.load(FLOOD)
        watch = Watch(_worker(flood))
        with anyio.fail_after(FLOOD_DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch.run)
                result = await flood.call("storm", {"n": 300, "size": size})
                watch.stop.set()
    assert result == {"ok": 300, "errors": {}}
    assert 0 < watch.max_inflight <= most


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("host-requests", 0, "must be at least 1"),
        ("host-requests", 100_000, "too many to be a bound"),
        ("host-requests", "64", "expected an integer"),
        ("host-request-memory", "1 KiB", "too small"),
        ("host-request-memory", 4096, "has no unit"),
    ],
)
def test_host_request_bounds_are_validated_naming_the_field(
    key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"plugins": {"p": {key: value}}})
    assert f"plugins.p.{key}" in str(info.value)
    assert message in str(info.value)


async def test_a_15_mib_result_reassembles_while_a_bystander_keeps_answering(
    rt: Runtime,
) -> None:
    flood = await rt.load(FLOOD)
    hello = await rt.load(EXAMPLES / "hello")
    sizes: list[int] = []
    took: list[float] = []
    done = anyio.Event()

    async def big_results() -> None:
        for _ in range(4):
            sizes.append(len(await flood.call("big", {"mib": 15}, timeout=FLOOD_DEADLINE)))
        done.set()

    with anyio.fail_after(FLOOD_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(big_results)
            while not done.is_set():
                t0 = time.monotonic()
                assert await hello.call("greet", {"name": "B"}) == "Hello B"
                took.append(time.monotonic() - t0)
    assert sizes == [15 * 1024 * 1024 - 4096] * 4
    assert took and max(took) < BYSTANDER_MAX, took


@pytest.mark.parametrize("claimed", [SandboxUnavailable, IncompatibleProtocol])
async def test_a_running_plugin_raising_a_launch_only_error_arrives_as_a_plugin_error(
    rt: Runtime, claimed: type[Exception]
) -> None:
    flood = await rt.load(FLOOD)
    with pytest.raises(PluginError) as info:
        await flood.call("claim", {"cls": claimed.__name__})
    assert type(info.value) is PluginError
    assert info.value.exc_type == claimed.__name__
    assert info.value.plugin == "flood_storage"
    # The worker is fine and keeps serving.
    assert await flood.call("put_get", {"key": "after", "value": 1}) == 1


def test_cordon_call_reports_a_plugins_sandbox_claim_as_a_plugin_error_not_exit_11(
    tmp_path: Path,
) -> None:
    config = tmp_path / "cordon.toml"
    config.write_text(
        f'[runtime]\nstate-dir = "{tmp_path / "state"}"\n'
        '[plugins.flood_storage]\ngrant = ["storage", "log"]\nsandbox = "strict"\n'
    )
    r = subprocess.run(
        [
            CORDON,
            "call",
            str(FLOOD),
            "claim",
            "--params",
            '{"cls": "SandboxUnavailable"}',
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    plugin_error = exit_code_for(PluginError("x"))
    assert plugin_error != exit_code_for(SandboxUnavailable(plugin="p", missing=[]))
    assert r.returncode == plugin_error, r.stderr
    assert "cordon: PluginError: plugin raised SandboxUnavailable" in r.stderr, r.stderr
    assert "cordon: SandboxUnavailable" not in r.stderr
    # No advice to weaken the sandbox: nothing failed to launch.
    for advice in ("best-effort", 'sandbox = "off"', "sandbox=off"):
        assert advice not in r.stderr
