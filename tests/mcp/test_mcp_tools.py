"""Contributions → MCP tools, as data: names the SDK accepts, unique and deterministic
whatever the plugins are called; the manifest's behaviour hints, checked like any key."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest
from mcp.shared.tool_name_validation import validate_tool_name

from cordon.runtime._errors import ManifestError
from cordon.runtime._mcp._tools import MAX_NAME, SEPARATORS, mcp_names
from cordon.runtime._settings._manifest import parse_manifest


def test_a_tool_is_named_after_its_plugin_and_itself() -> None:
    assert mcp_names([("hello", "greet"), ("hello", "fs.read")]) == {
        ("hello", "greet"): "hello.greet",
        ("hello", "fs.read"): "hello.fs.read",
    }
    assert mcp_names([("hello", "greet")], "__") == {("hello", "greet"): "hello__greet"}


def test_names_that_collide_get_numbered_in_a_fixed_order() -> None:
    # With "_" as the separator, "a_b" + "c" and "a" + "b_c" are both "a_b_c".
    pairs = [("a_b", "c"), ("a", "b_c"), ("a", "b-c")]
    first = mcp_names(pairs, "_")
    assert first == {("a", "b_c"): "a_b_c", ("a_b", "c"): "a_b_c-2", ("a", "b-c"): "a_b-c"}
    assert mcp_names(list(reversed(pairs)), "_") == first


def test_a_name_too_long_is_cut_and_keeps_a_hash_of_the_whole() -> None:
    long_tool = "t" * 128
    names = mcp_names([("p" * 64, long_tool), ("p" * 64, long_tool[:-1] + "u")])
    a, b = names.values()
    assert len(a) == len(b) == MAX_NAME
    assert a != b  # cut at the same place, told apart by the hash of the full name


def _hostile_name(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "._-/ :é\u202e\x00\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))


@pytest.mark.parametrize("separator", SEPARATORS)
def test_every_name_is_valid_for_mcp_and_unique_whatever_the_input(separator: str) -> None:
    rng = random.Random(16)
    pairs = [(_hostile_name(rng), _hostile_name(rng)) for _ in range(300)]
    pairs += [("x", "y"), ("x", "y.z"), ("x.y", "z"), ("x_y", "z"), ("", "")]
    names = mcp_names(pairs, separator)
    assert len(set(names.values())) == len(set(pairs))
    for name in names.values():
        assert validate_tool_name(name).is_valid, name
    rng.shuffle(pairs)
    assert mcp_names(pairs, separator) == names


def test_an_unknown_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="separator"):
        mcp_names([("a", "b")], "/")


def _manifest(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "plugin": {"id": "hello", "name": "Hello", "version": "1.0.0", "entry": "m:plugin"},
        "contributes": {"tools": [tool]},
    }


def test_manifest_hints_are_read_and_only_those_written_are_kept() -> None:
    m = parse_manifest(
        _manifest({"name": "rm", "destructive": True, "idempotent": False}),
        directory=None,
        source="t",
    )
    assert m.contributes.tools[0].hints == {"destructive": True, "idempotent": False}


def test_a_hint_that_is_not_a_boolean_is_a_manifest_error_naming_it() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(_manifest({"name": "rm", "read-only": "yes"}), directory=None, source="t")
    problems = [str(p) for p in info.value.fields()["problems"]]
    assert len(problems) == 1 and problems[0].startswith("contributes.tools[0].read-only:")
