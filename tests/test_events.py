"""The event bus: glob subscriptions, topic-scoped permissions, non-blocking delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from cordon.protocol import InvalidParams
from cordon.runtime._hostapi._events import EventBus, check_topic
from cordon.runtime._settings._permissions import effective_permissions
from cordon.worker import Context, Plugin, PluginDefinitionError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


class Inbox:
    def __init__(self, expect: int = 1) -> None:
        self.got: list[tuple[str, Any, str]] = []
        self.expect = expect
        self.done = anyio.Event()

    async def __call__(self, topic: str, payload: Any, source: str) -> None:
        self.got.append((topic, payload, source))
        if len(self.got) >= self.expect:
            self.done.set()

    async def wait(self) -> None:
        with anyio.fail_after(5):
            await self.done.wait()


async def test_a_subscriber_gets_events_whose_topic_matches_its_glob() -> None:
    async with EventBus() as bus:
        inbox = Inbox(2)
        bus.subscribe("host", "build.*", inbox)
        await bus.emit("deploy.done", 0, source="p1")
        await bus.emit("build.done", {"ok": True}, source="p1")
        await bus.emit("build.step.done", 2, source="p2")
        await inbox.wait()
    assert inbox.got == [("build.done", {"ok": True}, "p1"), ("build.step.done", 2, "p2")]


async def test_a_plugin_receives_only_topics_it_may_subscribe_to() -> None:
    perms = effective_permissions(
        ["events:subscribe:*"], ["events:subscribe:build.*"], ["events:subscribe:build.secret"]
    )
    async with EventBus() as bus:
        inbox = Inbox()
        bus.subscribe("p2", "*", inbox, permissions=perms)
        for topic in ("deploy.done", "build.secret", "build.done"):
            await bus.emit(topic, None, source="p1")
        await inbox.wait()
        inbox.done = anyio.Event()
        inbox.expect = 2
        await bus.emit("build.last", None, source="p1")
        await inbox.wait()
    assert [t for t, _, _ in inbox.got] == ["build.done", "build.last"]


async def test_lifecycle_events_need_no_permission_to_receive() -> None:
    async with EventBus() as bus:
        inbox = Inbox()
        bus.subscribe("p2", "cordon.*", inbox, permissions=effective_permissions([], [], []))
        await bus.emit("cordon.plugin.started", {"plugin": "p1"}, source="cordon")
        await inbox.wait()
    assert inbox.got == [("cordon.plugin.started", {"plugin": "p1"}, "cordon")]


async def test_a_cordon_topic_from_any_other_source_is_not_a_lifecycle_event() -> None:
    async with EventBus() as bus:
        inbox = Inbox()
        bus.subscribe("p2", "*", inbox, permissions=effective_permissions([], [], []))
        queued = await bus.emit("cordon.plugin.started", None, source="p1")
    assert queued == 0
    assert inbox.got == []


async def test_a_slow_subscriber_never_blocks_the_emitter_and_its_overflow_is_counted() -> None:
    release = anyio.Event()

    async def stuck(topic: str, payload: Any, source: str) -> None:
        await release.wait()

    async with EventBus(queue_size=10) as bus:
        slow = bus.subscribe("slow", "*", stuck)
        fast_inbox = Inbox(10)
        fast = bus.subscribe("fast", "*", fast_inbox)
        with anyio.fail_after(5):
            for i in range(1000):
                await bus.emit("tick", i, source="p1")
        await fast_inbox.wait()
        # At most the queue plus the one being delivered got through; the rest was dropped.
        assert slow.dropped >= 1000 - 11
        assert fast.dropped < 1000
        release.set()


async def test_a_failing_subscriber_is_counted_and_gets_the_next_event() -> None:
    inbox = Inbox(1)

    async def flaky(topic: str, payload: Any, source: str) -> None:
        if payload == 0:
            raise RuntimeError("boom")
        await inbox(topic, payload, source)

    async with EventBus() as bus:
        sub = bus.subscribe("p", "*", flaky)
        await bus.emit("t", 0, source="x")
        await bus.emit("t", 1, source="x")
        await inbox.wait()
    assert sub.failed == 1
    assert inbox.got == [("t", 1, "x")]


async def test_a_subscriber_past_its_delivery_timeout_is_abandoned_for_the_next_event() -> None:
    inbox = Inbox(1)

    async def hangs_once(topic: str, payload: Any, source: str) -> None:
        if payload == 0:
            await anyio.Event().wait()
        await inbox(topic, payload, source)

    async with EventBus(deliver_timeout=0.05) as bus:
        sub = bus.subscribe("p", "*", hangs_once)
        await bus.emit("t", 0, source="x")
        await bus.emit("t", 1, source="x")
        await inbox.wait()
    assert sub.failed == 1


async def test_closed_subscriptions_get_nothing_more() -> None:
    async with EventBus() as bus:
        inbox = Inbox()
        sub = bus.subscribe("p", "*", inbox)
        bus.unsubscribe_all("p")
        assert sub.closed
        assert await bus.emit("t", 1, source="x") == 0


@pytest.mark.parametrize(
    "topic", ["", "a..b", ".a", "a.", "build.*", "a b", "a\nb", "x" * 201, "é", 5]
)
def test_malformed_topics_are_invalid(topic: object) -> None:
    with pytest.raises(InvalidParams):
        check_topic(topic)


def test_well_formed_topics_are_accepted() -> None:
    for topic in ("build", "build.done", "git/push.ok", "a-b_c.D9"):
        assert check_topic(topic) == topic


async def test_subscribing_needs_a_running_bus() -> None:
    bus = EventBus()
    with pytest.raises(RuntimeError):
        bus.subscribe("p", "*", Inbox())


# -- event handler signatures (cordon.worker) ------------------------------------------------


def test_handlers_in_the_shapes_people_write_them_are_accepted() -> None:
    plugin = Plugin()

    @plugin.on_event("a.*")
    async def everything(ctx: Context, topic: str, payload: Any, source: str) -> None: ...

    @plugin.on_event("a.*")
    async def no_source(ctx, topic, payload: object): ...

    @plugin.on_event("a.*")
    def payload_only(payload: dict[str, Any]) -> None: ...

    @plugin.on_event("a.*")
    async def by_kwargs(ctx: Context, **event: Any) -> None: ...

    wire = msgspec.Raw(b'{"topic": "a.b", "payload": {"x": [1]}, "source": "p1"}')
    got = {name: h.decode_arguments(wire) for (_, name), h in plugin.handlers.items()}
    assert got == {
        "everything": {"topic": "a.b", "payload": {"x": [1]}, "source": "p1"},
        "no_source": {"topic": "a.b", "payload": {"x": [1]}},
        "payload_only": {"payload": {"x": [1]}},
        "by_kwargs": {"topic": "a.b", "payload": {"x": [1]}, "source": "p1"},
    }


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("async def h(ctx, event): ...", "parameter 'event' is not one the host passes"),
        ("async def h(context, topic): ...", "parameter 'context' is not one the host passes"),
        ("async def h(ctx, *args): ...", "*args cannot receive an event"),
        ("async def h(ctx, topic, /): ...", "'topic' is positional-only"),
        ("async def h(ctx, topic: int): ...", "topic is always a str"),
    ],
)
def test_a_handler_the_host_could_never_call_is_refused_when_defined(
    source: str, problem: str
) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(PluginDefinitionError) as err:
        Plugin().on_event("a.*")(namespace["h"])
    assert "event handler 'h'" in str(err.value)
    assert problem in str(err.value)
    assert "write handler(ctx, topic, payload, source)" in str(err.value)


async def test_a_handler_with_an_untyped_payload_gets_every_event_through_a_worker(
    tmp_path: Path,
) -> None:
    from cordon.runtime import Runtime
    from tests.conftest import TEST_PLUGINS, base_config

    config = base_config(tmp_path)
    config["plugins"] = {"author": {"grant": ["events:subscribe:build.*"]}}
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            author = await rt.load(TEST_PLUGINS / "author")
            await author.call("pid")  # started: its handler is subscribed
            assert await rt.emit("build.done", {"ok": [1, "x"]}) == 1
            got = await author.call("wait_event")
    assert got == {"topic": "build.done", "payload": {"ok": [1, "x"]}}


async def test_a_plugin_with_an_uncallable_handler_fails_to_load_naming_it(
    tmp_path: Path,
) -> None:
    from cordon.runtime import PluginError, Runtime
    from tests.conftest import TEST_PLUGINS, base_config

    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path)) as rt:
            bad = await rt.load(TEST_PLUGINS / "bad_handler")
            with pytest.raises(PluginError) as err:
                await bad.call("ok")
    assert err.value.fields()["exc_type"] == "PluginDefinitionError"
    assert "event handler 'on_build': parameter 'event'" in err.value.message
