"""The operator's config: the full example, every error at once, merging, lookup, display."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cordon.runtime._errors import ConfigError, Problem
from cordon.runtime._settings._config import (
    DEFAULT_CONFIG,
    Config,
    PluginSettings,
    RestartPolicy,
    find_config,
    load_config,
    parse_config,
)

MiB = 1024**2

FULL_EXAMPLE = """\
[runtime]
plugin-dirs = ["examples/plugins"]
state-dir = ".cordon"
strict-permissions = false
redact-patterns = ["sk-[A-Za-z0-9]{20,}"]
middleware-order = ["audit", "hello"]
cgroups = "off"

[defaults]
memory = "256 MiB"
cpu-time = "30 s"
call-timeout = "10 s"
max-call-timeout = "60 s"
open-files = 64
processes = 0
file-size = "16 MiB"
max-message = "16 MiB"
restart = { max = 5, within = "60 s", backoff = "0.2 s", max-backoff = "30 s" }
health-interval = "5 s"
health-timeout = "2 s"
sandbox = "strict"
fs-read = []
fs-write = []
grant = ["log"]
deny = ["exec:*"]
storage-quota = "10 MiB"
log-rate = 100
activate = "lazy"
idle-timeout = "0 s"
enabled = true
middleware-policy = "fail-closed"

[plugins.hello]
memory = "512 MiB"
restart = { max = 10 }
grant = ["log", "storage"]
fs-read = ["data", "/opt/shared"]
settings = { greeting = "hi", nested = { list = [1, 2.5, "x"] } }

[plugins.audit]
sandbox = "best-effort"
activate = "eager"
middleware-policy = "fail-open"
cpu-time = "unlimited"
"""


def write(tmp_path: Path, text: str, name: str = "cordon.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [str(p) for p in info.value.fields()["problems"]]


# -- the full example ---------------------------------------------------------------------------


def test_the_full_example_config_parses_into_base_units(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))

    assert cfg.source == str(tmp_path / "cordon.toml")
    assert cfg.runtime.plugin_dirs == (str(tmp_path / "examples" / "plugins"),)
    assert cfg.runtime.state_dir == str(tmp_path / ".cordon")
    assert cfg.runtime.redact_patterns == ("sk-[A-Za-z0-9]{20,}",)
    assert cfg.runtime.middleware_order == ("audit", "hello")
    d = cfg.defaults
    assert (d.memory, d.cpu_time, d.call_timeout, d.max_call_timeout) == (256 * MiB, 30, 10, 60)
    assert (d.open_files, d.processes, d.file_size, d.max_message) == (64, 0, 16 * MiB, 16 * MiB)
    assert d.restart == RestartPolicy(max=5, within=60.0, backoff=0.2, max_backoff=30.0)
    assert (d.health_interval, d.health_timeout, d.storage_quota) == (5, 2, 10 * MiB)
    assert (d.sandbox, d.activate, d.middleware_policy) == ("strict", "lazy", "fail-closed")
    assert (d.grant, d.deny, d.log_rate, d.idle_timeout, d.enabled) == (
        ("log",),
        ("exec:*",),
        100.0,
        0.0,
        True,
    )
    assert set(cfg.plugins) == {"hello", "audit"}
    assert cfg.plugins["audit"].cpu_time is None
    assert cfg.plugins["audit"].sandbox == "best-effort"


def test_a_plugin_section_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    hello = cfg.for_plugin("hello")

    assert hello.memory == 512 * MiB
    assert hello.grant == ("log", "storage")
    assert hello.call_timeout == cfg.defaults.call_timeout
    assert hello.settings == {"greeting": "hi", "nested": {"list": [1, 2.5, "x"]}}
    assert cfg.for_plugin("audit").settings == {}


def test_a_partial_restart_table_merges_key_by_key_with_the_defaults() -> None:
    cfg = parse_config(
        {
            "defaults": {"restart": {"max": 3, "within": "2 min"}},
            "plugins": {"hello": {"restart": {"backoff": "1 s"}}},
        }
    )
    assert cfg.defaults.restart == RestartPolicy(max=3, within=120.0, backoff=0.2, max_backoff=30)
    assert cfg.for_plugin("hello").restart == RestartPolicy(
        max=3, within=120.0, backoff=1.0, max_backoff=30.0
    )


def test_a_plugin_deny_list_adds_to_the_default_deny_list_rather_than_replacing_it() -> None:
    cfg = parse_config(
        {"defaults": {"deny": ["exec:*"]}, "plugins": {"hello": {"deny": ["storage"]}}}
    )
    assert cfg.for_plugin("hello").deny == ("exec:*", "storage")


def test_a_plugin_without_a_section_gets_the_defaults() -> None:
    cfg = parse_config({"defaults": {"memory": "1 GiB"}})
    assert cfg.for_plugin("unlisted") is cfg.defaults
    assert cfg.for_plugin("unlisted").memory == 1024 * MiB


def test_plain_numbers_are_seconds_and_unlimited_lifts_a_limit() -> None:
    cfg = parse_config(
        {
            "defaults": {
                "memory": "1 GiB",
                "call-timeout": 2.5,
                "file-size": "unlimited",
                "open-files": "unlimited",
                "processes": "unlimited",
                "log-rate": 2.5,
            }
        }
    )
    d = cfg.defaults
    assert (d.memory, d.call_timeout, d.file_size, d.open_files, d.processes) == (
        1024 * MiB,
        2.5,
        None,
        None,
        None,
    )
    assert d.log_rate == 2.5


def test_an_empty_config_is_the_built_in_defaults() -> None:
    cfg = parse_config({})
    assert cfg.defaults == DEFAULT_CONFIG.defaults
    assert cfg.runtime == DEFAULT_CONFIG.runtime
    assert cfg.plugins == {}


# -- the built-in defaults ------------------------------------------------------------------------


def test_the_built_in_defaults_are_safe_for_untrusted_code() -> None:
    d = DEFAULT_CONFIG.defaults
    assert d.sandbox == "strict"
    assert d.processes == 0
    assert d.grant == ()
    assert d.fs_read == () and d.fs_write == ()
    assert d.memory == 256 * MiB and d.cpu_time == 30.0 and d.open_files == 64
    assert d.file_size == 16 * MiB and d.max_message == 16 * MiB
    assert d.storage_quota == 10 * MiB
    assert d.call_timeout <= d.max_call_timeout
    assert d.middleware_policy == "fail-closed"
    assert DEFAULT_CONFIG.runtime.plugin_dirs == ()
    assert DEFAULT_CONFIG.runtime.strict_permissions is False
    assert DEFAULT_CONFIG.source is None


def test_config_structs_are_immutable() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_CONFIG.defaults.memory = 1  # type: ignore[misc]


# -- errors -------------------------------------------------------------------------------------


def test_every_problem_in_a_config_is_reported_at_once_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[runtime]
strict-permissions = "yes"
[defaults]
memroy = "1 GiB"
open-files = "many"
sandbox = "strickt"
[plugins.hello]
memory = "lots"
cpu-time = "soon"
grant = ["net"]
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.fields()["source"] == str(path)
    assert sorted(map(str, err.fields()["problems"])) == sorted(
        [
            'runtime.strict-permissions: expected true or false, got "yes"',
            'defaults.memroy: unknown key (did you mean "memory"?)',
            'defaults.open-files: expected an integer or "unlimited", got "many"',
            'defaults.sandbox: "strickt" is not one of "strict", "best-effort", "off" '
            '(did you mean "strict"?)',
            'plugins.hello.memory: "lots" is not a size',
            'plugins.hello.cpu-time: "soon" is not a duration',
            "plugins.hello.grant[0]: unknown permission 'net' (known: log, storage, "
            "storage:shared, config, events:emit:<topic>, events:subscribe:<topic>, "
            "exec:<command>, http:<origin>)",
        ]
    )
    assert all(isinstance(p, Problem) for p in err.fields()["problems"])
    assert "7 problem(s) with the configuration in" in str(err)
    assert 'plugins.hello.memory: "lots" is not a size' in str(err)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"defualts": {}}, 'defualts: unknown key (did you mean "defaults"?)'),
        (
            {"runtime": {"plugin_dirs": []}},
            'runtime.plugin_dirs: unknown key (did you mean "plugin-dirs"?)',
        ),
        (
            {"defaults": {"call_timeout": 1}},
            'defaults.call_timeout: unknown key (did you mean "call-timeout"?)',
        ),
        (
            {"plugins": {"hello": {"setings": {}}}},
            'plugins.hello.setings: unknown key (did you mean "settings"?)',
        ),
        (
            {"defaults": {"restart": {"maximum": 1}}},
            'defaults.restart.maximum: unknown key (did you mean "max"?)',
        ),
        ({"defaults": {"zzzz": 1}}, "defaults.zzzz: unknown key"),
    ],
)
def test_an_unknown_key_is_an_error_with_a_did_you_mean(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"defaults": {"open-files": "many"}},
            'defaults.open-files: expected an integer or "unlimited", got "many"',
        ),
        ({"defaults": {"enabled": "yes"}}, 'defaults.enabled: expected true or false, got "yes"'),
        (
            {"defaults": {"memory": True}},
            'defaults.memory: expected a size with a unit (a string like "256 MiB") '
            'or "unlimited", got true',
        ),
        (
            {"defaults": {"memory": 1.5}},
            'defaults.memory: expected a size with a unit (a string like "256 MiB") '
            'or "unlimited", got 1.5',
        ),
        (
            {"defaults": {"call-timeout": [1]}},
            "defaults.call-timeout: expected a duration (a number of seconds or a string like "
            '"500 ms"), got [1]',
        ),
        (
            {"defaults": {"log-rate": "fast"}},
            'defaults.log-rate: expected a number (lines per second), got "fast"',
        ),
        ({"defaults": {"fs-read": "/data"}}, 'defaults.fs-read: expected an array, got "/data"'),
        ({"defaults": {"fs-read": [1]}}, "defaults.fs-read[0]: expected a string, got 1"),
        ({"defaults": {"restart": 5}}, "defaults.restart: expected a table, got 5"),
        ({"defaults": 5}, "defaults: expected a table, got 5"),
        ({"plugins": {"hello": "x"}}, 'plugins.hello: expected a table, got "x"'),
        (
            {"plugins": {"hello": {"settings": 3}}},
            "plugins.hello.settings: expected a table, got 3",
        ),
        ({"runtime": {"state-dir": 7}}, "runtime.state-dir: expected a string, got 7"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_was_expected(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"defaults": {"memory": "0 B"}},
            'defaults.memory: "0 B" is too small for a worker to start (at least 48 MiB)',
        ),
        (
            {"defaults": {"max-message": "1 KiB"}},
            'defaults.max-message: "1 KiB" is too small (at least 4 KiB)',
        ),
        (
            {"defaults": {"call-timeout": "0 s"}},
            'defaults.call-timeout: "0 s" must be longer than zero',
        ),
        ({"defaults": {"open-files": 0}}, "defaults.open-files: must be at least 1, got 0"),
        (
            {"defaults": {"open-files": 7}},
            "defaults.open-files: 7 is too few for a worker to start (at least 16)",
        ),
        ({"defaults": {"processes": -1}}, "defaults.processes: must be at least 0, got -1"),
        ({"defaults": {"log-rate": 0}}, "defaults.log-rate: must be a positive number, got 0"),
        (
            {"defaults": {"idle-timeout": "-1 s"}},
            'defaults.idle-timeout: "-1 s" is not a duration: must not be negative',
        ),
        (
            {"defaults": {"restart": {"max": -1}}},
            "defaults.restart.max: must be at least 0, got -1",
        ),
        (
            {"defaults": {"activate": "now"}},
            'defaults.activate: "now" is not one of "lazy", "eager"',
        ),
        (
            {"defaults": {"middleware-policy": "open"}},
            'defaults.middleware-policy: "open" is not one of "fail-open", "fail-closed" '
            '(did you mean "fail-open"?)',
        ),
        (
            {"defaults": {"sandbox": "none"}},
            'defaults.sandbox: "none" is not one of "strict", "best-effort", "off"',
        ),
        (
            {"defaults": {"grant": ["exec:*"]}},
            "defaults.grant[0]: 'exec:*': '*' is not a command name (no path, no spaces)",
        ),
        (
            {"defaults": {"settings": {}}},
            "defaults.settings: settings belong to one plugin: put them under [plugins.<id>]",
        ),
        (
            {"plugins": {"Hello": {}}},
            'plugins.Hello: "Hello" is not a plugin id (lower-case letter, then up to 63 '
            "lower-case letters, digits, _ or -)",
        ),
        (
            {"plugins": {"hello": {"settings": {"when": {1, 2}}}}},
            "plugins.hello.settings.when: expected a TOML value, got {1, 2}",
        ),
        (
            {"runtime": {"redact-patterns": ["a*"]}},
            'runtime.redact-patterns[0]: "a*" matches the empty string, '
            "so it would redact everywhere",
        ),
        (
            {"runtime": {"middleware-order": ["a", "a"]}},
            'runtime.middleware-order[1]: duplicate of runtime.middleware-order[0] ("a")',
        ),
        (
            {"runtime": {"cgroups": "always"}},
            'runtime.cgroups: "always" is not one of "auto", "off"',
        ),
    ],
)
def test_a_value_out_of_range_is_named_with_the_offending_value(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


def test_a_redact_pattern_that_does_not_compile_is_reported() -> None:
    (problem,) = problems_of({"runtime": {"redact-patterns": ["ok", "("]}})
    assert problem.startswith('runtime.redact-patterns[1]: "(" is not a valid regular expression')


def test_exec_globs_are_allowed_in_deny_but_not_in_grant() -> None:
    cfg = parse_config({"defaults": {"deny": ["exec:*"], "grant": ["exec:git"]}})
    assert cfg.defaults.deny == ("exec:*",)


def test_a_call_timeout_longer_than_the_maximum_is_reported_where_it_is_set() -> None:
    assert problems_of({"defaults": {"call-timeout": "2 min"}}) == [
        "defaults.call-timeout: call-timeout (2 min) is longer than max-call-timeout (1 min)"
    ]
    assert problems_of({"plugins": {"p": {"max-call-timeout": "5 s"}}}) == [
        "plugins.p.max-call-timeout: call-timeout (10 s) is longer than max-call-timeout (5 s)"
    ]


def test_an_inconsistent_default_is_reported_once_not_under_every_plugin() -> None:
    data = {
        "defaults": {"call-timeout": "2 min"},
        "plugins": {"a": {"memory": "1 GiB"}, "b": {}},
    }
    assert problems_of(data) == [
        "defaults.call-timeout: call-timeout (2 min) is longer than max-call-timeout (1 min)"
    ]


def test_a_backoff_longer_than_the_maximum_backoff_is_reported() -> None:
    assert problems_of({"plugins": {"p": {"restart": {"backoff": "1 min"}}}}) == [
        "plugins.p.restart.backoff: backoff (1 min) is longer than max-backoff (30 s)"
    ]


def test_a_toml_syntax_error_is_a_config_error_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[defaults]\nmemory = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.fields()["problems"]
    assert problem["path"] == ""
    assert problem["message"].startswith("invalid TOML: ")
    assert "line 2, column" in problem["message"]


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cordon.toml"
    path.write_bytes(b'[runtime]\nstate-dir = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_config_error_is_a_cordon_error_that_survives_pickling() -> None:
    import pickle

    from cordon.protocol import CordonError

    with pytest.raises(ConfigError) as info:
        parse_config({"defaults": {"memory": "lots"}}, source="x.toml")
    err = info.value
    assert isinstance(err, CordonError)
    again = pickle.loads(pickle.dumps(err))
    assert again.fields() == err.fields()
    assert again.fields()["source"] == "x.toml"


# -- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        """\
[runtime]
plugin-dirs = ["plugins", "../shared", "/abs/plugins"]
state-dir = "state"
[defaults]
fs-read = ["data"]
fs-write = ["./out/"]
""",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.runtime.plugin_dirs == (
        str(conf_dir / "plugins"),
        str(tmp_path / "shared"),
        "/abs/plugins",
    )
    assert cfg.runtime.state_dir == str(conf_dir / "state")
    assert cfg.defaults.fs_read == (str(conf_dir / "data"),)
    assert cfg.defaults.fs_write == (str(conf_dir / "out"),)


def test_relative_paths_resolve_against_base_dir_when_parsed_from_data(tmp_path: Path) -> None:
    cfg = parse_config(
        {"runtime": {"state-dir": "s"}, "plugins": {"p": {"fs-write": ["w"]}}},
        base_dir=tmp_path,
    )
    assert cfg.runtime.state_dir == str(tmp_path / "s")
    assert cfg.for_plugin("p").fs_write == (str(tmp_path / "w"),)


def test_without_a_base_dir_relative_paths_stay_as_written() -> None:
    assert parse_config({"runtime": {"state-dir": "s"}}).runtime.state_dir == "s"


def test_a_tilde_path_expands_to_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    cfg = parse_config({"defaults": {"fs-read": ["~/data"]}}, base_dir=Path("/etc/cordon"))
    assert cfg.defaults.fs_read == ("/home/op/data",)


# -- finding the config ---------------------------------------------------------------------------


def test_find_config_prefers_the_explicit_file(tmp_path: Path) -> None:
    write(tmp_path, '[defaults]\nmemory = "1 GiB"\n')
    explicit = write(tmp_path, '[defaults]\nmemory = "2 GiB"\n', name="other.toml")
    assert find_config(explicit, cwd=tmp_path).defaults.memory == 2048 * MiB
    assert find_config("other.toml", cwd=tmp_path).source == str(explicit)


def test_find_config_falls_back_to_cordon_toml_in_the_working_directory(tmp_path: Path) -> None:
    path = write(tmp_path, '[defaults]\nmemory = "1 GiB"\n')
    cfg = find_config(None, cwd=tmp_path)
    assert cfg.source == str(path)
    assert cfg.defaults.memory == 1024 * MiB


def test_find_config_uses_the_built_in_defaults_when_there_is_no_file(tmp_path: Path) -> None:
    assert find_config(None, cwd=tmp_path) is DEFAULT_CONFIG


def test_find_config_uses_the_process_working_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[defaults]\nopen-files = 70\n")
    monkeypatch.chdir(tmp_path)
    assert find_config(None).defaults.open_files == 70


def test_an_explicit_config_that_does_not_exist_is_an_error_not_a_fallback(
    tmp_path: Path,
) -> None:
    write(tmp_path, "")
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(tmp_path / "missing.toml", cwd=tmp_path)


def test_a_broken_cordon_toml_in_the_working_directory_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "[defaults]\nmemory = 'lots'\n")
    with pytest.raises(ConfigError, match="is not a size"):
        find_config(None, cwd=tmp_path)


# -- display ------------------------------------------------------------------------------------


def test_config_show_lists_effective_settings_in_human_units(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    doc = cfg.to_toml_dict()
    assert doc["defaults"]["memory"] == "256 MiB"
    assert doc["defaults"]["restart"] == {
        "max": 5,
        "within": "1 min",
        "backoff": "200 ms",
        "max-backoff": "30 s",
        "eager": True,
    }
    hello = doc["plugins"]["hello"]
    assert hello["memory"] == "512 MiB"
    assert hello["call-timeout"] == "10 s"
    assert hello["restart"]["max"] == 10
    assert hello["settings"] == {"greeting": "hi", "nested": {"list": [1, 2.5, "x"]}}
    assert doc["plugins"]["audit"]["cpu-time"] == "unlimited"
    assert "settings" not in doc["defaults"]


def test_the_shown_config_parses_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    again = parse_config(cfg.to_toml_dict(), source=cfg.source)
    assert again == cfg

    text = cfg.show()
    assert text.startswith(f"# effective configuration ({cfg.source})")
    assert parse_config(tomllib.loads(text), source=cfg.source) == cfg


def test_the_shown_config_escapes_awkward_strings_as_valid_toml() -> None:
    cfg = parse_config(
        {
            "runtime": {"redact-patterns": [r'"quoted"\d+', "del\x7fx"]},
            "plugins": {"p": {"settings": {"odd key": "line\nbreak", "é": "ü"}}},
        }
    )
    assert parse_config(tomllib.loads(cfg.show())) == cfg


def test_the_built_in_defaults_show_where_they_came_from() -> None:
    assert DEFAULT_CONFIG.show().startswith("# effective configuration (built-in defaults)")
    assert parse_config(tomllib.loads(DEFAULT_CONFIG.show())) == parse_config({})


def test_settings_are_copied_so_the_caller_cannot_change_a_parsed_config() -> None:
    settings: dict[str, Any] = {"items": [1]}
    cfg = parse_config({"plugins": {"p": {"settings": settings}}})
    settings["items"].append(2)
    assert cfg.for_plugin("p").settings == {"items": [1]}


def test_public_types_are_msgspec_structs_usable_by_the_runtime() -> None:
    s = DEFAULT_CONFIG.for_plugin("x")
    assert isinstance(s, PluginSettings)
    assert isinstance(DEFAULT_CONFIG, Config)
    assert os.fspath(Path(DEFAULT_CONFIG.runtime.state_dir)) == ".cordon"


# -- sizes need units; limits no worker can start under are refused -----------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"defaults": {"memory": 12}},
            'defaults.memory: 12 has no unit: write "12 MiB" (or "12 B" if you mean bytes)',
        ),
        (
            {"defaults": {"memory": "12"}},
            'defaults.memory: "12" has no unit: write "12 MiB" (or "12 B" if you mean bytes)',
        ),
        (
            {"plugins": {"hello": {"file-size": 1024}}},
            'plugins.hello.file-size: 1024 has no unit: write "1024 MiB" (or "1024 B" if you '
            "mean bytes)",
        ),
        (
            {"defaults": {"max-message": "65536"}},
            'defaults.max-message: "65536" has no unit: write "65536 MiB" (or "65536 B" if you '
            "mean bytes)",
        ),
        (
            {"defaults": {"storage-quota": 1.5}},
            'defaults.storage-quota: expected a size with a unit (a string like "256 MiB"), '
            "got 1.5",
        ),
    ],
)
def test_a_size_without_a_unit_is_refused_naming_the_field_and_the_likely_unit(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


def test_zero_needs_no_unit_and_bytes_can_still_be_said_explicitly() -> None:
    cfg = parse_config({"defaults": {"file-size": 0, "storage-quota": "0", "memory": "50331648 B"}})
    assert (cfg.defaults.file_size, cfg.defaults.storage_quota) == (0, 0)
    assert cfg.defaults.memory == 48 * MiB


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"defaults": {"memory": "16 MiB"}},
            'defaults.memory: "16 MiB" is too small for a worker to start (at least 48 MiB)',
        ),
        (
            {"plugins": {"hello": {"memory": "47 MiB"}}},
            'plugins.hello.memory: "47 MiB" is too small for a worker to start (at least 48 MiB)',
        ),
        (
            {"plugins": {"hello": {"open-files": 4}}},
            "plugins.hello.open-files: 4 is too few for a worker to start (at least 16)",
        ),
    ],
)
def test_a_limit_no_worker_can_start_under_is_refused_naming_the_minimum(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


def test_the_smallest_allowed_limits_are_accepted() -> None:
    cfg = parse_config({"defaults": {"memory": "48 MiB", "open-files": 16}})
    assert (cfg.defaults.memory, cfg.defaults.open_files) == (48 * MiB, 16)


def test_config_check_refuses_a_unitless_memory_before_any_worker_runs(tmp_path: Path) -> None:
    cordon = str(Path(sys.executable).parent / "cordon")
    path = tmp_path / "cordon.toml"
    path.write_text('[defaults]\nmemory = 12\n[plugins.hello]\nmemory = "20 MiB"\n')
    r = subprocess.run(
        [cordon, "config", "check", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 3, r.stderr
    problems = {p["path"]: p["message"] for p in json.loads(r.stdout)["problems"]}
    assert problems == {
        "defaults.memory": '12 has no unit: write "12 MiB" (or "12 B" if you mean bytes)',
        "plugins.hello.memory": '"20 MiB" is too small for a worker to start (at least 48 MiB)',
    }


def test_a_runtime_refuses_a_config_whose_memory_no_worker_can_start_in(tmp_path: Path) -> None:
    from cordon.runtime import Runtime

    with pytest.raises(ConfigError) as err:
        Runtime({"runtime": {"state-dir": str(tmp_path)}, "defaults": {"memory": 12}})
    assert [p["path"] for p in err.value.problems or []] == ["defaults.memory"]
    assert "12 MiB" in err.value.message
