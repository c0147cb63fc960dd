"""Kubernetes tools for cordon (the chapter's Exercise 1), sandboxed.

Like the Docker plugin, every ``kubectl`` command runs on the host through
``await ctx.exec([...])`` (grant ``exec:kubectl``): an argv list, no shell, values checked and
passed as ``--option=value`` or after ``--`` so none can be read as a flag.

Applying a manifest: the manifest goes to kubectl's stdin (``ctx.exec(..., input=manifest)``)
and the host runs ``kubectl apply --filename=-``. Not a file in the scratch directory: a
granted command runs in a fresh host-owned directory under a lock-down that cannot read any
plugin-written file (so a planted ``.kube/config`` cannot run code on the host), which keeps
the manifest out of its reach too. Feeding stdin needs the operator's
``[plugins.<id>.exec.kubectl] input = true``, which cordon accepts only next to ``allow``
patterns: stdin is only ever read where a pattern spells ``--filename=-``.

Errors (a ``PluginError`` on the host whose ``exc_type`` names the class): ``KubectlNotFound``,
``ClusterUnreachable``, ``KubectlCommandFailed``; ``InvalidParams`` (with ``field``) for a
bad value; ``PermissionDenied`` without the grant.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from cordon.worker import CommandNotFound, Context, ExecResult, InvalidParams, Plugin

plugin = Plugin()

TIMEOUT: Final = 30.0
MAX_MANIFEST: Final = 1024 * 1024

# RFC 1123 names (what Kubernetes allows for namespaces and most object names).
_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
# A resource kind as kubectl takes it: pod, pods, deployment.apps, Deployment, svc ...
_KIND: Final = re.compile(r"^[A-Za-z][A-Za-z0-9.\-]{0,252}$")
# A label selector: key[=!]value pairs, comma separated, set-based forms too; never a flag.
_SELECTOR: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-=!,() ]{0,1023}$")
_UNREACHABLE: Final = (
    "Unable to connect to the server",
    "The connection to the server",
    "no configuration has been provided",
    "connect: connection refused",
    "dial tcp",
)
# client-go's own log lines ("E1124 18:16:16.089824   28203 memcache.go:265] ..."), which
# kubectl prints by the dozen before the one line that says what went wrong.
_KLOG: Final = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")


class KubectlNotFound(RuntimeError):
    """The host has no ``kubectl`` command."""


class ClusterUnreachable(RuntimeError):
    """kubectl cannot reach (or is not configured for) a cluster."""


class KubectlCommandFailed(RuntimeError):
    """kubectl ran and exited non-zero for another reason."""


def _check(value: str, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidParams(f"{field} {value[:200]!r} is not {what}", field=field)
    return value


def _namespace_args(namespace: str | None) -> list[str]:
    if namespace is None:
        return []
    return [f"--namespace={_check(namespace, _NAME, 'namespace', 'a namespace name')}"]


async def _kubectl(ctx: Context, args: list[str], stdin: str | None = None) -> ExecResult:
    try:
        result: ExecResult = await ctx.exec(["kubectl", *args], input=stdin, timeout=TIMEOUT)
    except CommandNotFound:
        raise KubectlNotFound(
            "kubectl not found on the host (install it, or put `kubectl` on the host's PATH)"
        ) from None
    if result.returncode != 0:
        err = _errors(result.stderr)
        if any(marker in err for marker in _UNREACHABLE):
            raise ClusterUnreachable(f"no Kubernetes cluster reachable from the host: {err[:500]}")
        raise KubectlCommandFailed(
            f"kubectl {args[0]} failed (exit {result.returncode}): {err[:1000] or '(no output)'}"
        )
    return result


def _errors(stderr: str) -> str:
    """kubectl's error message without client-go's log noise."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    kept = [line for line in lines if not _KLOG.match(line)]
    return "\n".join(kept or lines[-1:])


def _pod_summary(item: dict[str, Any]) -> dict[str, Any]:
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": status.get("phase"),
        "ready": f"{ready}/{len(spec.get('containers') or statuses)}",
        "restarts": sum(int(s.get("restartCount", 0)) for s in statuses),
        "node": spec.get("nodeName"),
        "ip": status.get("podIP"),
        "created": meta.get("creationTimestamp"),
        "labels": meta.get("labels") or {},
    }


@plugin.tool
async def k8s_list_pods(
    ctx: Context,
    namespace: str | None = None,
    all_namespaces: bool = False,
    selector: str | None = None,
) -> list[dict[str, Any]]:
    """List pods in ``namespace`` (kubectl's current one if unset), or in every namespace."""
    args = ["get", "pods", "--output=json"]
    if all_namespaces:
        if namespace is not None:
            raise InvalidParams("give namespace or all_namespaces, not both", field="namespace")
        args.append("--all-namespaces")
    args += _namespace_args(namespace)
    if selector is not None:
        args.append(f"--selector={_check(selector, _SELECTOR, 'selector', 'a label selector')}")
    result = await _kubectl(ctx, args)
    try:
        doc = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise KubectlCommandFailed(f"kubectl get pods did not print JSON: {exc}") from None
    pods = [_pod_summary(item) for item in doc.get("items", []) if isinstance(item, dict)]
    await ctx.log.info("k8s.list_pods", namespace=namespace, count=len(pods))
    return pods


@plugin.tool
async def k8s_describe(
    ctx: Context, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any]:
    """``kubectl describe <kind> <name>``: the human-readable description."""
    _check(kind, _KIND, "kind", "a resource kind")
    _check(name, _NAME, "name", "a resource name")
    args = ["describe", *_namespace_args(namespace), "--", kind, name]
    result = await _kubectl(ctx, args)
    await ctx.log.info("k8s.describe", kind=kind, name=name, namespace=namespace)
    return {"kind": kind, "name": name, "namespace": namespace, "description": result.stdout}


@plugin.tool
async def k8s_apply(
    ctx: Context, manifest: str, namespace: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Apply ``manifest`` (YAML or JSON text); ``dry_run`` asks the server to only validate."""
    if not manifest.strip():
        raise InvalidParams("manifest is empty", field="manifest")
    if len(manifest.encode("utf-8")) > MAX_MANIFEST:
        raise InvalidParams(f"manifest is over {MAX_MANIFEST} bytes", field="manifest")
    # "-": kubectl reads the manifest from stdin, which the host feeds from input=.
    args = ["apply", "--filename=-", *_namespace_args(namespace)]
    if dry_run:
        args.append("--dry-run=server")
    result = await _kubectl(ctx, args, stdin=manifest)
    applied = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    await ctx.log.info("k8s.apply", namespace=namespace, dry_run=dry_run, applied=applied)
    return {"applied": applied, "dry_run": dry_run}
