"""The example plugins (docker, kubernetes, notifier, redactor) through the real runtime and
sandbox, with stand-in ``docker``/``kubectl`` executables first on the host's PATH."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.protocol import InvalidParams, PermissionDenied, PluginError
from cordon.runtime import Runtime, load_config, load_manifest
from cordon.runtime._settings._permissions import effective_permissions
from tests.conftest import EXAMPLES, ROOT, base_config

pytestmark = pytest.mark.anyio

FAKEBIN = Path(__file__).resolve().parent / "fakebin"

#: What the example config must grant each of these plugins: exactly what it requests.
GRANTS: dict[str, list[str]] = {
    "docker": ["exec:docker", "log"],
    "kubernetes": ["exec:kubectl", "log"],
    "notifier": ["events:subscribe:build.*", "storage", "log"],
    "redactor": ["config"],
}


class Bin:
    """A tmp copy of tests/fakebin: the stand-ins and what they recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def calls(self, command: str) -> list[dict[str, Any]]:
        log = self.path / f"{command}.calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def argvs(self, command: str) -> list[list[str]]:
        return [c["argv"] for c in self.calls(command)]

    def set_mode(self, command: str, mode: str) -> None:
        (self.path / f"{command}.mode").write_text(mode)


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bin:
    """Stand-ins first on PATH. The host reads PATH when a plugin is loaded (its ExecPolicy),
    so this must be in place before ``rt.load``."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("docker", "kubectl"):
        body = (FAKEBIN / name).read_text().split("\n", 1)[1]
        # The exec environment is minimal; name this interpreter rather than rely on PATH.
        (d / name).write_text(f"#!{sys.executable}\n{body}")
        (d / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    return Bin(d)


def config(tmp_path: Path, **plugins: dict[str, Any]) -> dict[str, object]:
    cfg = base_config(tmp_path)
    cfg["plugins"] = plugins
    return cfg


def granted(tmp_path: Path) -> dict[str, object]:
    cfg = config(tmp_path, **{pid: {"grant": grant} for pid, grant in GRANTS.items()})
    # Granted commands run locked down (they write only their own fresh directory): let the
    # stand-ins write their call logs next to themselves (the fakebin fixture's tmp_path/bin).
    # And narrow each grant as examples/cordon.toml does: every tool must pass its patterns.
    example = load_config(ROOT / "examples" / "cordon.toml")
    plugins: Any = cfg["plugins"]
    for pid, command in (("docker", "docker"), ("kubernetes", "kubectl")):
        rule = example.for_plugin(pid).exec_rules[command]
        assert rule.allow is not None
        plugins[pid]["exec"] = {
            command: {"write": [str(tmp_path / "bin")], "allow": list(rule.allow)}
            | ({"input": True} if rule.input else {})
        }
    return cfg


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(granted(tmp_path)) as runtime:
        yield runtime


# -- the example operator config --------------------------------------------------------


def test_the_example_config_grants_each_example_plugin_exactly_what_it_requests() -> None:
    cfg = load_config(ROOT / "examples" / "cordon.toml")
    seen = set()
    for plugin_dir in sorted(p for p in EXAMPLES.iterdir() if (p / "plugin.toml").exists()):
        m = load_manifest(plugin_dir)
        s = cfg.for_plugin(m.id)
        assert effective_permissions(m.permissions, s.grant, s.deny).missing == (), m.id
        assert set(s.grant) == set(m.permissions), f"{m.id}: grant only what it requests"
        assert s.sandbox == "strict"
        seen.add(m.id)
    assert set(GRANTS) <= seen
    for pid, grant in GRANTS.items():
        assert list(load_manifest(EXAMPLES / pid).permissions) == grant


# -- docker -----------------------------------------------------------------------------


async def test_docker_list_parses_the_json_lines_of_docker_ps(rt: Runtime, fakebin: Bin) -> None:
    h = await rt.load(EXAMPLES / "docker")
    with anyio.fail_after(30):
        running = await h.call("docker_list")
        everything = await h.call("docker_list", {"all": True})
    assert [c["names"] for c in running] == [["web"], ["db", "db-alias"]]
    web = running[0]
    assert web["id"] == "a1b2c3d4e5f6"
    assert web["image"] == "nginx:1.27"
    assert web["state"] == "running"
    assert web["labels"] == {"app": "web", "tier": "front"}
    assert web["ports"] == ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]
    assert [c["state"] for c in everything] == ["running", "running", "exited"]
    assert fakebin.argvs("docker") == [
        ["ps", "--no-trunc", "--format", "{{json .}}"],
        ["ps", "--no-trunc", "--format", "{{json .}}", "--all"],
    ]


async def test_docker_run_builds_an_argv_with_every_value_bound_to_its_option(
    rt: Runtime, fakebin: Bin
) -> None:
    h = await rt.load(EXAMPLES / "docker")
    args = {
        "image": "nginx:1.27",
        "name": "web",
        "ports": {"8080": "80", "127.0.0.1:8443": "443/tcp"},
        # A value may start with '-' or hold shell syntax: it is part of --env=, never a flag.
        "env": {"MODE": "--privileged", "GREETING": "$(id); rm -rf /"},
    }
    with anyio.fail_after(30):
        result = await h.call("docker_run", args)
        attached = await h.call("docker_run", {"image": "busybox", "detach": False})
    assert result == {"container": "4f3c2b1a" * 8, "image": "nginx:1.27", "name": "web"}
    assert attached["output"] == "hello from the container\n"
    assert fakebin.argvs("docker") == [
        [
            "run",
            "--detach",
            "--name=web",
            "--publish=8080:80",
            "--publish=127.0.0.1:8443:443/tcp",
            "--env=MODE=--privileged",
            "--env=GREETING=$(id); rm -rf /",
            "--",
            "nginx:1.27",
        ],
        ["run", "--", "busybox"],
    ]


async def test_docker_stop_and_build_pass_their_values_after_the_options(
    rt: Runtime, fakebin: Bin
) -> None:
    h = await rt.load(EXAMPLES / "docker")
    with anyio.fail_after(30):
        stopped = await h.call("docker_stop", {"container": "web"})
        built = await h.call(
            "docker_build",
            {"context": "app", "tag": "localhost:5000/me/app:1.0", "dockerfile": "app/Dockerfile"},
        )
    assert stopped == {"stopped": "web"}
    assert built["tag"] == "localhost:5000/me/app:1.0"
    assert "load build definition" in built["output"]
    calls = fakebin.calls("docker")
    assert [c["argv"] for c in calls] == [
        ["stop", "--", "web"],
        ["build", "--tag=localhost:5000/me/app:1.0", "--file=app/Dockerfile", "--", "app"],
    ]
    # The host runs each command in a fresh, empty directory of its own (never the plugin's
    # scratch dir, whose files a command must not read), removed afterwards.
    assert rt.state_dir is not None
    run_dir = Path(calls[1]["cwd"])
    assert run_dir.parent == rt.state_dir / "exec" and not run_dir.exists()


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("docker_run", {"image": "--privileged"}, "image"),
        ("docker_run", {"image": "-v=/:/host"}, "image"),
        ("docker_run", {"image": "alpine", "name": "--rm"}, "name"),
        ("docker_run", {"image": "alpine", "ports": {"--net=host": "80"}}, "ports"),
        ("docker_run", {"image": "alpine", "ports": {"80": "80 --privileged"}}, "ports"),
        ("docker_run", {"image": "alpine", "env": {"--cap-add=ALL": "1"}}, "env"),
        ("docker_stop", {"container": "--time=0"}, "container"),
        ("docker_build", {"context": "--secret=id=x,src=/etc/shadow"}, "context"),
        ("docker_build", {"context": ".", "tag": "-q"}, "tag"),
        ("docker_build", {"context": ".", "dockerfile": "-"}, "dockerfile"),
    ],
)
async def test_a_value_that_docker_would_read_as_an_option_is_refused_before_docker_runs(
    rt: Runtime, fakebin: Bin, tool: str, args: dict[str, Any], field: str
) -> None:
    h = await rt.load(EXAMPLES / "docker")
    with anyio.fail_after(30), pytest.raises(InvalidParams) as err:
        await h.call(tool, args)
    assert err.value.fields()["field"] == field
    assert fakebin.calls("docker") == []


async def test_docker_missing_on_the_host_is_a_clear_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    async with Runtime(granted(tmp_path)) as rt:
        h = await rt.load(EXAMPLES / "docker")
        with anyio.fail_after(30), pytest.raises(PluginError) as err:
            await h.call("docker_list")
    assert err.value.exc_type == "DockerNotFound"
    assert err.value.exc_message is not None
    assert err.value.exc_message.startswith("docker CLI not found on the host")


async def test_an_unreachable_docker_daemon_is_a_clear_typed_error(
    rt: Runtime, fakebin: Bin
) -> None:
    fakebin.set_mode("docker", "daemon-down")
    h = await rt.load(EXAMPLES / "docker")
    with anyio.fail_after(30), pytest.raises(PluginError) as err:
        await h.call("docker_list")
    assert err.value.exc_type == "DockerDaemonUnavailable"
    assert err.value.exc_message is not None
    assert "Docker daemon is not reachable" in err.value.exc_message
    assert "Is the docker daemon running?" in err.value.exc_message


async def test_another_docker_failure_carries_dockers_own_message(
    rt: Runtime, fakebin: Bin
) -> None:
    # A docker that fails the way it does for an unknown container.
    (fakebin.path / "docker").write_text(
        f"#!{sys.executable}\nimport sys\n"
        "sys.stderr.write('Error response from daemon: No such container: web\\n')\n"
        "sys.exit(1)\n"
    )
    h = await rt.load(EXAMPLES / "docker")
    with anyio.fail_after(30), pytest.raises(PluginError) as err:
        await h.call("docker_stop", {"container": "web"})
    assert err.value.exc_type == "DockerCommandFailed"
    assert err.value.exc_message == (
        "docker stop failed (exit 1): Error response from daemon: No such container: web"
    )


async def test_without_the_exec_grant_docker_is_never_run(tmp_path: Path, fakebin: Bin) -> None:
    async with Runtime(config(tmp_path, docker={"grant": ["log"]})) as rt:
        h = await rt.load(EXAMPLES / "docker")
        with anyio.fail_after(30), pytest.raises(PermissionDenied) as err:
            await h.call("docker_list")
        trail = await rt.audit("docker")
    assert err.value.fields()["permission"] == "exec:docker"
    assert fakebin.calls("docker") == []
    assert [(e.method, e.allowed) for e in trail if e.method == "host/exec"] == [
        ("host/exec", False)
    ]


# -- kubernetes -------------------------------------------------------------------------


async def test_k8s_list_pods_summarises_kubectls_json(rt: Runtime, fakebin: Bin) -> None:
    h = await rt.load(EXAMPLES / "kubernetes")
    with anyio.fail_after(30):
        pods = await h.call("k8s_list_pods", {"namespace": "shop", "selector": "app=web"})
        await h.call("k8s_list_pods", {"all_namespaces": True})
    assert pods == [
        {
            "name": "web-7d9f",
            "namespace": "shop",
            "phase": "Running",
            "ready": "2/2",
            "restarts": 0,
            "node": "node-1",
            "ip": "10.0.0.7",
            "created": "2026-11-24T10:00:00Z",
            "labels": {"app": "web"},
        },
        {
            "name": "worker-5c4b",
            "namespace": "shop",
            "phase": "Running",
            "ready": "1/2",
            "restarts": 3,
            "node": "node-1",
            "ip": "10.0.0.7",
            "created": "2026-11-24T10:00:00Z",
            "labels": {"app": "worker"},
        },
    ]
    assert fakebin.argvs("kubectl") == [
        ["get", "pods", "--output=json", "--namespace=shop", "--selector=app=web"],
        ["get", "pods", "--output=json", "--all-namespaces"],
    ]


async def test_k8s_describe_passes_kind_and_name_after_the_options(
    rt: Runtime, fakebin: Bin
) -> None:
    h = await rt.load(EXAMPLES / "kubernetes")
    with anyio.fail_after(30):
        d = await h.call(
            "k8s_describe", {"kind": "deployment.apps", "name": "web", "namespace": "shop"}
        )
    assert d["description"].splitlines() == [
        "Name:         web",
        "Namespace:    shop",
        "Kind:         deployment.apps",
    ]
    assert fakebin.argvs("kubectl") == [
        ["describe", "--namespace=shop", "--", "deployment.apps", "web"]
    ]


async def test_k8s_apply_hands_kubectl_the_manifest_through_its_stdin(
    rt: Runtime, fakebin: Bin
) -> None:
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n"
        'data:\n  motd: "héllo --privileged $(id)"\n'
    )
    h = await rt.load(EXAMPLES / "kubernetes")
    with anyio.fail_after(30):
        result = await h.call("k8s_apply", {"manifest": manifest, "namespace": "shop"})
        dry = await h.call("k8s_apply", {"manifest": manifest, "dry_run": True})
    assert rt.state_dir is not None
    scratch = rt.state_dir / "scratch" / "kubernetes"
    (call, dry_call) = fakebin.calls("kubectl")
    assert call["stdin"] and dry_call["stdin"], "kubectl read the manifest from its stdin"
    assert call["file"] == dry_call["file"] == manifest, "exactly the text the tool was given"
    assert call["argv"] == ["apply", "--filename=-", "--namespace=shop"]
    assert dry_call["argv"] == ["apply", "--filename=-", "--dry-run=server"]
    assert not call["cwd"].startswith(str(rt.state_dir / "scratch")), "a host-owned run dir"
    assert result == {"applied": [line.strip() for line in manifest.splitlines()], "dry_run": False}
    assert dry["dry_run"] is True
    assert not scratch.exists() or list(scratch.iterdir()) == [], "nothing left in scratch"


async def test_k8s_apply_is_refused_where_the_operator_did_not_allow_kubectl_input(
    tmp_path: Path, fakebin: Bin
) -> None:
    cfg = granted(tmp_path)
    plugins: Any = cfg["plugins"]
    del plugins["kubernetes"]["exec"]["kubectl"]["input"]
    async with Runtime(cfg) as rt:
        h = await rt.load(EXAMPLES / "kubernetes")
        with anyio.fail_after(30), pytest.raises(PermissionDenied) as err:
            await h.call("k8s_apply", {"manifest": "kind: ConfigMap\n"})
    assert "exec:kubectl" in str(err.value) and "input" in str(err.value)
    assert fakebin.calls("kubectl") == [], "kubectl never ran"


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("k8s_list_pods", {"namespace": "--kubeconfig=/etc/shadow"}, "namespace"),
        ("k8s_list_pods", {"selector": "--all-namespaces"}, "selector"),
        ("k8s_describe", {"kind": "--raw", "name": "x"}, "kind"),
        ("k8s_describe", {"kind": "pod", "name": "-o=json"}, "name"),
        ("k8s_apply", {"manifest": "  \n"}, "manifest"),
    ],
)
async def test_kubectl_options_cannot_be_smuggled_in_through_values(
    rt: Runtime, fakebin: Bin, tool: str, args: dict[str, Any], field: str
) -> None:
    h = await rt.load(EXAMPLES / "kubernetes")
    with anyio.fail_after(30), pytest.raises(InvalidParams) as err:
        await h.call(tool, args)
    assert err.value.fields()["field"] == field
    assert fakebin.calls("kubectl") == []


async def test_no_cluster_and_no_kubectl_are_clear_typed_errors(
    tmp_path: Path, fakebin: Bin, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakebin.set_mode("kubectl", "unreachable")
    async with Runtime(granted(tmp_path)) as rt:
        h = await rt.load(EXAMPLES / "kubernetes")
        with anyio.fail_after(30), pytest.raises(PluginError) as err:
            await h.call("k8s_list_pods")
        assert err.value.exc_type == "ClusterUnreachable"
        assert err.value.exc_message == (
            "no Kubernetes cluster reachable from the host: The connection to the server "
            "localhost:8080 was refused - did you specify the right host or port?"
        ), "client-go's log noise is left out"
        await rt.unload("kubernetes")
        monkeypatch.setenv("PATH", str(tmp_path))
        h = await rt.load(EXAMPLES / "kubernetes")
        with anyio.fail_after(30), pytest.raises(PluginError) as err:
            await h.call("k8s_describe", {"kind": "pod", "name": "web"})
        assert err.value.exc_type == "KubectlNotFound"
        assert err.value.exc_message is not None
        assert err.value.exc_message.startswith("kubectl not found on the host")


# -- notifier ---------------------------------------------------------------------------


async def test_the_notifier_is_started_by_a_build_event_and_stores_it(rt: Runtime) -> None:
    h = await rt.load(EXAMPLES / "notifier")
    assert h.state == "discovered"
    # Its manifest declares build.*: the event itself starts the plugin (no call first).
    assert await rt.emit("deploy.done", {"ignored": True}) == 0
    assert await rt.emit("build.done", {"ok": True, "sha": "abc123"}) == 1
    # Delivery is asynchronous (emit returns once queued) and the bus has no "handled"
    # signal to wait on, so ask the plugin until it has it, bounded by a deadline.
    with anyio.fail_after(10):
        while (event := await h.call("last_event")) is None:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert event == {
        "topic": "build.done",
        "payload": {"ok": True, "sha": "abc123"},
        "source": "app",
        "count": 1,
    }
    trail = await rt.audit("notifier")
    assert any(e.method == "host/log" and "notifier.event" in e.summary for e in trail)


# -- redactor ---------------------------------------------------------------------------


async def test_the_redactor_masks_secrets_in_request_arguments_and_nothing_else(
    rt: Runtime,
) -> None:
    h = await rt.load(EXAMPLES / "redactor")
    request = {
        "plugin": "docker",
        "name": "docker_run",
        "kind": "tool",
        "arguments": {
            "image": "nginx",
            "env": {"DB_PASSWORD": "hunter2", "API-Key": "k-123", "MODE": "prod"},
            "headers": ["Authorization-ish: Bearer abcdefghijklmnop", "Accept: */*"],
            "url": "postgres://admin:s3cret@db:5432/app",
            "note": "key AKIAIOSFODNN7EXAMPLE and token ghp_" + "a" * 36,
            "count": 3,
            "password": None,
        },
    }
    with anyio.fail_after(30):
        out = await h.call("redact_request", {"request": request}, kind="middleware")
    assert out == {
        "plugin": "docker",
        "name": "docker_run",
        "kind": "tool",
        "arguments": {
            "image": "nginx",
            "env": {"DB_PASSWORD": "[REDACTED]", "API-Key": "[REDACTED]", "MODE": "prod"},
            "headers": ["Authorization-ish: Bearer [REDACTED]", "Accept: */*"],
            "url": "postgres://admin:[REDACTED]@db:5432/app",
            "note": "key [REDACTED] and token [REDACTED]",
            "count": 3,
            "password": None,
        },
    }


async def test_the_redactor_masks_secrets_in_a_response_with_the_operators_settings(
    tmp_path: Path,
) -> None:
    cfg = config(
        tmp_path, redactor={"grant": ["config"], "settings": {"marker": "***", "keys": ["pin"]}}
    )
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
    async with Runtime(cfg) as rt:
        h = await rt.load(EXAMPLES / "redactor")
        with anyio.fail_after(30):
            out = await h.call(
                "redact_response",
                {
                    "request": {"plugin": "vault", "name": "read", "arguments": {}},
                    "response": {"result": {"card": {"PIN": "1234", "last4": "9876"}, "key": pem}},
                },
                kind="middleware",
            )
    assert out == {"result": {"card": {"PIN": "***", "last4": "9876"}, "key": "***"}}


async def test_without_the_config_grant_the_redactor_uses_its_defaults(tmp_path: Path) -> None:
    cfg = config(tmp_path, redactor={"settings": {"marker": "***"}})
    async with Runtime(cfg) as rt:
        h = await rt.load(EXAMPLES / "redactor")
        with anyio.fail_after(30):
            out = await h.call(
                "redact_request",
                {"request": {"plugin": "p", "name": "t", "arguments": {"token": "t0k"}}},
                kind="middleware",
            )
    assert out["arguments"] == {"token": "[REDACTED]"}


@pytest.mark.skipif(
    not hasattr(Runtime, "invoke"), reason="the runtime has no middleware chain yet"
)
async def test_through_the_middleware_chain_a_plugin_never_sees_the_secret_nor_returns_it(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, redactor={"grant": ["config"], "settings": {"keys": ["cwd"]}})
    async with Runtime(cfg) as rt:
        await rt.load(EXAMPLES / "redactor")
        await rt.load(EXAMPLES / "hello")
        with anyio.fail_after(30):
            echoed = await rt.invoke(
                "hello.echo",
                {"value": {"user": "ada", "password": "hunter2", "dsn": "https://ada:pw@x.org/"}},
            )
            # whoami takes no arguments: its cwd (a "secret" by the operator's setting) can
            # only have been masked on the way out.
            me = await rt.invoke("hello.whoami")
    assert echoed == {
        "user": "ada",
        "password": "[REDACTED]",
        "dsn": "https://ada:[REDACTED]@x.org/",
    }
    assert me["plugin"] == "hello"
    assert me["cwd"] == "[REDACTED]"


def test_the_stand_ins_are_executable() -> None:
    for name in ("docker", "kubectl"):
        assert os.access(FAKEBIN / name, os.X_OK), name
        assert shutil.which(name, path=str(FAKEBIN)) is not None
