"""The registry's trust rules as functions: look-alike ids, the FTS query it builds from free
text, and the resolution of ``ID[@VERSION|SPEC]`` (no server needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cordon.runtime._marketplace._client import parse_request, resolve
from cordon.runtime._marketplace._db import fts_query
from cordon.runtime._marketplace._errors import PluginNotFound
from cordon.runtime._marketplace._trust import edit_distance, lookalike_of, normalise_id


@pytest.mark.parametrize(
    ("new", "existing"),
    [
        ("depusr", "depuser"),  # a dropped letter
        ("dockr", "docker"),
        ("dokcer", "docker"),  # two letters swapped
        ("d0cker", "docker"),  # a confusable digit
        ("docker-", "docker"),  # separators do not make an id distinct
        ("do_cker", "docker"),
        ("dlcker", "dicker"),  # i and l fold together
        ("requestss", "requests"),  # a doubled letter
    ],
)
def test_look_alike_ids_are_caught(new: str, existing: str) -> None:
    assert lookalike_of(new, ["zzz", existing]) == existing


@pytest.mark.parametrize(
    ("new", "existing"),
    [("docker-compose", "docker"), ("git", "gitx"), ("ls", "lsd"), ("weather", "leather0")],
)
def test_distinct_ids_are_not_look_alikes(new: str, existing: str) -> None:
    assert lookalike_of(new, [existing]) is None


def test_normalising_folds_confusables_and_drops_separators() -> None:
    assert normalise_id("My_D0cker-1") == normalise_id("mydockerl")


def test_edit_distance_counts_a_swap_as_one_and_stops_early() -> None:
    assert edit_distance("docker", "dokcer", 2) == 1
    assert edit_distance("abc", "abc", 0) == 0
    assert edit_distance("a" * 50, "b" * 50, 2) == 3  # over the limit: limit + 1


@pytest.mark.parametrize(
    "q", ['"', "NEAR(a b)", "a* OR b", "x:y", "-(", "^", "{a b}: c", "'; DROP TABLE x; --"]
)
def test_free_text_never_reaches_fts5_as_syntax(q: str, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.db")
    try:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize = 'trigram')")
        db.execute("INSERT INTO t VALUES ('near a b docker drop table')")
        match = fts_query(q)
        if match is not None:
            db.execute("SELECT * FROM t WHERE t MATCH ?", (match,)).fetchall()  # no error
    finally:
        db.close()


def test_install_requests_parse_into_an_id_and_a_version_or_spec() -> None:
    assert parse_request("weather") == ("weather", None)
    assert parse_request("weather@1.2.0") == ("weather", "1.2.0")
    assert parse_request("weather>=1,<2") == ("weather", ">=1,<2")
    assert parse_request("weather@~=1.2") == ("weather", "~=1.2")


def _v(version: str, yanked: bool = False) -> dict[str, object]:
    return {"version": version, "yanked": yanked}


def test_resolution_skips_yanked_versions_unless_one_is_pinned_exactly() -> None:
    versions = [_v("2.0.0", yanked=True), _v("1.5.0"), _v("1.0.0")]
    assert resolve("p", versions, None)["version"] == "1.5.0"
    assert resolve("p", versions, ">=1.0")["version"] == "1.5.0"
    assert resolve("p", versions, "2.0.0")["version"] == "2.0.0"
    with pytest.raises(PluginNotFound):
        resolve("p", versions, ">=2")
    with pytest.raises(PluginNotFound):
        resolve("p", versions, "3.0.0")
    with pytest.raises(PluginNotFound):
        resolve("p", versions, "not a spec")
