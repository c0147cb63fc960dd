"""Permissions end to end: requested in the manifest, granted by the operator, enforced by
the host, recorded in the audit trail and readable with `cordon audit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import structlog

from cordon.protocol import InvalidParams
from cordon.runtime import ConfigError, PermissionDenied, Runtime, load_config
from cordon.runtime._hostapi._events import EventBus, check_glob, check_topic
from cordon.runtime._hostapi._exec import ExecRule, check_argv
from cordon.runtime._settings._config import parse_config
from cordon.runtime._settings._exec_rules import describe_grant, escalation_reason, matches_any
from cordon.runtime._settings._permissions import check_grant_string, check_permission_string
from cordon.runtime._settings._validate import PLUGIN_ID
from cordon.worker import Plugin, PluginDefinitionError
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.anyio

NOTIFIER = EXAMPLES / "notifier"
HOSTILE = Path(__file__).resolve().parent / "sandbox" / "hostile"


def _config(tmp_path: Path, **notifier: object) -> dict[str, object]:
    return {
        "runtime": {"state-dir": str(tmp_path / "state")},
        "plugins": {"notifier": dict(notifier)},
    }


async def test_an_ungranted_permission_loads_with_a_warning_and_the_call_is_denied(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        with structlog.testing.capture_logs() as logs:
            async with Runtime(_config(tmp_path, grant=["log"])) as rt:
                notifier = await rt.load(NOTIFIER)
                with pytest.raises(PermissionDenied) as info:
                    await notifier.call("last_event")
                trail = await rt.audit("notifier")
    assert (info.value.permission, info.value.plugin) == ("storage", "notifier")
    warning = next(e for e in logs if e["event"] == "plugin.permissions_missing")
    assert "storage" in warning["missing"]
    denied = [e for e in trail if not e.allowed]
    assert denied
    assert denied[0].method == "host/storage.get"


async def test_strict_permissions_refuses_to_load_a_plugin_asking_for_more(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, grant=["log"])
    config["runtime"] = {"state-dir": str(tmp_path / "state"), "strict-permissions": True}
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            with pytest.raises(PermissionDenied) as info:
                await rt.load(NOTIFIER)
            assert "notifier" not in rt.plugins
    assert "strict-permissions" in (info.value.message or "")


async def test_deny_wins_over_grant(tmp_path: Path) -> None:
    cfg = _config(tmp_path, grant=["log", "storage", "events:subscribe:build.*"], deny=["storage"])
    with anyio.fail_after(30):
        async with Runtime(cfg) as rt:
            notifier = await rt.load(NOTIFIER)
            assert "storage" not in notifier.permissions.effective
            with pytest.raises(PermissionDenied):
                await notifier.call("last_event")


async def test_granted_calls_work_and_cordon_audit_shows_them(tmp_path: Path) -> None:
    grants = ["log", "storage", "events:subscribe:build.*"]
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path, grant=grants)) as rt:
            notifier = await rt.load(NOTIFIER)
            assert await notifier.call("last_event") is None
    toml = tmp_path / "cordon.toml"
    toml.write_text(f'[runtime]\nstate-dir = "{tmp_path / "state"}"\n')
    cordon = str(Path(sys.executable).parent / "cordon")
    r = subprocess.run(
        [cordon, "audit", "notifier", "--json", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert any(e["method"] == "host/storage.get" and e["allowed"] for e in entries)


# -- exec grants: the operator's narrowing, and plain words about their power -------------------


def _problems(data: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [(p["path"], p["message"]) for p in info.value.problems]


def test_exec_tables_parse_and_merge_command_by_command_over_the_defaults() -> None:
    cfg = parse_config(
        {
            "defaults": {"exec": {"git": {"allow": ["status"]}}},
            "plugins": {
                "docker": {
                    "grant": ["exec:docker"],
                    "exec": {"docker": {"allow": ["ps *", ""], "env": {"DOCKER_HOST": "x"}}},
                }
            },
        }
    )
    rules = cfg.plugins["docker"].exec_rules
    assert rules["docker"] == ExecRule(allow=("ps *", ""), env={"DOCKER_HOST": "x"})
    assert rules["git"] == ExecRule(allow=("status",)), "the defaults' narrowing is kept"
    again = parse_config(cfg.to_toml_dict())
    assert again.plugins["docker"].exec_rules == rules, "config show round-trips"


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"a/b": {}}, 'plugins.p.exec."a/b"'),
        ({"git\n": {}}, 'plugins.p.exec."git\\n"'),
        ({"git": {"allow": ["status 'x"]}}, "plugins.p.exec.git.allow[0]"),
        ({"git": {"allow": [3]}}, "plugins.p.exec.git.allow[0]"),
        ({"git": {"allow": "status"}}, "plugins.p.exec.git.allow"),
        ({"git": {"env": {"HOME": "/root"}}}, "plugins.p.exec.git.env.HOME"),
        ({"git": {"env": {"1X": "y"}}}, "plugins.p.exec.git.env.1X"),
        ({"git": {"env": {"X": 1}}}, "plugins.p.exec.git.env.X"),
        ({"git": {"write": "/srv"}}, "plugins.p.exec.git.write"),
        ({"git": {"alow": []}}, "plugins.p.exec.git.alow"),
        ({"git": "status"}, "plugins.p.exec.git"),
        ({"git": {"input": "yes"}}, "plugins.p.exec.git.input"),
        ({"git": {"input": True}}, "plugins.p.exec.git.input"),
    ],
)
def test_a_bad_exec_table_is_reported_under_its_toml_path(table: object, path: str) -> None:
    problems = _problems({"plugins": {"p": {"exec": table}}})
    assert [p for p, _ in problems] == [path], problems


def test_exec_input_without_allow_is_refused_saying_why() -> None:
    ((path, message),) = _problems(
        {"plugins": {"p": {"grant": ["exec:sh"], "exec": {"sh": {"input": True}}}}}
    )
    assert path == "plugins.p.exec.sh.input"
    assert "needs an allow list" in message and "runs what it is fed" in message


def test_exec_input_with_allow_parses_and_round_trips() -> None:
    cfg = parse_config(
        {"plugins": {"k": {"exec": {"kubectl": {"allow": ["apply --filename=-"], "input": True}}}}}
    )
    rules = cfg.plugins["k"].exec_rules
    assert rules["kubectl"] == ExecRule(allow=("apply --filename=-",), input=True)
    assert parse_config(cfg.to_toml_dict()).plugins["k"].exec_rules == rules
    assert ExecRule().input is False, "stdin stays empty unless the operator says so"


def test_plugin_info_and_config_check_say_when_a_grant_takes_input(tmp_path: Path) -> None:
    toml = _docker_config(
        tmp_path, '[plugins.docker.exec.docker]\nallow = ["build -- -"]\ninput = true\n'
    )
    info = _cordon("plugin", "info", "docker", "--json", "--config", str(toml))
    (grant,) = json.loads(info.stdout)["exec"]
    assert grant["input"] is True
    assert "may feed its stdin" in grant["summary"]
    check = _cordon("config", "check", str(toml))
    assert check.returncode == 0, check.stderr
    assert "may feed its stdin (input = true)" in check.stdout


def _cordon(*args: str) -> subprocess.CompletedProcess[str]:
    cordon = str(Path(sys.executable).parent / "cordon")
    return subprocess.run([cordon, *args], capture_output=True, text=True, timeout=60, check=False)


def _docker_config(tmp_path: Path, exec_table: str = "") -> Path:
    toml = tmp_path / "cordon.toml"
    toml.write_text(
        f'[runtime]\nplugin-dirs = ["{EXAMPLES}"]\nstate-dir = "{tmp_path / "state"}"\n'
        f'[plugins.docker]\ngrant = ["exec:docker", "log"]\n{exec_table}'
    )
    return toml


def test_plugin_info_doctor_and_config_check_say_an_exec_grant_is_as_powerful_as_the_command(
    tmp_path: Path,
) -> None:
    toml = _docker_config(tmp_path)
    info = _cordon("plugin", "info", "docker", "--config", str(toml))
    doctor = _cordon("doctor", "--config", str(toml))
    check = _cordon("config", "check", str(toml))
    for r in (info, doctor, check):
        assert r.returncode == 0, r.stderr
        assert "exec:docker is as powerful as docker itself" in r.stdout, r.stdout
        assert "ESCALATOR" in r.stdout and "--privileged" in r.stdout
    as_json = json.loads(
        _cordon("plugin", "info", "docker", "--json", "--config", str(toml)).stdout
    )
    (grant,) = as_json["exec"]
    assert grant["command"] == "docker" and grant["allow"] is None and grant["escalator"]


def test_a_narrowed_exec_grant_is_shown_with_its_patterns(tmp_path: Path) -> None:
    toml = _docker_config(tmp_path, '[plugins.docker.exec.docker]\nallow = ["ps *"]\n')
    r = _cordon("plugin", "info", "docker", "--json", "--config", str(toml))
    (grant,) = json.loads(r.stdout)["exec"]
    assert grant["allow"] == ["ps *"]
    assert "narrowed to argument patterns 'ps *'" in grant["summary"]


@pytest.mark.parametrize(
    ("command", "escalates"),
    [
        ("docker", True),
        ("kubectl", True),
        ("git", True),
        ("ssh", True),
        ("sudo", True),
        ("bash", True),
        ("python3.11", True),
        ("perl", True),
        ("node", True),
        ("env", True),
        ("find", True),
        ("rg", False),
        ("jq", False),
    ],
)
def test_known_escalators_are_named_with_a_reason(command: str, escalates: bool) -> None:
    reason = escalation_reason(command)
    assert (reason is not None) is escalates
    assert "as powerful as" in describe_grant(command, None)


# -- full matches: a trailing newline is not part of a valid name (issue 11, point 12) ------------


@pytest.mark.parametrize("topic", ["build.done\n", "hostile.x\n", "a\nb"])
def test_a_topic_with_a_newline_is_refused_for_emit_and_subscribe(topic: str) -> None:
    with pytest.raises(InvalidParams):
        check_topic(topic)
    with pytest.raises(InvalidParams):
        check_glob(topic)
    assert check_permission_string(f"events:emit:{topic}") is not None
    assert check_permission_string(f"events:subscribe:{topic}") is not None


@pytest.mark.parametrize("perm", ["exec:git\n", "exec:\ngit"])
def test_an_exec_permission_or_grant_with_a_newline_is_refused(perm: str) -> None:
    assert check_permission_string(perm) is not None
    assert check_grant_string(perm) is not None
    assert check_grant_string(perm, deny=True) is not None


def test_argv0_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidParams):
        check_argv(["git\n", "status"])


def test_a_plugin_id_with_a_trailing_newline_is_refused() -> None:
    assert PLUGIN_ID.fullmatch("hello\n") is None
    assert _problems({"plugins": {"hello\n": {}}})


@pytest.mark.parametrize("name", ["tool\n", "tool\nx"])
def test_a_tool_name_with_a_newline_is_refused_by_the_worker(name: str) -> None:
    plugin = Plugin()

    async def handler(ctx: object) -> None:
        return None

    with pytest.raises(PluginDefinitionError):
        plugin.tool(name=name)(handler)


async def test_a_subscription_with_a_newline_is_refused_by_the_bus() -> None:
    async with EventBus() as bus:

        async def deliver(topic: str, payload: object, source: str) -> None:
            return None

        with pytest.raises(InvalidParams):
            bus.subscribe("p", "build.*\n", deliver)


async def test_a_plugin_whose_exec_write_path_holds_the_state_dir_does_not_load(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    config["plugins"] = {
        "exec_planter": {"grant": ["exec:git"], "exec": {"git": {"write": [str(tmp_path)]}}}
    }
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            with pytest.raises(ConfigError) as info:
                await rt.load(HOSTILE / "exec_planter")
            assert "exec_planter" not in rt.plugins
    (problem,) = info.value.problems
    assert problem["path"] == "plugins.exec_planter.exec.git.write[0]"


@pytest.mark.parametrize(
    ("plugin", "command", "args"),
    [
        ("docker", "docker", ["run", "--privileged", "-v", "/:/host", "alpine", "chroot", "/host"]),
        ("docker", "docker", ["run", "--detach", "--volume=/:/host", "--", "alpine"]),
        ("docker", "docker", ["--config=/tmp/x", "ps"]),
        ("docker", "docker", ["ps", "--no-trunc", "--format", "{{.ID}}"]),
        ("docker", "docker", ["exec", "web", "sh"]),
        ("docker", "docker", ["x", "--help"]),
        ("kubernetes", "kubectl", ["--kubeconfig=/tmp/k", "get", "pods", "--output=json"]),
        ("kubernetes", "kubectl", ["get", "pods", "--output=json", "--token=abc"]),
        ("kubernetes", "kubectl", ["exec", "web", "--", "sh"]),
        ("kubernetes", "kubectl", ["get", "secrets", "--output=json"]),
        ("kubernetes", "kubectl", ["describe", "--namespace=x", "--kubeconfig=/k", "--", "a", "b"]),
        # The manifest comes only on stdin: no file name, no second -f, no injected option.
        ("kubernetes", "kubectl", ["apply", "--filename=/etc/kubernetes/admin.yaml"]),
        ("kubernetes", "kubectl", ["apply", "--filename=-", "--filename=/tmp/x"]),
        ("kubernetes", "kubectl", ["apply", "--filename=-", "--kubeconfig=/k"]),
        ("kubernetes", "kubectl", ["create", "--filename=-"]),
    ],
)
def test_the_example_configs_patterns_refuse_escalations(
    plugin: str, command: str, args: list[str]
) -> None:
    rule = load_config(EXAMPLES.parent / "cordon.toml").for_plugin(plugin).exec_rules[command]
    assert rule.allow is not None
    assert not matches_any(rule.allow, args)
