"""Per-plugin SQLite key-value storage: namespaces, keys, quota, durability, concurrency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest

from cordon.protocol import InvalidParams, QuotaExceeded
from cordon.runtime._hostapi._storage import BATCH_MAX, MAX_KEY_BYTES, Storage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    s = await Storage.open(tmp_path / "state" / "storage.db")
    try:
        yield s
    finally:
        await s.close()


pytestmark = pytest.mark.anyio


async def test_values_round_trip_as_json(store: Storage) -> None:
    values = [None, True, 0, -1.5, "text", [1, "a", None], {"nested": {"list": [1, 2]}}]
    for i, v in enumerate(values):
        await store.set("p1", f"k{i}", v)
    for i, v in enumerate(values):
        assert await store.get("p1", f"k{i}") == (True, v)
    assert await store.get("p1", "absent") == (False, None)


async def test_a_stored_null_is_distinguishable_from_a_missing_key(store: Storage) -> None:
    await store.set("p1", "n", None)
    assert (await store.get("p1", "n"))[0] is True
    assert (await store.get("p1", "nope"))[0] is False


async def test_values_are_stored_as_encoded_json_bytes(store: Storage, tmp_path: Path) -> None:
    await store.set("p1", "k", {"a": [1, 2]})
    raw = await store.get("p1", "k", raw=True)
    assert raw == (True, msgspec.Raw(b'{"a":[1,2]}'))


async def test_delete_reports_whether_the_key_existed(store: Storage) -> None:
    await store.set("p1", "k", 1)
    assert await store.delete("p1", "k") is True
    assert await store.delete("p1", "k") is False
    assert await store.get("p1", "k") == (False, None)


async def test_list_returns_keys_with_the_prefix_in_order_and_pages(store: Storage) -> None:
    for k in ["b/2", "a", "b/1", "b/3", "c", "b"]:
        await store.set("p1", k, 0)
    assert await store.list("p1", "b/") == ["b/1", "b/2", "b/3"]
    assert await store.list("p1") == ["a", "b", "b/1", "b/2", "b/3", "c"]
    assert await store.list("p1", "b/", 2) == ["b/1", "b/2"]
    assert await store.list("p1", "b/", 2, after="b/2") == ["b/3"]
    assert await store.list("p1", "zz") == []


async def test_a_plugin_never_sees_another_plugins_keys(store: Storage) -> None:
    await store.set("alice", "secret", "a")
    await store.set("alice", "../bob/secret", "forged")
    assert await store.get("bob", "secret") == (False, None)
    assert await store.list("bob") == []
    assert await store.get("alice", "../bob/secret") == (True, "forged")
    assert await store.list("alice") == ["../bob/secret", "secret"]


async def test_the_shared_namespace_is_separate_from_every_plugins_own(store: Storage) -> None:
    await store.set("alice", "k", "own", shared=False)
    await store.set("alice", "k", "shared", shared=True)
    assert await store.get("bob", "k", shared=True) == (True, "shared")
    assert await store.get("bob", "k") == (False, None)
    assert await store.get("alice", "k") == (True, "own")


@pytest.mark.parametrize(
    "key",
    [
        "../other/x",
        "/etc/passwd",
        "ключ",
        "🔑 emoji",
        "e\u0301 combining",
        "\u202eright-to-left",
        "a\nb\tc",
        "x" * MAX_KEY_BYTES,
        "é" * (MAX_KEY_BYTES // 2),
    ],
)
async def test_any_other_unicode_key_is_just_a_key(store: Storage, key: str) -> None:
    await store.set("p1", key, 1)
    assert await store.get("p1", key) == (True, 1)
    assert await store.list("p1") == [key]


@pytest.mark.parametrize(
    "key",
    ["", "a\x00b", "\ud800", "lone \udfff", "x" * (MAX_KEY_BYTES + 1), "é" * 257, 5, None],
)
async def test_empty_nul_surrogate_overlong_or_non_string_keys_are_invalid(
    store: Storage, key: object
) -> None:
    with pytest.raises(InvalidParams) as err:
        await store.set("p1", key, 1)  # type: ignore[arg-type]
    assert err.value.fields()["field"] == "key"
    with pytest.raises(InvalidParams):
        await store.get("p1", key)  # type: ignore[arg-type]
    assert await store.list("p1") == []


async def test_a_value_that_is_not_json_is_invalid(store: Storage) -> None:
    with pytest.raises(InvalidParams) as err:
        await store.set("p1", "k", object())
    assert err.value.fields()["field"] == "value"


async def test_usage_counts_key_and_value_bytes(store: Storage) -> None:
    await store.set("p1", "ab", "xyz")  # 2 + len('"xyz"') = 7
    await store.set("p1", "c", 1)  # 1 + 1 = 2
    u = await store.usage("p1")
    assert (u.bytes, u.keys) == (9, 2)
    await store.set("p1", "ab", 1)  # overwrite: 2 + 1
    assert (await store.usage("p1")).bytes == 5
    await store.delete("p1", "c")
    u = await store.usage("p1")
    assert (u.bytes, u.keys) == (3, 1)


async def test_a_write_past_the_quota_is_refused_and_writes_nothing(store: Storage) -> None:
    store.set_quota("p1", 100)
    await store.set("p1", "k", "a" * 50)
    before = await store.usage("p1")
    with pytest.raises(QuotaExceeded) as err:
        await store.set("p1", "k2", "b" * 60)
    assert err.value.fields() == {"kind": "storage", "limit": 100, "plugin": "p1"}
    with pytest.raises(QuotaExceeded):
        await store.set("p1", "k", "c" * 200)  # an overwrite that grows past the quota
    assert await store.get("p1", "k") == (True, "a" * 50)
    assert await store.get("p1", "k2") == (False, None)
    assert await store.usage("p1") == before


async def test_at_the_quota_an_overwrite_that_shrinks_or_a_delete_still_works(
    store: Storage,
) -> None:
    store.set_quota("p1", 20)
    await store.set("p1", "k", "x" * 17)  # 1 + 19 = 20, exactly full
    await store.set("p1", "k", "x")
    await store.set("p1", "j", "y" * 10)
    assert await store.delete("p1", "j")


async def test_quotas_are_per_plugin(store: Storage) -> None:
    store.set_quota("p1", 10)
    with pytest.raises(QuotaExceeded):
        await store.set("p1", "k", "x" * 20)
    await store.set("p2", "k", "x" * 20)


async def test_concurrent_writers_at_the_quota_cannot_both_squeeze_under_it(
    store: Storage,
) -> None:
    store.set_quota("p1", 1000)
    ok = 0

    async def write(i: int) -> None:
        nonlocal ok
        try:
            await store.set("p1", f"k{i:03}", "x" * 95)  # 4 + 97 = 101 bytes each
            ok += 1
        except QuotaExceeded:
            pass

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(write, i)
    assert ok == 9
    u = await store.usage("p1")
    assert u.keys == 9 and u.bytes == 909


async def test_many_plugins_writing_at_once_lose_no_writes(tmp_path: Path) -> None:
    plugins, writes = 20, 40
    async with await Storage.open(tmp_path / "s.db") as store:

        async def writer(p: int) -> None:
            for i in range(writes):
                await store.set(f"plugin{p}", f"k{i}", {"p": p, "i": i})
                await store.set("shared-writer", f"p{p}-k{i}", i, shared=True)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for p in range(plugins):
                    tg.start_soon(writer, p)
    async with await Storage.open(tmp_path / "s.db") as store:
        for p in range(plugins):
            keys = await store.list(f"plugin{p}", limit=1000)
            assert len(keys) == writes
            assert (await store.usage(f"plugin{p}")).keys == writes
            for i in range(writes):
                assert await store.get(f"plugin{p}", f"k{i}") == (True, {"p": p, "i": i})
        assert (await store.usage("anyone", shared=True)).keys == plugins * writes


async def test_a_write_storm_from_one_plugin_does_not_queue_another_plugins_write_behind_it(
    store: Storage,
) -> None:
    storm = 20 * BATCH_MAX
    finished: list[str] = []

    async def write(plugin: str, i: int) -> None:
        await store.set(plugin, f"k{i}", i)
        finished.append(plugin)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(storm):
                tg.start_soon(write, "storm", i)
            await anyio.lowlevel.checkpoint()  # every storm write is queued first
            tg.start_soon(write, "bystander", 0)
    # First come, first served would have put it last; round-robin serves it within the
    # first two batches (the one running when it arrived, and the next).
    assert finished.index("bystander") <= 2 * BATCH_MAX
    assert len(finished) == storm + 1


async def test_in_a_shared_batch_a_refused_write_fails_alone_and_the_others_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    outcomes: dict[str, object] = {}
    async with await Storage.open(path) as store:
        store.set_quota("greedy", 50)

        async def write(plugin: str, size: int) -> None:
            try:
                await store.set(plugin, "k", "x" * size)
                outcomes[plugin] = "ok"
            except QuotaExceeded as exc:
                outcomes[plugin] = exc

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for plugin, size in (("a", 10), ("greedy", 100), ("b", 10), ("c", 10)):
                    tg.start_soon(write, plugin, size)
    assert isinstance(outcomes.pop("greedy"), QuotaExceeded)
    assert outcomes == {"a": "ok", "b": "ok", "c": "ok"}
    async with await Storage.open(path) as store:
        assert await store.get("greedy", "k") == (False, None)
        assert (await store.usage("greedy")).bytes == 0
        for plugin in "abc":
            assert await store.get(plugin, "k") == (True, "x" * 10)


async def test_callers_cancelled_while_queued_or_leading_never_stall_the_others(
    store: Storage,
) -> None:
    done: list[int] = []

    async def write(i: int) -> None:
        await store.set(f"p{i % 7}", f"k{i}", i)
        done.append(i)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg, anyio.create_task_group() as doomed:
            for i in range(500):
                doomed.start_soon(write, -1 - i)  # the first of these leads
            await anyio.lowlevel.checkpoint()
            for i in range(300):
                tg.start_soon(write, i)
            await anyio.lowlevel.checkpoint()
            doomed.cancel_scope.cancel()
    # Every write not cancelled completed; the cancelled ones either ran or never did.
    assert sorted(i for i in done if i >= 0) == list(range(300))
    await store.set("after", "k", 1)
    assert await store.get("after", "k") == (True, 1)


async def test_the_database_is_in_wal_mode_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await Storage.open(path) as store:
        await store.set("p1", "k", "v")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    async with await Storage.open(path) as store:
        assert await store.get("p1", "k") == (True, "v")


CHILD = textwrap.dedent(
    """
    import sys, anyio
    from cordon.runtime._hostapi._storage import Storage

    async def main():
        store = await Storage.open(sys.argv[1])
        i = 0
        while True:
            await store.set("p1", f"k{i}", {"i": i, "pad": "x" * 1000})
            print(f"acked {i}", flush=True)
            i += 1

    anyio.run(main)
    """
)


async def test_an_acknowledged_write_survives_sigkill_right_after_the_ack(
    tmp_path: Path,
) -> None:
    path = tmp_path / "durable.db"
    last = -1
    proc = await anyio.open_process(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        buf = b""
        with anyio.fail_after(60):
            # Kill as soon as some acks are in: the child is then mid-way through the next
            # write, which is the moment a non-durable store would lose the acked one.
            while last < 20:
                buf += await proc.stdout.receive()
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    last = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await proc.wait()
        # The child may have acked more writes than we had read when it died: they are
        # still in the pipe. Everything it acked must be there, and at most the one write
        # it was in the middle of besides.
        with anyio.fail_after(10):
            async for chunk in proc.stdout:
                buf += chunk
        printed = max([last, *(int(ln.split()[1]) for ln in buf.split(b"\n") if ln)])
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            with anyio.fail_after(10):
                await proc.wait()
            await proc.aclose()
    assert proc.returncode == -signal.SIGKILL
    async with await Storage.open(path) as store:
        assert await store.integrity_check() == "ok"
        for i in range(printed + 1):
            assert await store.get("p1", f"k{i}") == (True, {"i": i, "pad": "x" * 1000})
        u = await store.usage("p1")
        assert u.keys in (printed + 1, printed + 2), "usage kept in step with the rows"
