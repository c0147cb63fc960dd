"""The audit trail: every host API call recorded, persisted, readable per plugin."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from cordon.runtime._hostapi._audit import AuditTrail


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


async def test_records_are_read_back_newest_first_for_one_plugin(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        await audit.record("p1", "host/storage.get", "key='a'", allowed=True)
        await audit.record("p2", "host/exec", "ls", allowed=False, outcome="PermissionDenied")
        await audit.record("p1", "host/storage.set", "key='b'", allowed=True)
        entries = await audit.read("p1", 10)
    assert [(e.method, e.summary, e.allowed, e.outcome) for e in entries] == [
        ("host/storage.set", "key='b'", True, "ok"),
        ("host/storage.get", "key='a'", True, "ok"),
    ]
    assert entries[0].ts >= entries[1].ts > 0


async def test_records_persist_across_reopening(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        await audit.record("p1", "host/exec", "rm -rf /", allowed=False, outcome="PermissionDenied")
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        (entry,) = await audit.read("p1")
    assert (entry.plugin, entry.allowed, entry.outcome) == ("p1", False, "PermissionDenied")


async def test_identical_consecutive_calls_collapse_into_one_counted_row(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        for _ in range(5):
            audit.add("p1", "host/log", "info tick", allowed=True)
        audit.add("p1", "host/log", "info tock", allowed=True)
        await audit.flush()
        entries = await audit.read("p1")
    assert [(e.summary, e.count) for e in entries] == [("info tock", 1), ("info tick", 5)]
    assert entries[1].last_ts >= entries[1].ts


async def test_summaries_are_redacted_neutralised_and_capped(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        await audit.record(
            "p1",
            "host/exec",
            "curl -H 'Authorization: Bearer abcdefghijklmnop' \x1b[2J\n" + "x" * 5000,
            allowed=True,
        )
        await audit.record("p1", "nope\x1b]0;t\x07" + "m" * 500, "", allowed=False)
        new, old = await audit.read("p1")
    assert "abcdefghijklmnop" not in old.summary
    assert "\x1b" not in old.summary and "\n" not in old.summary
    assert len(old.summary) <= 301
    assert "\x1b" not in new.method and len(new.method) <= 200


async def test_concurrent_records_are_all_persisted_by_group_commit(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db") as audit:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(
                        functools.partial(
                            audit.record, f"p{i % 5}", "host/storage.set", f"k{i}", allowed=True
                        )
                    )
        counts = [len(await audit.read(f"p{n}", 1000)) for n in range(5)]
    assert counts == [100] * 5


async def test_records_beyond_the_pending_bound_are_counted_not_lost_silently(
    tmp_path: Path,
) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db", max_pending=10) as audit:
        for i in range(25):
            audit.add("p1", "host/storage.get", f"k{i}", allowed=True)
        await audit.flush()
        entries = await audit.read("p1", 100)
    overflow = [e for e in entries if e.method == "audit.overflow"]
    assert len(entries) == 11
    assert overflow[0].count == 15


async def test_old_rows_are_pruned_beyond_the_per_plugin_cap(tmp_path: Path) -> None:
    async with await AuditTrail.open(tmp_path / "audit.db", max_rows_per_plugin=50) as audit:
        for i in range(200):
            await audit.record("p1", "host/storage.get", f"k{i}", allowed=True)
        entries = await audit.read("p1", 1000)
    assert len(entries) <= 51
    assert entries[0].summary == "k199"
