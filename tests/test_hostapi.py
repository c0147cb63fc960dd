"""The host API: identity by channel, host-side permission checks, audit, typed errors.

Requests go through a loopback that does what the wire does (JSON-RPC frame encode/decode,
errors mapped through ``error_to_wire``/``error_from_wire``), so these tests see exactly what a
worker would. End-to-end tests through real worker processes come with the runtime wiring.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import structlog

from cordon.protocol import (
    CallTimeout,
    CordonError,
    InvalidParams,
    MethodNotFound,
    Notification,
    PermissionDenied,
    QuotaExceeded,
    RemoteError,
    Request,
    decode_frame,
    decode_params,
    encode,
    encode_notification,
    encode_request,
    error_from_wire,
    error_to_wire,
)
from cordon.runtime._hostapi._api import METHODS, HostAPI
from cordon.runtime._hostapi._audit import AuditTrail
from cordon.runtime._hostapi._events import EventBus
from cordon.runtime._hostapi._exec import ExecPolicy
from cordon.runtime._hostapi._logsink import LogSink
from cordon.runtime._hostapi._storage import Storage
from cordon.runtime._settings._permissions import PermissionSet, effective_permissions
from cordon.worker._hostapi import (
    CommandNotFound,
    ConfigAPI,
    EventsAPI,
    ExecResult,
    LogAPI,
    StorageAPI,
    exec_command,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio

Request_ = Callable[[str, Any], Awaitable[Any]]

ALL = [
    "log",
    "storage",
    "storage:shared",
    "config",
    "events:emit:build.*",
    "events:subscribe:build.*",
    "exec:echo",
    "exec:sh",
    "exec:touch",
]


@dataclass
class Host:
    storage: Storage
    audit: AuditTrail
    sink: LogSink
    out: io.StringIO
    bus: EventBus
    tmp: Path

    def api(
        self,
        plugin_id: str,
        perms: PermissionSet,
        settings: dict[str, Any] | None = None,
    ) -> HostAPI:
        return HostAPI(
            plugin_id,
            perms,
            storage=self.storage,
            audit=self.audit,
            log_sink=self.sink,
            settings=settings or {},
            events=self.bus,
            exec_policy=ExecPolicy(cwd=self.tmp, path="/usr/bin:/bin", default_timeout=10),
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )
    storage = await Storage.open(tmp_path / "state" / "storage.db")
    audit = await AuditTrail.open(tmp_path / "state" / "audit.db")
    try:
        async with EventBus() as bus:
            yield Host(storage, audit, LogSink(logger, rate=1000), out, bus, tmp_path)
    finally:
        await audit.close()
        await storage.close()


def granted(*perms: str) -> PermissionSet:
    return effective_permissions(perms, perms, [])


def loopback(api: HostAPI) -> Request_:
    """The worker core's request function, minus the pipe: frame out, frame back."""

    async def request(method: str, params: Any) -> Any:
        msg = decode_frame(encode_request(7, method, params).rstrip(b"\n"))
        assert isinstance(msg, Request)
        try:
            result = await api.handle(msg.method, msg.params)
        except CordonError as exc:
            wire = msgspec.json.decode(encode(error_to_wire(exc)))
            raise error_from_wire(msgspec.convert(wire, type=type(error_to_wire(exc)))) from None
        return decode_params(msgspec.Raw(encode(result).rstrip(b"\n")))

    return request


Notify_ = Callable[[str, Any], None]


def notify_loopback(api: HostAPI, flushes: list[Any]) -> Notify_:
    """The worker core's notify function, minus the pipe: a notification frame, served by
    ``HostAPI.notify`` as the worker process does; the audit flushes it asks for are kept
    in ``flushes`` for the test to run."""

    def notify(method: str, params: Any) -> None:
        msg = decode_frame(encode_notification(method, params).rstrip(b"\n"))
        assert isinstance(msg, Notification)
        follow_up = api.notify(msg.method, msg.params)
        if follow_up is not None:
            flushes.append(follow_up)

    return notify


async def run_flushes(flushes: list[Any]) -> None:
    while flushes:
        await flushes.pop()()


# -- identity and shape ----------------------------------------------------------------------


async def test_every_api_without_a_grant_is_denied_with_a_typed_error(host: Host) -> None:
    req = loopback(host.api("p1", effective_permissions(ALL, [], [])))
    calls: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: StorageAPI(req).get("k"), "storage"),
        (lambda: StorageAPI(req).set("k", 1), "storage"),
        (lambda: StorageAPI(req).delete("k"), "storage"),
        (lambda: StorageAPI(req).list(), "storage"),
        (lambda: StorageAPI(req).usage(), "storage"),
        (lambda: StorageAPI(req).get("k", shared=True), "storage:shared"),
        (lambda: ConfigAPI(req).get("x"), "config"),
        (lambda: EventsAPI(req).emit("build.done"), "events:emit:build.done"),
        (lambda: exec_command(req, ["echo", "hi"]), "exec:echo"),
    ]
    for call, permission in calls:
        with pytest.raises(PermissionDenied) as err:
            await call()
        assert err.value.fields() == {"permission": permission, "plugin": "p1"}
    entries = await host.audit.read("p1", 100)
    assert len(entries) == len(calls)
    assert all(not e.allowed and e.outcome == "PermissionDenied" for e in entries)
    assert host.out.getvalue() == "", "nothing was logged"
    assert (await host.storage.usage("p1")).keys == 0


async def test_unknown_or_forged_method_names_are_method_not_found_and_audited(
    host: Host,
) -> None:
    api = host.api("p1", granted(*ALL))
    for method in ("host/storage.drop", "invoke", "host/log ", "HOST/LOG", "\x1b[2Jx", ""):
        with pytest.raises(MethodNotFound):
            await api.handle(method, None)
    entries = await host.audit.read("p1", 100)
    assert len(entries) == 6
    assert all(e.outcome == "MethodNotFound" and not e.allowed for e in entries)
    assert all("\x1b" not in e.method for e in entries)


async def test_a_plugin_field_in_params_is_rejected_not_obeyed(host: Host) -> None:
    await host.storage.set("victim", "k", "victim's")
    api = host.api("p1", granted(*ALL))
    for method, params in [
        ("host/storage.get", {"key": "k", "plugin": "victim"}),
        ("host/storage.set", {"key": "k", "value": 1, "plugin": "victim"}),
        ("host/log", {"event": "x", "plugin": "victim"}),
        ("host/events.emit", {"topic": "build.x", "source": "cordon"}),
    ]:
        with pytest.raises(InvalidParams) as err:
            await api.handle(method, params)
        assert err.value.fields()["field"] in ("plugin", "source")
    assert await host.storage.get("victim", "k") == (True, "victim's")
    assert await host.storage.list("p1") == []


async def test_the_plugin_is_always_the_one_the_api_was_built_for(host: Host) -> None:
    alice = StorageAPI(loopback(host.api("alice", granted("storage"))))
    bob = StorageAPI(loopback(host.api("bob", granted("storage"))))
    await alice.set("../bob/k", "from alice")
    await alice.set("k", "alice's")
    assert await bob.get("k") is None
    assert await bob.get("../bob/k") is None
    assert await bob.list() == []
    assert await alice.list() == ["../bob/k", "k"]


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("host/storage.get", {"key": 5}, "key"),
        ("host/storage.get", {}, "key"),
        ("host/storage.get", {"key": ""}, "key"),
        ("host/storage.get", {"key": "x" * 600}, "key"),
        ("host/storage.set", {"key": "k"}, "value"),
        ("host/storage.list", {"limit": 0}, "limit"),
        ("host/storage.list", {"limit": "9"}, "limit"),
        ("host/log", {"event": "x", "level": "critical"}, "level"),
        ("host/log", {"event": "x", "fields": []}, "fields"),
        ("host/events.emit", {"topic": "build.*"}, "topic"),
        ("host/exec", {"argv": ["/bin/sh"]}, "argv[0]"),
        ("host/exec", {"argv": ["../sh"]}, "argv[0]"),
        ("host/exec", {"argv": "sh -c id"}, "argv"),
        ("host/exec", {"argv": ["echo"], "timeout": -1}, "timeout"),
        ("host/config.get", [1, 2], None),
    ],
)
async def test_bad_params_are_invalid_params_naming_the_field(
    host: Host, method: str, params: Any, field: str | None
) -> None:
    api = host.api("p1", granted(*ALL))
    with pytest.raises(InvalidParams) as err:
        await api.handle(method, params)
    assert err.value.fields()["field"] == field


async def test_raw_json_params_from_the_wire_are_accepted(host: Host) -> None:
    api = host.api("p1", granted("storage"))
    await api.handle("host/storage.set", msgspec.Raw(b'{"key":"k","value":{"a":[1]}}'))
    assert await host.storage.get("p1", "k") == (True, {"a": [1]})
    with pytest.raises(InvalidParams):
        await api.handle("host/storage.set", msgspec.Raw(b'{"key":"k","value":'))


# -- storage ---------------------------------------------------------------------------------


async def test_storage_calls_work_when_granted_and_are_audited(host: Host) -> None:
    st = StorageAPI(loopback(host.api("p1", granted("storage"))))
    await st.set("a", {"x": 1})
    await st.set("b/1", [1, 2])
    assert await st.get("a") == {"x": 1}
    assert await st.get("missing", "dflt") == "dflt"
    assert await st.list("b/") == ["b/1"]
    assert await st.delete("a") is True
    assert (await st.usage())["keys"] == 1
    entries = await host.audit.read("p1", 100)
    assert entries[-1].method == "host/storage.set" and entries[-1].summary == "key='a'"
    assert all(e.allowed and e.outcome == "ok" for e in entries)


async def test_shared_storage_needs_its_own_grant(host: Host) -> None:
    own_only = StorageAPI(loopback(host.api("p1", granted("storage"))))
    with pytest.raises(PermissionDenied):
        await own_only.set("k", 1, shared=True)
    sharer = StorageAPI(loopback(host.api("p2", granted("storage:shared"))))
    await sharer.set("k", "shared value", shared=True)
    reader = StorageAPI(loopback(host.api("p3", granted("storage:shared"))))
    assert await reader.get("k", shared=True) == "shared value"
    with pytest.raises(PermissionDenied):
        await sharer.get("k")


async def test_writing_past_the_quota_is_quota_exceeded_and_writes_nothing(host: Host) -> None:
    host.storage.set_quota("p1", 200)
    st = StorageAPI(loopback(host.api("p1", granted("storage"))))
    await st.set("k", "x" * 100)
    with pytest.raises(QuotaExceeded) as err:
        await st.set("k2", "y" * 150)
    assert err.value.fields() == {"kind": "storage", "limit": 200, "plugin": "p1"}
    assert await st.list() == ["k"]
    _list, refused, _first = await host.audit.read("p1", 3)
    assert (refused.method, refused.allowed, refused.outcome) == (
        "host/storage.set",
        True,
        "QuotaExceeded",
    )


@pytest.mark.parametrize(
    "key", ["../other/x", "../../etc/passwd", "🔑", "\u202eevil", "a" * 512, "ç" * 256]
)
async def test_odd_keys_stay_inside_the_plugins_namespace(host: Host, key: str) -> None:
    st = StorageAPI(loopback(host.api("p1", granted("storage"))))
    await st.set(key, 1)
    assert await st.get(key) == 1
    assert await host.storage.list("other") == []
    assert await host.storage.get("p1", key) == (True, 1)


@pytest.mark.parametrize("key", ["", "a\x00b", "a" * 513, "ç" * 257])
async def test_empty_nul_and_overlong_keys_are_invalid(host: Host, key: str) -> None:
    st = StorageAPI(loopback(host.api("p1", granted("storage"))))
    with pytest.raises(InvalidParams):
        await st.set(key, 1)


async def test_a_non_json_value_fails_in_the_plugin_with_invalid_params(host: Host) -> None:
    st = StorageAPI(loopback(host.api("p1", granted("storage"))))
    with pytest.raises(InvalidParams) as err:
        await st.set("k", object())
    assert err.value.fields()["field"] == "value"


# -- config ----------------------------------------------------------------------------------


async def test_config_returns_the_plugins_settings_with_a_default(host: Host) -> None:
    settings = {"greeting": "hi", "nested": {"n": 1}}
    cfg = ConfigAPI(loopback(host.api("p1", granted("config"), settings)))
    assert await cfg.get("greeting") == "hi"
    assert await cfg.get("absent", 42) == 42
    assert await cfg.get() == settings
    everything = await cfg.get()
    everything["greeting"] = "changed"
    assert await cfg.get("greeting") == "hi", "read-only: the host's copy is untouched"


# -- events ----------------------------------------------------------------------------------


async def test_emitting_is_scoped_by_topic_and_delivered_with_the_true_source(
    host: Host,
) -> None:
    got: list[tuple[str, Any, str]] = []
    arrived = anyio.Event()

    async def deliver(topic: str, payload: Any, source: str) -> None:
        got.append((topic, payload, source))
        arrived.set()

    receiver = host.api("p2", granted("events:subscribe:build.*"))
    await receiver.subscribe("*", deliver)
    ev = EventsAPI(loopback(host.api("p1", granted("events:emit:build.*"))))
    with pytest.raises(PermissionDenied) as err:
        await ev.emit("deploy.done", {})
    assert err.value.fields()["permission"] == "events:emit:deploy.done"
    await ev.emit("build.done", {"ok": True})
    with anyio.fail_after(5):
        await arrived.wait()
    assert got == [("build.done", {"ok": True}, "p1")]
    receiver.close()


async def test_no_grant_lets_a_plugin_emit_a_host_lifecycle_event(host: Host) -> None:
    ev = EventsAPI(loopback(host.api("cordon", granted("events:emit:*"))))
    with pytest.raises(PermissionDenied):
        await ev.emit("cordon.plugin.started", {"plugin": "p2"})


async def test_an_oversized_event_payload_is_invalid(host: Host) -> None:
    ev = EventsAPI(loopback(host.api("p1", granted("events:emit:build.*"))))
    with pytest.raises(InvalidParams) as err:
        await ev.emit("build.big", "x" * 100_000)
    assert err.value.fields()["field"] == "payload"


# -- exec ------------------------------------------------------------------------------------


async def test_exec_runs_a_granted_command_and_returns_a_typed_result(host: Host) -> None:
    req = loopback(host.api("p1", granted("exec:echo")))
    result = await exec_command(req, ["echo", "hello", "$USER"])
    assert result == ExecResult(returncode=0, stdout="hello $USER\n", stderr="", truncated=False)
    (entry,) = await host.audit.read("p1")
    assert entry.summary == "echo hello '$USER'"


async def test_exec_of_an_ungranted_command_never_runs_it(host: Host) -> None:
    req = loopback(host.api("p1", granted("exec:echo")))
    marker = host.tmp / "ran"
    with pytest.raises(PermissionDenied) as err:
        await exec_command(req, ["touch", str(marker)])
    assert err.value.fields()["permission"] == "exec:touch"
    assert not marker.exists()


async def test_exec_of_a_missing_command_is_command_not_found_on_the_worker_side(
    host: Host,
) -> None:
    perms = granted("exec:no-such-tool")
    req = loopback(host.api("p1", perms))
    with pytest.raises(CommandNotFound) as err:
        await exec_command(req, ["no-such-tool"])
    assert err.value.fields() == {"command": "no-such-tool", "plugin": "p1"}


async def test_exec_past_its_timeout_is_a_call_timeout_on_the_worker_side(host: Host) -> None:
    req = loopback(host.api("p1", granted("exec:sh")))
    with pytest.raises(CallTimeout):
        await exec_command(req, ["sh", "-c", "sleep 30"], timeout=0.3)


# -- log -------------------------------------------------------------------------------------


async def test_log_lines_reach_the_sink_tagged_redacted_and_neutralised(host: Host) -> None:
    flushes: list[Any] = []
    log = LogAPI(notify_loopback(host.api("p1", granted("log")), flushes))
    log.warning("login\n[error] forged", user="ada", password="hunter2", obj=object(), plugin="p2")
    (rec,) = host.records()
    assert rec["event"] == "plugin.log"
    assert rec["plugin"] == "p1"
    assert rec["level"] == "warning"
    assert rec["msg"] == "login\\n[error] forged"
    assert rec["fields"]["password"] == "[REDACTED]"
    assert rec["fields"]["plugin"] == "p2"
    assert rec["fields"]["obj"].startswith("<object object")
    assert "hunter2" not in host.out.getvalue()


async def test_a_log_flood_is_dropped_counted_and_reported(tmp_path: Path, host: Host) -> None:
    host.sink = LogSink(host.sink._logger, rate=20)
    flushes: list[Any] = []
    log = LogAPI(notify_loopback(host.api("p1", granted("log")), flushes))
    with anyio.fail_after(10):
        for i in range(500):
            log.info("flood", i=i)
        await run_flushes(flushes)
    stats = host.sink.stats("p1")["p1"]
    assert 40 <= stats.accepted < 100
    assert stats.dropped == 500 - stats.accepted
    host.sink.report_dropped()
    report = [r for r in host.records() if r["event"] == "plugin.log_dropped"]
    assert sum(r["dropped"] for r in report) == stats.dropped
    entries = await host.audit.read("p1", 1000)
    assert sum(e.count for e in entries) == 500, "every call audited, identical ones collapsed"
    assert len(entries) < 500


async def test_a_notification_can_only_log_and_a_bad_one_is_audited_and_dropped(
    host: Host,
) -> None:
    await host.storage.set("p1", "k", "kept")
    api = host.api("p1", granted(*ALL))
    flushes: list[Any] = []
    notify = notify_loopback(api, flushes)
    notify("host/storage.delete", {"key": "k"})  # a request's method, sent as a notification
    notify("host/log", {"event": "x", "plugin": "victim"})
    notify("host/log", {"event": "x", "level": "critical"})
    notify("host/log", {"event": "ok", "fields": {"n": 1}})
    await run_flushes(flushes)
    assert await host.storage.get("p1", "k") == (True, "kept"), "nothing but a log is served"
    assert [(r["plugin"], r["msg"]) for r in host.records()] == [("p1", "ok")]
    entries = reversed(await host.audit.read("p1", 10))
    trail = [(e.method, e.allowed, e.outcome, e.count) for e in entries]
    assert trail == [
        ("host/storage.delete", False, "ignored", 1),
        ("host/log", False, "InvalidParams", 2),
        ("host/log", True, "ok", 1),
    ]


async def test_every_method_in_the_table_is_served(host: Host) -> None:
    api = host.api("p1", granted(*ALL))
    assert set(METHODS) == set(api._methods)


# -- worker-side marshalling -----------------------------------------------------------------


class NotifyRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, method: str, params: Any) -> None:
        self.calls.append((method, msgspec.json.decode(msgspec.json.encode(params))))


class Recorder:
    def __init__(self, reply: Any = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.reply = reply

    async def __call__(self, method: str, params: Any) -> Any:
        self.calls.append((method, msgspec.json.decode(msgspec.json.encode(params))))
        return self.reply


async def test_the_worker_log_api_sends_level_event_and_jsonable_fields() -> None:
    rec = NotifyRecorder()
    log = LogAPI(rec)
    log.debug("a", n=1)
    log.info("b")
    await log.warning("c", nested={"x": [1]})  # awaiting it stays harmless
    log.error("d", exc=ValueError("bad"))
    with pytest.raises(InvalidParams) as err:
        log.log("critical", "e")
    assert err.value.fields()["field"] == "level"
    assert rec.calls == [
        ("host/log", {"level": "debug", "event": "a", "fields": {"n": 1}}),
        ("host/log", {"level": "info", "event": "b", "fields": {}}),
        ("host/log", {"level": "warning", "event": "c", "fields": {"nested": {"x": [1]}}}),
        ("host/log", {"level": "error", "event": "d", "fields": {"exc": "ValueError('bad')"}}),
    ]


async def test_the_worker_storage_api_marshals_each_call() -> None:
    rec = Recorder({"found": True, "value": 3})
    st = StorageAPI(rec)
    assert await st.get("k") == 3
    await st.set("k", {"v": 1}, shared=True)
    await st.delete("k")
    rec.reply = ["a"]
    assert await st.list("p/", limit=5, after="p/0") == ["a"]
    assert rec.calls == [
        ("host/storage.get", {"key": "k", "shared": False}),
        ("host/storage.set", {"key": "k", "value": {"v": 1}, "shared": True}),
        ("host/storage.delete", {"key": "k", "shared": False}),
        ("host/storage.list", {"prefix": "p/", "limit": 5, "after": "p/0", "shared": False}),
    ]
    rec.reply = {"found": False, "value": None}
    assert await st.get("k", "dflt") == "dflt"


async def test_the_worker_config_events_and_exec_apis_marshal_each_call() -> None:
    rec = Recorder({"returncode": 0, "stdout": "", "stderr": "", "truncated": False})
    await ConfigAPI(rec).get("k", 5)
    await EventsAPI(rec).emit("build.done", {"ok": 1})
    result = await exec_command(rec, ["git", "status"], timeout=3)
    assert result.returncode == 0
    assert rec.calls == [
        ("host/config.get", {"key": "k", "default": 5}),
        ("host/events.emit", {"topic": "build.done", "payload": {"ok": 1}}),
        ("host/exec", {"argv": ["git", "status"], "timeout": 3}),
    ]


async def test_a_remote_error_that_is_not_command_not_found_passes_through() -> None:
    async def fails(method: str, params: Any) -> Any:
        raise RemoteError("other", remote_code=-32099, remote_data={"type": "Other"})

    with pytest.raises(RemoteError):
        await exec_command(fails, ["x"])


# -- end to end: a real sandboxed worker process ---------------------------------------------
# Until the Runtime wires HostAPI in, these stand up WorkerProcess directly with the wiring
# the Runtime is meant to use: on_host_request=HostAPI.handle, on_stderr=LogSink.plugin_output.

PLUGINS = Path(__file__).resolve().parent / "hostapi_plugins"

# Workers cannot start until the worker's lock-down module has landed.
_NO_WORKER = (
    None
    if importlib.util.find_spec("cordon.worker._sandbox") is not None
    else "cordon.worker._sandbox is not available: workers cannot start"
)


def needs_worker(fn: Any) -> Any:
    """Skip while workers cannot start (see _NO_WORKER); anyio-marked like the rest."""
    return pytest.mark.skipif(_NO_WORKER is not None, reason=_NO_WORKER or "")(fn)


@dataclass
class Live:
    host: Host
    api: HostAPI
    worker: Any
    stderr_seen: Callable[[str], Awaitable[None]]

    async def call(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return decode_params(await self.worker.invoke(name, args or {}, timeout=30))


async def live_worker(
    host: Host, perms: PermissionSet, tg: Any, settings: dict[str, Any] | None = None
) -> Live:
    from cordon.protocol import PROTOCOL_VERSION, InitializeParams, SandboxPolicy
    from cordon.runtime._supervise._worker import WorkerProcess

    api = host.api("abuser", perms, settings)
    lines: list[str] = []
    changed = anyio.Event()

    def on_stderr(line: bytes) -> None:
        nonlocal changed
        host.sink.plugin_output("abuser", line)
        lines.append(line.decode("utf-8", "replace"))
        changed.set()
        changed = anyio.Event()

    async def stderr_seen(marker: str) -> None:
        with anyio.fail_after(10):
            while not any(marker in line for line in lines):
                await changed.wait()

    scratch = host.tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    params = InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id="abuser",
        plugin_dir=str(PLUGINS / "abuser"),
        entry="abuser_plugin:plugin",
        scratch_dir=str(scratch),
        sandbox=SandboxPolicy(mode="best-effort"),
    )
    worker = WorkerProcess(
        plugin_id="abuser",
        params=params,
        on_host_request=api.handle,
        on_host_notification=api.notify,
        on_stderr=on_stderr,
    )
    with anyio.fail_after(30):
        await tg.start(worker.run)
    return Live(host, api, worker, stderr_seen)


ABUSER_ALL = ["log", "storage", "storage:shared", "config", "events:emit:build.*", "exec:echo"]


@needs_worker
async def test_e2e_a_plugin_without_grants_is_denied_every_api_with_typed_errors(
    host: Host,
) -> None:
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, effective_permissions(ABUSER_ALL, [], []), tg)
        try:
            got = await live.call("every_api")
        finally:
            await live.worker.stop()
    # A log record is a notification: refused on the host (and audited), nothing to answer.
    assert got.pop("log") == {"ok": None}
    assert all(v["error"] == "PermissionDenied" for v in got.values()), got
    assert all(v["plugin"] == "abuser" for v in got.values())
    assert got["exec"]["permission"] == "exec:echo"
    trail = await host.audit.read("abuser", 100)
    assert len(trail) == len(got) + 1
    assert all(not e.allowed and e.outcome == "PermissionDenied" for e in trail)


@needs_worker
async def test_e2e_a_granted_plugin_uses_every_api(host: Host) -> None:
    perms = effective_permissions(ABUSER_ALL, ABUSER_ALL, [])
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, perms, tg, {"greeting": "hi"})
        try:
            got = await live.call("every_api")
        finally:
            await live.worker.stop()
    assert got == {
        "log": {"ok": None},
        "storage.set": {"ok": None},
        "storage.get": {"ok": {"v": 1}},
        "storage.list": {"ok": ["k"]},
        "storage.delete": {"ok": True},
        "shared.set": {"ok": None},
        "config.get": {"ok": "hi"},
        "events.emit": {"ok": None},
        "exec": {"ok": [0, "hi\n", False]},
    }


@needs_worker
async def test_e2e_forged_fields_methods_and_topics_are_refused(host: Host) -> None:
    perms = effective_permissions(ABUSER_ALL, ABUSER_ALL, [])
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, perms, tg)
        try:
            got = await live.call("forge")
        finally:
            await live.worker.stop()
    assert got["plugin_field"] == {"error": "InvalidParams", "field": "plugin"}
    assert got["unknown_method"]["error"] == "MethodNotFound"
    assert got["worker_method"]["error"] == "MethodNotFound"
    assert got["lifecycle"]["error"] == "PermissionDenied"
    assert got["exec_path"] == {"error": "InvalidParams", "field": "argv[0]"}
    assert got["exec_ungranted"]["permission"] == "exec:sh"


@needs_worker
async def test_e2e_odd_keys_stay_in_the_namespace_and_bad_ones_are_invalid(host: Host) -> None:
    perms = effective_permissions(["storage"], ["storage"], [])
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, perms, tg)
        try:
            got = await live.call("keys")
        finally:
            await live.worker.stop()
    errors = [k for k, v in got.items() if k != "listed" and "error" in v]
    assert len(errors) == 3
    assert len(got["listed"]) == 4
    assert "../other/x" in got["listed"]
    assert await host.storage.list("other") == []


@needs_worker
async def test_e2e_writing_past_the_quota_is_refused(host: Host) -> None:
    host.storage.set_quota("abuser", 10_000)
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, effective_permissions(["storage"], ["storage"], []), tg)
        try:
            assert await live.call("fill", {"size": 5_000}) == {"ok": None}
            got = await live.call("fill", {"size": 20_000})
        finally:
            await live.worker.stop()
    assert got == {"error": "QuotaExceeded", "kind": "storage", "limit": 10_000, "plugin": "abuser"}
    assert await host.storage.get("abuser", "big") == (True, "x" * 5_000)


@needs_worker
async def test_e2e_a_log_flood_is_cut_to_the_rate_and_the_host_stays_responsive(
    host: Host,
) -> None:
    host.sink = LogSink(host.sink._logger, rate=50)
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, effective_permissions(["log"], ["log"], []), tg)
        try:
            with anyio.fail_after(30):
                assert await live.call("flood", {"n": 2000}) == 2000
            with anyio.fail_after(5):
                assert await live.worker.ping(5)
        finally:
            await live.worker.stop()
    # Every record was counted by the time the call answered (they precede its result).
    stats = host.sink.stats("abuser")["abuser"]
    assert stats.accepted < 200
    assert stats.dropped == 2000 - stats.accepted
    host.sink.report_dropped()
    assert any(r["event"] == "plugin.log_dropped" for r in host.records())


@needs_worker
async def test_e2e_secrets_and_forged_lines_never_reach_the_sink(host: Host) -> None:
    async with anyio.create_task_group() as tg:
        live = await live_worker(host, effective_permissions(["log"], ["log"], []), tg)
        try:
            assert await live.call("secrets") is True
            await live.stderr_seen("stderr forged")
        finally:
            await live.worker.stop()
    text = host.out.getvalue()
    for secret in (
        "hunter2",
        "hunter3",
        "hunter4",
        "AAAAAAAAAAAA",
        "abcdefghijklmnop1234",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-abcdefghijklmnop0123",
        "MIIsecretmaterial",
    ):
        assert secret not in text, secret
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    for rec in host.records():
        assert rec["plugin"] == "abuser"
        assert rec["event"] in ("plugin.log", "plugin.output")
