"""Docker tools for cordon: the chapter's Docker plugin (section 13.6), sandboxed.

The worker has no network and cannot exec, so every ``docker`` command is run by the host
through ``await ctx.exec([...])``, which the operator allows with the ``exec:docker`` grant.
That call takes an argv list, never a shell string, so nothing here is ever parsed by a
shell. What remains is *option injection*: a value such as ``--privileged`` or
``-v=/:/host`` that docker would read as a flag. Every value is therefore checked against
what it is meant to be (an image reference, a container name, a port, an environment
variable name) and passed as ``--option=value`` or after a ``--`` separator, so docker
never takes a value for a flag.

Errors are exceptions with clear messages; the host receives them as a ``PluginError``
whose ``exc_type`` names the class:

* ``DockerNotFound`` — the host has no ``docker`` on its PATH;
* ``DockerDaemonUnavailable`` — the CLI is there but cannot reach the daemon;
* ``DockerCommandFailed`` — docker ran and failed (its stderr is in the message);
* ``InvalidParams`` (cordon's own, with ``field``) — a value that is not what it must be;
* ``PermissionDenied`` — the operator did not grant ``exec:docker``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from cordon.worker import CommandNotFound, Context, ExecResult, InvalidParams, Plugin

plugin = Plugin()

DAEMON_DOWN: Final = "Cannot connect to the Docker daemon"

#: Seconds the host lets each kind of docker command run (the host caps exec at 60 s).
QUICK: Final = 10.0
SLOW: Final = 55.0

# An image reference: [registry[:port]/]path[:tag][@digest]. Never starts with '-'.
_IMAGE: Final = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9.\-]{0,252}(?::\d{1,5})?/)?"
    r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,254}"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
# Docker's own rule for container names; container ids are hex, which this also accepts.
_CONTAINER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_HOST_PORT: Final = re.compile(r"^((\d{1,3}\.){3}\d{1,3}:)?\d{1,5}$")
_CONTAINER_PORT: Final = re.compile(r"^\d{1,5}(/(tcp|udp|sctp))?$")
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")


class DockerNotFound(RuntimeError):
    """The host has no ``docker`` command."""


class DockerDaemonUnavailable(RuntimeError):
    """The docker CLI cannot reach the Docker daemon."""


class DockerCommandFailed(RuntimeError):
    """docker ran and exited non-zero for another reason."""


def _check(value: str, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidParams(f"{field} {value[:200]!r} is not {what}", field=field)
    return value


def _check_path(value: str, field: str) -> str:
    if not value or value.startswith("-") or "\x00" in value:
        raise InvalidParams(
            f"{field} {value[:200]!r} must be a non-empty path not starting with '-'",
            field=field,
        )
    return value


async def _docker(ctx: Context, args: list[str], *, timeout: float = QUICK) -> ExecResult:
    """Run ``docker <args>`` on the host; the typed errors above instead of raw failures."""
    try:
        result: ExecResult = await ctx.exec(["docker", *args], timeout=timeout)
    except CommandNotFound:
        raise DockerNotFound(
            "docker CLI not found on the host (install Docker, or put `docker` on the host's PATH)"
        ) from None
    if result.returncode != 0:
        err = result.stderr.strip()
        if DAEMON_DOWN in err:
            raise DockerDaemonUnavailable(
                f"the Docker daemon is not reachable from the host: {err[:500]}"
            )
        raise DockerCommandFailed(
            f"docker {args[0]} failed (exit {result.returncode}): {err[:1000] or '(no output)'}"
        )
    return result


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if item:
            key, _, value = item.partition("=")
            out[key] = value
    return out


def parse_ps(stdout: str) -> list[dict[str, Any]]:
    """``docker ps --format '{{json .}}'`` prints one JSON object per line."""
    containers: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            raise DockerCommandFailed(
                f"docker ps printed a line that is not JSON: {line[:200]!r}"
            ) from None
        if not isinstance(raw, dict):
            raise DockerCommandFailed(f"docker ps printed a non-object: {line[:200]!r}")
        containers.append(
            {
                "id": str(raw.get("ID", "")),
                "image": str(raw.get("Image", "")),
                "names": [n for n in str(raw.get("Names", "")).split(",") if n],
                "command": str(raw.get("Command", "")).strip('"'),
                "created_at": str(raw.get("CreatedAt", "")),
                "state": str(raw.get("State", "")),
                "status": str(raw.get("Status", "")),
                "ports": [p.strip() for p in str(raw.get("Ports", "")).split(",") if p.strip()],
                "labels": _labels(str(raw.get("Labels", ""))),
            }
        )
    return containers


@plugin.tool
async def docker_list(ctx: Context, all: bool = False) -> list[dict[str, Any]]:
    """List containers: running ones, or every one with ``all=true``."""
    args = ["ps", "--no-trunc", "--format", "{{json .}}"]
    if all:
        args.append("--all")
    result = await _docker(ctx, args)
    containers = parse_ps(result.stdout)
    await ctx.log.info("docker.list", all=all, count=len(containers))
    return containers


def run_argv(
    image: str,
    name: str | None = None,
    ports: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    detach: bool = True,
) -> list[str]:
    """The ``docker run`` arguments (after ``docker``) for these checked parameters.

    ``ports`` maps a host port (optionally ``ip:port``) to a container port (optionally
    ``port/proto``): ``{"8080": "80"}`` is ``-p 8080:80``.
    """
    _check(image, _IMAGE, "image", "an image reference")
    args = ["run"]
    if detach:
        args.append("--detach")
    if name is not None:
        args.append(f"--name={_check(name, _CONTAINER, 'name', 'a container name')}")
    for host, container in (ports or {}).items():
        _check(host, _HOST_PORT, "ports", "a host port ([ip:]port)")
        _check(container, _CONTAINER_PORT, "ports", "a container port (port[/proto])")
        args.append(f"--publish={host}:{container}")
    for key, value in (env or {}).items():
        _check(key, _ENV_NAME, "env", "an environment variable name")
        if "\x00" in value:
            raise InvalidParams(f"env {key} contains NUL", field="env")
        args.append(f"--env={key}={value}")
    # The image is the first non-option; "--" makes sure docker never reads it as one.
    args += ["--", image]
    return args


@plugin.tool
async def docker_run(
    ctx: Context,
    image: str,
    name: str | None = None,
    ports: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    detach: bool = True,
) -> dict[str, Any]:
    """Run a container from ``image``; detached by default (returns the container id)."""
    args = run_argv(image, name, ports, env, detach)
    await ctx.log.info("docker.run", image=image, name=name, detach=detach)
    result = await _docker(ctx, args, timeout=SLOW)
    if detach:
        return {"container": result.stdout.strip(), "image": image, "name": name}
    return {"image": image, "name": name, "output": result.stdout, "truncated": result.truncated}


@plugin.tool
async def docker_stop(ctx: Context, container: str) -> dict[str, Any]:
    """Stop a container by name or id."""
    _check(container, _CONTAINER, "container", "a container name or id")
    await ctx.log.info("docker.stop", container=container)
    result = await _docker(ctx, ["stop", "--", container], timeout=SLOW)
    return {"stopped": result.stdout.strip() or container}


def build_argv(context: str, tag: str | None = None, dockerfile: str | None = None) -> list[str]:
    """The ``docker build`` arguments (after ``docker``) for these checked parameters.

    Relative paths are relative to the fresh, empty directory the host runs each command in
    (never the plugin's scratch directory, which a granted command cannot read): give the
    build an absolute context the operator's grant allows.
    """
    _check_path(context, "context")
    args = ["build"]
    if tag is not None:
        args.append(f"--tag={_check(tag, _IMAGE, 'tag', 'an image reference')}")
    if dockerfile is not None:
        args.append(f"--file={_check_path(dockerfile, 'dockerfile')}")
    args += ["--", context]
    return args


@plugin.tool
async def docker_build(
    ctx: Context, context: str, tag: str | None = None, dockerfile: str | None = None
) -> dict[str, Any]:
    """Build an image from ``context`` (a directory or URL), optionally tagged."""
    args = build_argv(context, tag, dockerfile)
    await ctx.log.info("docker.build", context=context, tag=tag)
    result = await _docker(ctx, args, timeout=SLOW)
    # Modern docker (BuildKit) writes its progress to stderr; classic builds to stdout.
    return {
        "tag": tag,
        "output": result.stdout or result.stderr,
        "truncated": result.truncated,
    }
