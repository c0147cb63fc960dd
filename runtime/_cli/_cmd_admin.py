"""The operator's checks: ``cordon config check|show`` (is the TOML right, what does it
amount to), ``cordon doctor`` (which sandbox layers this machine applies, and what that means
for each configured plugin) and ``cordon audit`` (a plugin's trail of host-API calls, read
from the state dir). None of them needs a running host or starts a worker.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import anyio
import msgspec

from cordon.protocol import CordonError

from .._errors import ConfigError
from ._cmd_common import exit_code_for, print_json, shown
from ._exitcodes import EXIT_OK

__all__ = ["cmd_audit", "cmd_config_check", "cmd_config_show", "cmd_doctor"]


def cmd_config_check(args: argparse.Namespace) -> int:
    from .._errors import ConfigError
    from .._settings._config import load_config

    if not args.json:
        cfg = load_config(args.file)
        print(f"{args.file}: ok ({len(cfg.plugins)} plugin section(s))")
        for where, summary in _exec_notes(cfg):
            print(f"  note: {where}: {shown(summary)}")
        return EXIT_OK
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        # For tools (an editor, CI): every problem with its TOML path, still a failing exit.
        print_json({"file": args.file, "ok": False, "problems": list(exc.problems)})
        return exit_code_for(exc)
    notes = [{"path": where, "note": summary} for where, summary in _exec_notes(cfg)]
    print_json(
        {
            "file": args.file,
            "ok": True,
            "plugins": sorted(cfg.plugins),
            "problems": [],
            "notes": notes,
        }
    )
    return EXIT_OK


def _exec_notes(cfg: Any) -> list[tuple[str, str]]:
    """Every exec and http grant and every secret, in plain words, under the TOML path
    that grants it."""
    import os

    from .._settings._exec_rules import exec_grants
    from .._settings._http_keys import http_notes

    sections = [("defaults", cfg.defaults)]
    sections += [(f"plugins.{pid}", s) for pid, s in cfg.plugins.items()]
    return [
        (f"{where}.grant", str(g["summary"]))
        for where, s in sections
        for g in exec_grants(s.grant, s.exec_rules)
    ] + http_notes(sections, os.environ)


def cmd_config_show(args: argparse.Namespace) -> int:
    from .._settings._config import find_config

    cfg = find_config(args.config)
    print_json(cfg.to_toml_dict())
    return EXIT_OK


def _predicted_missing(report: dict[str, Any]) -> list[str]:
    """Layers a worker could not apply on this machine, from the probe."""
    missing = []
    landlock = report.get("landlock") or {}
    abi = int(landlock.get("abi") or 0) if landlock.get("available") else 0
    if abi < 1:
        missing.append("landlock-fs")
    if abi < 4:
        missing.append("landlock-net")
    if abi < 6:
        missing.append("landlock-scope")
    if not (report.get("seccomp") or {}).get("available"):
        missing.append("seccomp")
    if not report.get("user_namespaces"):
        missing.append("userns")
    if not report.get("net_namespaces"):
        missing.append("netns")
    if not report.get("ipc_namespaces"):
        missing.append("ipcns")
    return missing


def _cgroup_verdict(setting: str) -> dict[str, Any]:
    """Whether a runtime here would put each worker in memory + pids cgroups: found the way
    the runtime finds it (making, then removing, a real group)."""
    from .._supervise._cgroup import CgroupSupport

    if setting == "off":
        return {"available": False, "version": None, "verdict": "off (runtime.cgroups)"}
    found = CgroupSupport.detect()
    found.close()
    if found.available:
        verdict = f"applied per worker ({found.version}: memory, pids)"
    else:
        verdict = f"unavailable: {found.why} (the other layers carry on)"
    return {
        "available": found.available,
        "version": found.version if found.available else None,
        "verdict": verdict,
    }


def _launcher_verdict(setting: str | None) -> dict[str, Any]:
    """Which launcher a runtime here would start workers with, and why (what the kernel
    allows: the zygote needs Linux x86_64, glibc and pidfds; spawn needs pidfds)."""
    from .._supervise._launcher import choose_launcher, zygote_unsupported

    name, why = choose_launcher(setting)
    missing = zygote_unsupported()
    allows = "zygote and spawn" if missing is None else f"spawn only ({missing})"
    return {
        "name": name,
        "why": why,
        "zygote_unsupported": missing,
        "verdict": f"{name}, per {why}; this machine allows {allows}",
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    from cordon.worker._sandbox import LAYERS, probe

    from .._platform._discovery import discover
    from .._settings._config import find_config
    from .._settings._exec_rules import exec_grants
    from .._settings._manifest import load_manifest
    from .._settings._permissions import effective_permissions

    report: dict[str, Any] = dict(probe())
    missing = _predicted_missing(report)
    cfg = find_config(args.config)
    plugins: dict[str, str] = {}
    exec_report: dict[str, list[dict[str, object]]] = {}
    for cand in discover([Path(d) for d in cfg.runtime.plugin_dirs]).candidates:
        try:
            manifest = load_manifest(cand.path)
        except CordonError:
            continue
        plugin_id = manifest.id
        s = cfg.for_plugin(plugin_id)
        perms = effective_permissions(manifest.permissions, s.grant, s.deny)
        usable = [p for p in perms.requested if p.startswith("exec:") and perms.allows(p)]
        if usable:
            exec_report[plugin_id] = exec_grants(usable, s.exec_rules)
        mode = s.sandbox
        if mode == "off":
            verdict = "off: NO SANDBOX — for trusted plugins only"
        elif not missing:
            verdict = f"{mode}: every layer applied"
        elif mode == "strict":
            verdict = f"strict: REFUSED to start (missing {', '.join(missing)})"
        else:
            verdict = f"best-effort: starts WITHOUT {', '.join(missing)}"
        plugins[plugin_id] = verdict
    report["missing_layers"] = missing
    report["plugins"] = plugins
    report["cgroup_limits"] = _cgroup_verdict(cfg.runtime.cgroups)
    report["launcher"] = _launcher_verdict(cfg.runtime.launcher)
    report["exec_lockdown"] = _exec_lockdown_verdict()
    report["exec_grants"] = exec_report
    if args.json:
        print_json(report)
        return EXIT_OK
    for key in (
        "kernel",
        "arch",
        "python",
        "root",
        "landlock",
        "seccomp",
        "user_namespaces",
        "net_namespaces",
        "ipc_namespaces",
    ):
        print(f"{key:18} {report.get(key)}")
    print(f"{'layers':18} {', '.join(LAYERS)}")
    cg = report["cgroup_limits"]
    print(f"{'cgroups':18} {cg['verdict']}")
    print(f"{'launcher':18} {report['launcher']['verdict']}")
    print(f"{'missing layers':18} {', '.join(missing) or 'none'}")
    print(f"{'exec lockdown':18} {report['exec_lockdown']}")
    for plugin_id, verdict in sorted(plugins.items()):
        print(f"  plugin {plugin_id:12} {verdict}")
        for grant in exec_report.get(plugin_id, []):
            print(f"    {shown(grant['summary'])}")
    return EXIT_OK


def _exec_lockdown_verdict() -> str:
    from .._hostapi._exec_landlock import LandlockUnavailable, abi_version

    try:
        abi = abi_version()
    except LandlockUnavailable as exc:
        return (
            f"unavailable ({exc.strerror}): strict plugins' exec grants are refused; others "
            "run commands with a fresh HOME but no lock-down"
        )
    return (
        f"Landlock ABI {abi}: granted commands run with a fresh HOME/cwd, an allowlisted "
        "environment, no access to plugin files or the state dir"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from .._hostapi._audit import AuditTrail, iso8601
    from .._settings._config import find_config

    cfg = find_config(args.config)
    path = Path(cfg.runtime.state_dir) / "audit.db"
    if not path.exists():
        raise ConfigError(
            f"no audit trail at {path} (has a host run with this config?)",
            source=str(path),
            problems=[],
        )

    async def read() -> list[Any]:
        trail = await AuditTrail.open(path)
        try:
            return list(await trail.read(args.plugin_id, args.limit))
        finally:
            await trail.close()

    entries = anyio.run(read)
    if args.json:
        # Tools keep the numbers (epoch seconds, as the `audit` control method returns them)
        # and get the readable form next to them, so neither has to convert.
        print_json(
            [
                {
                    **msgspec.to_builtins(e),
                    "time": iso8601(e.ts),
                    "last_time": iso8601(e.last_ts or e.ts),
                }
                for e in entries
            ]
        )
    else:
        for e in entries:
            verdict = "allowed" if e.allowed else "DENIED "
            print(
                f"{iso8601(e.ts)} {verdict} {shown(e.method):20} x{e.count:<4} "
                f"{shown(e.summary)} {shown(e.outcome)}"
            )
    return EXIT_OK
