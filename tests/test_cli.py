"""The `cordon` command line, run as a real process: JSON on stdout, one line on stderr,
and an exit code per error class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

CORDON = str(Path(sys.executable).parent / "cordon")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORDON, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cordon.toml"
    path.write_text(
        f'[runtime]\nplugin-dirs = ["{EXAMPLES}"]\nstate-dir = "state"\n'
        '[plugins.hello]\ngrant = ["log"]\n[plugins.crashy]\ncall-timeout = "2 s"\n'
    )
    return path


def test_call_prints_the_result_as_json_and_exits_zero(tmp_path: Path, config: Path) -> None:
    r = run(
        "call",
        str(EXAMPLES / "hello"),
        "greet",
        "--params",
        '{"name": "Ada"}',
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == "Hello Ada"


@pytest.mark.parametrize(
    ("plugin", "tool", "params", "code", "error"),
    [
        ("hello", "greet", '{"name": 1}', 5, "InvalidParams"),
        ("hello", "nope", "{}", 5, "MethodNotFound"),
        ("crashy", "raise_error", "{}", 4, "PluginError"),
        ("crashy", "exit_now", '{"code": 3}', 7, "WorkerCrashed"),
        ("crashy", "block_loop", "{}", 6, "CallTimeout"),
    ],
)
def test_each_error_class_has_its_own_exit_code_and_one_line(
    tmp_path: Path, config: Path, plugin: str, tool: str, params: str, code: int, error: str
) -> None:
    r = run(
        "call",
        str(EXAMPLES / plugin),
        tool,
        "--params",
        params,
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert r.returncode == code, r.stderr
    assert r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("cordon:")]
    assert len(lines) == 1
    assert lines[0].startswith(f"cordon: {error}: ")


def test_bad_params_json_is_a_bad_call(tmp_path: Path, config: Path) -> None:
    r = run(
        "call",
        str(EXAMPLES / "hello"),
        "greet",
        "--params",
        "{nope",
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert r.returncode == 5
    assert "--params is not valid JSON" in r.stderr


def test_config_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\nmemory = "lots"\nmemroy = "1 MiB"\nopen-files = "many"\n')
    r = run("config", "check", str(bad), cwd=tmp_path)
    assert r.returncode == 3
    assert "defaults.memory" in r.stderr
    assert 'did you mean "memory"' in r.stderr
    assert "defaults.open-files" in r.stderr


def test_config_check_json_lists_every_problem_with_its_path_and_still_fails(
    tmp_path: Path, config: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\nmemory = "lots"\nopen-files = "many"\n')
    r = run("config", "check", "--json", str(bad), cwd=tmp_path)
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["ok"] is False
    assert [p["path"] for p in out["problems"]] == ["defaults.memory", "defaults.open-files"]
    good = run("config", "check", "--json", str(config), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True


def test_config_show_prints_effective_settings(tmp_path: Path, config: Path) -> None:
    r = run("config", "show", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert "hello" in json.dumps(shown)


def test_plugin_list_reads_manifests_without_starting_workers(tmp_path: Path, config: Path) -> None:
    r = run("plugin", "list", "--json", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows["hello"]["permissions"]["effective"] == ["log"]
    info = run("plugin", "info", "hello", "--json", "--config", str(config), cwd=tmp_path)
    assert json.loads(info.stdout)["permissions"]["missing"] == []


def test_doctor_reports_the_machine_and_what_each_plugin_would_get(
    tmp_path: Path, config: Path
) -> None:
    r = run("doctor", "--json", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    if report["missing_layers"]:
        assert report["plugins"]["hello"].startswith("strict: REFUSED to start")
    else:
        assert report["plugins"]["hello"] == "strict: every layer applied"
    # The same answer a runtime here finds (and no group left behind by asking).
    from cordon.runtime._supervise._cgroup import CgroupSupport

    here = CgroupSupport.detect()
    here.close()
    assert report["cgroup_limits"]["available"] == here.available
    text = run("doctor", "--config", str(config), cwd=tmp_path).stdout
    cgroups_line = next(line for line in text.splitlines() if line.startswith("cgroups"))
    assert cgroups_line.split(None, 1)[1] == report["cgroup_limits"]["verdict"]


def test_new_plugin_scaffolds_a_loadable_plugin(tmp_path: Path) -> None:
    r = run("new", "plugin", "weather", "--dest", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    created = tmp_path / "weather"
    assert (created / "plugin.toml").exists()
    again = run("new", "plugin", "weather", "--dest", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 18
    assert "ScaffoldError" in again.stderr and "already exists" in again.stderr


def test_every_exit_code_is_distinct_and_documented_in_the_readme() -> None:
    from cordon.runtime._cli._main import EXIT_CODES
    from tests.conftest import ROOT

    codes = [code for _, code in EXIT_CODES]
    # Shared only by the two "bad call" classes, on purpose.
    assert len(set(codes)) == len(codes) - 1
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for cls, code in EXIT_CODES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {code} |")), "")
        assert f"`{cls.__name__}`" in row, (cls.__name__, code)


def test_a_usage_error_exits_two(tmp_path: Path) -> None:
    assert run("call", cwd=tmp_path).returncode == 2


def test_run_serves_json_rpc_on_stdin_until_eof(tmp_path: Path, config: Path) -> None:
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "call",
            "params": {"plugin": "hello", "name": "greet", "arguments": {"name": "Ada"}},
        },
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "id": 3, "method": "call", "params": {"plugin": "hello"}},
    ]
    payload = "".join(json.dumps(r) + "\n" for r in requests) + "not json\n"
    proc = subprocess.run(
        [CORDON, "run", "--config", str(config)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    frames = [json.loads(line) for line in proc.stdout.splitlines()]
    assert frames[0]["method"] == "ready"
    by_id = {f.get("id"): f for f in frames[1:]}
    assert by_id[1]["result"] == "Hello Ada"
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32602
    assert by_id[None]["error"]["code"] == -32700


def test_stats_starts_each_plugin_and_reports_its_sandbox(tmp_path: Path, config: Path) -> None:
    r = run("stats", "--json", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["hello"]["pid"] is not None
    assert stats["hello"]["sandbox"]["seccomp"] == "applied"


def _serve_one(config: Path, cwd: Path, method: str, params: dict[str, str]) -> dict[str, object]:
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    proc = subprocess.run(
        [CORDON, "run", "--config", str(config)],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [f for f in map(json.loads, proc.stdout.splitlines()) if f.get("id") == 1]
    assert len(answers) == 1
    answer: dict[str, object] = answers[0]
    return answer


def test_run_reloads_and_disables_a_plugin_on_request(tmp_path: Path, config: Path) -> None:
    # Requests are served concurrently, so each lifecycle request gets a host of its own.
    assert _serve_one(config, tmp_path, "reload", {"plugin": "hello"})["result"] == "active"
    assert _serve_one(config, tmp_path, "disable", {"plugin": "hello"})["result"] == "disabled"


def test_run_needs_at_least_one_channel(tmp_path: Path, config: Path) -> None:
    r = run("run", "--no-stdin", "--no-socket", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 2
    assert "not allowed with argument" in r.stderr


def test_run_with_no_socket_serves_stdin_only(tmp_path: Path, config: Path) -> None:
    # A regular file where the socket would go: refused by a socket-serving host, ignored
    # by a stdin-only one.
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "cordon.sock").write_text("not a socket")
    request = {"jsonrpc": "2.0", "id": 1, "method": "plugins"}

    def host(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CORDON, "run", *flags, "--config", str(config)],
            input=json.dumps(request) + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
        )

    refused = host()
    assert refused.returncode == 16
    assert "ControlSocketError" in refused.stderr
    assert "is not a socket" in refused.stderr
    proc = host("--no-socket")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[1])
    assert "hello" in {p["id"] for p in answer["result"]}
    assert (tmp_path / "state" / "cordon.sock").read_text() == "not a socket"


def test_a_malformed_overrides_file_is_a_config_error_naming_it(
    tmp_path: Path, config: Path
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "plugin-overrides.json").write_text('{"plugins": {"hello": true}}')
    r = run("plugin", "list", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 3
    assert "plugin-overrides.json" in r.stderr
    assert "fix or delete it" in r.stderr


def test_plugin_disable_without_a_host_updates_the_overrides_file(
    tmp_path: Path, config: Path
) -> None:
    for action in ("disable", "enable", "disable"):
        r = run("plugin", action, "hello", "--json", "--config", str(config), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"plugin": "hello", "state": f"{action}d", "live": False}
    r = run("plugin", "disable", "crashy", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    overrides = json.loads((tmp_path / "state" / "plugin-overrides.json").read_text())
    assert overrides["plugins"] == {"crashy": {"enabled": False}, "hello": {"enabled": False}}
    # `cordon call` honours it too.
    called = run(
        "call",
        str(EXAMPLES / "hello"),
        "greet",
        "--params",
        '{"name": "A"}',
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert called.returncode == 10
    assert "disabled" in called.stderr
