"""Effective permissions: requested ∩ granted − denied, with fnmatch-style scope globs."""

from __future__ import annotations

import pytest

from cordon.runtime._errors import ConfigError
from cordon.runtime._settings._permissions import (
    PermissionSet,
    check_grant_string,
    check_permission_string,
    effective_permissions,
)


def test_a_requested_and_granted_permission_is_allowed() -> None:
    perms = effective_permissions(["log", "storage"], ["log", "storage"], [])
    assert perms.allows("log")
    assert perms.allows("storage")
    assert perms.missing == ()


def test_a_granted_but_unrequested_permission_is_not_allowed() -> None:
    perms = effective_permissions(["log"], ["log", "config", "exec:git"], [])
    assert not perms.allows("config")
    assert not perms.allows("exec:git")


def test_a_requested_but_ungranted_permission_is_missing_and_not_allowed() -> None:
    perms = effective_permissions(["log", "storage", "exec:git"], ["log"], [])
    assert not perms.allows("storage")
    assert perms.missing == ("storage", "exec:git")
    assert perms.effective == ("log",)


def test_deny_wins_over_grant() -> None:
    perms = effective_permissions(["storage", "exec:git"], ["storage", "exec:git"], ["exec:git"])
    assert perms.allows("storage")
    assert not perms.allows("exec:git")
    assert perms.missing == ("exec:git",)


def test_a_topic_glob_grant_allows_concrete_topics_inside_both_request_and_grant() -> None:
    perms = effective_permissions(["events:emit:build.*"], ["events:emit:*"], [])
    assert perms.allows("events:emit:build.done")
    assert perms.allows("events:emit:build.step.done"), "* crosses dots, as in fnmatch"
    assert not perms.allows("events:emit:deploy.done"), "outside what was requested"
    assert not perms.allows("events:emit:build"), "build.* needs something after the dot"


def test_a_grant_narrower_than_the_request_allows_only_the_narrower_topics() -> None:
    perms = effective_permissions(["events:emit:*"], ["events:emit:build.*"], [])
    assert perms.allows("events:emit:build.done")
    assert not perms.allows("events:emit:deploy.done")
    assert perms.missing == (), "partly granted is not missing"


def test_a_deny_glob_carves_topics_out_of_a_grant() -> None:
    perms = effective_permissions(
        ["events:emit:build.*"], ["events:emit:build.*"], ["events:emit:build.secret*"]
    )
    assert perms.allows("events:emit:build.done")
    assert not perms.allows("events:emit:build.secrets")
    assert perms.missing == (), "partly denied is still partly effective"


def test_topic_matching_is_case_sensitive() -> None:
    perms = effective_permissions(["events:emit:build.*"], ["events:emit:build.*"], [])
    assert not perms.allows("events:emit:BUILD.done")


def test_emit_and_subscribe_are_different_permissions() -> None:
    perms = effective_permissions(["events:emit:a.*"], ["events:emit:a.*"], [])
    assert not perms.allows("events:subscribe:a.b")


def test_storage_does_not_imply_shared_storage() -> None:
    perms = effective_permissions(["storage", "storage:shared"], ["storage"], [])
    assert perms.allows("storage")
    assert not perms.allows("storage:shared")


def test_exec_grants_must_name_one_command_exactly() -> None:
    with pytest.raises(ConfigError) as err:
        effective_permissions(["exec:git"], ["exec:*"], [])
    assert err.value.fields()["problems"][0]["path"] == "grant[0]"
    assert check_grant_string("exec:g?t") is not None


def test_an_exec_deny_glob_is_a_kill_switch() -> None:
    assert check_grant_string("exec:*", deny=True) is None
    perms = effective_permissions(["exec:git", "exec:rg"], ["exec:git", "exec:rg"], ["exec:*"])
    assert not perms.allows("exec:git")
    assert not perms.allows("exec:rg")


def test_malformed_grant_and_deny_entries_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        effective_permissions(["log"], ["log", "nonsense"], ["exec:/bin/sh", 3])  # type: ignore[list-item]
    assert [p["path"] for p in err.value.fields()["problems"]] == ["grant[1]", "deny[0]", "deny[1]"]


def test_malformed_requests_match_nothing() -> None:
    perms = effective_permissions(["exec:../sh", "log"], ["log"], [])
    assert perms.requested == ("log",)


def test_an_empty_set_allows_nothing() -> None:
    perms = PermissionSet.none()
    for p in ("log", "storage", "storage:shared", "config", "exec:ls", "events:emit:a"):
        assert not perms.allows(p)


def test_check_permission_string_keeps_its_contract() -> None:
    assert check_permission_string("events:emit:build.*") is None
    assert check_permission_string("exec:git") is None
    assert check_permission_string("exec:/usr/bin/git") is not None
    assert check_permission_string(42) is not None
    assert check_permission_string("network") is not None
