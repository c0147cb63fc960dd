"""The ``cordon`` command line.

Errors print one line on stderr (``cordon: <ErrorType>: message``) and exit with the code of
their class, so scripts can tell a plugin's failure from a timeout from a bad config. The codes
live in one table, :data:`cordon.runtime._cli._exitcodes.TABLE`, which also writes
``cordon --help``'s list and the README's.

Commands that talk to a running host (``plugin enable|disable|reload``, ``logs``, and
``stats``, ``plugin list``, ``plugin info`` when one is reachable) connect to
``--socket PATH``, else to ``<state-dir>/cordon.sock`` of the config's state-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec

from cordon.protocol import (
    CordonError,
    InvalidParams,
    PluginUnavailable,
)

from .._errors import ConfigError
from .._hostapi._redact import Redactor
from ._clilog import add_log_options, configure_from_args, count_arg, print_record
from ._control import ControlSocketError, HostNotRunning
from ._exitcodes import EXIT_INTERNAL, EXIT_OK, TABLE, help_text
from ._oplog import LoggingSetup

__all__ = ["EXIT_CODES", "exit_code_for", "main"]

#: Most specific first: the first matching class decides the exit code.
EXIT_CODES: Final[tuple[tuple[type[BaseException], int], ...]] = tuple(
    (cls, row.code) for row in TABLE for cls in row.errors
)


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


_json = msgspec.json.Encoder()


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def _shown(text: object) -> str:
    """Text for the terminal that may carry a plugin's words (an error it raised, its
    manifest's description, an audit summary): redacted and neutralised, one line, whatever
    the host cleaned before - this is the last step before an operator's terminal."""
    return _REDACTOR.clean_message(str(text))


_REDACTOR: Final = Redactor()


def _fail(exc: BaseException) -> int:
    if isinstance(exc, CordonError):
        first, *rest = str(exc.message).splitlines() or [""]
        print(f"cordon: {type(exc).__name__}: {_shown(first)}", file=sys.stderr)
        for line in rest:
            print(f"  {_shown(line)}", file=sys.stderr)
    else:
        print(f"cordon: internal error: {type(exc).__name__}: {_shown(exc)}", file=sys.stderr)
    return exit_code_for(exc)


# -- commands ---------------------------------------------------------------------------------


def _cmd_call(args: argparse.Namespace) -> int:
    from .._core._runtime import Runtime
    from ._control import load_config_with_overrides

    try:
        params = msgspec.json.decode(args.params) if args.params else {}
    except msgspec.DecodeError as exc:
        raise InvalidParams(f"--params is not valid JSON: {exc}", field="--params") from None
    if not isinstance(params, dict | list):
        raise InvalidParams("--params must be a JSON object or array", field="--params")

    async def run() -> Any:
        async with Runtime(load_config_with_overrides(args.config)) as rt:
            handle = await rt.load(args.plugin_dir)
            return await handle.call(args.tool, params, kind=args.kind, timeout=args.timeout)

    _print_json(anyio.run(run))
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .._errors import ConfigError
    from .._settings._config import load_config

    if not args.json:
        cfg = load_config(args.file)
        print(f"{args.file}: ok ({len(cfg.plugins)} plugin section(s))")
        for where, summary in _exec_notes(cfg):
            print(f"  note: {where}: {_shown(summary)}")
        return EXIT_OK
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        # For tools (an editor, CI): every problem with its TOML path, still a failing exit.
        _print_json({"file": args.file, "ok": False, "problems": list(exc.problems)})
        return exit_code_for(exc)
    notes = [{"path": where, "note": summary} for where, summary in _exec_notes(cfg)]
    _print_json(
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
    """Every exec grant, in plain words, under the TOML path that grants it."""
    from .._settings._exec_rules import exec_grants

    sections = [("defaults", cfg.defaults)]
    sections += [(f"plugins.{pid}", s) for pid, s in cfg.plugins.items()]
    return [
        (f"{where}.grant", str(g["summary"]))
        for where, s in sections
        for g in exec_grants(s.grant, s.exec_rules)
    ]


def _cmd_config_show(args: argparse.Namespace) -> int:
    from .._settings._config import find_config

    cfg = find_config(args.config)
    _print_json(cfg.to_toml_dict())
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from ._serve import serve

    return anyio.run(
        functools.partial(
            serve,
            args.config,
            args.watch,
            socket_path=_explicit_socket(args),
            use_socket=not args.no_socket,
            use_stdin=not args.no_stdin,
            entry_points=False if args.no_entry_points else None,
        )
    )


# -- talking to a running host ----------------------------------------------------------------


def _explicit_socket(args: argparse.Namespace) -> Path | None:
    return Path(args.socket).expanduser().absolute() if args.socket else None


def _socket_for(args: argparse.Namespace) -> Path:
    from .._settings._config import find_config
    from ._control import default_socket_path

    return _explicit_socket(args) or default_socket_path(find_config(args.config))


def _ask_host(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None) -> Any:
    """The running host's answer; :class:`HostNotRunning` when none is reachable."""
    from ._control import request

    return request(_socket_for(args), method, params)


def _live(args: argparse.Namespace, method: str) -> Any | None:
    """The running host's answer, or ``None`` when no host is reachable (the caller falls
    back to reading files)."""
    try:
        return _ask_host(args, method)
    except HostNotRunning:
        return None
    except ControlSocketError as exc:
        if exc.reason == "path-too-long":
            return None  # no host can listen on an address that cannot exist
        raise


def _print_kv(row: dict[str, Any]) -> None:
    for key, value in row.items():
        print(f"{key:12} {_shown(value)}")


def _cmd_plugin_toggle(args: argparse.Namespace) -> int:
    from ._control import load_config_with_overrides, overrides_path, write_override

    enable = args.plugin_command == "enable"
    try:
        state = _ask_host(args, args.plugin_command, {"plugin": args.plugin_id})
        live = True
    except (HostNotRunning, PluginUnavailable) as exc:
        if isinstance(exc, PluginUnavailable) and exc.reason != "not-loaded":
            raise
        # No host (or it could not load the plugin): persist the choice for the next start.
        if not any(r.get("id") == args.plugin_id for r in _plugin_rows(args.config)):
            raise PluginUnavailable(
                f"no plugin {args.plugin_id!r} under the configured plugin dirs",
                plugin=args.plugin_id,
                reason="not-found",
            ) from None
        write_override(
            overrides_path(load_config_with_overrides(args.config)), args.plugin_id, enable
        )
        state, live = ("enabled" if enable else "disabled"), False
    result = {"plugin": args.plugin_id, "state": state, "live": live}
    if args.json:
        _print_json(result)
    elif live:
        print(f"{args.plugin_id}: {state} (running host; persisted for restarts)")
    else:
        print(f"{args.plugin_id}: {state} (no running host; applies when one starts)")
    return EXIT_OK


def _cmd_plugin_reload(args: argparse.Namespace) -> int:
    state = _ask_host(args, "reload", {"plugin": args.plugin_id})
    version = next(
        (p["version"] for p in _ask_host(args, "plugins") if p["id"] == args.plugin_id), None
    )
    result = {"plugin": args.plugin_id, "state": state, "version": version}
    if args.json:
        _print_json(result)
    else:
        print(f"{args.plugin_id}: {state} (version {version})")
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    stats = _live(args, "stats")
    if stats is None:
        stats = _stats_snapshot(args)
    if args.json:
        _print_json(stats)
    else:
        for pid, s in stats.items():
            applied = sum(1 for v in s["sandbox"].values() if v == "applied")
            print(
                f"{pid:16} state={s['state']:8} pid={s['pid']} rss={s['rss_bytes']} "
                f"calls={s['calls']} restarts={s['restarts']} "
                f"sandbox={applied}/{len(s['sandbox'])} layers"
            )
    return EXIT_OK


def _stats_snapshot(args: argparse.Namespace) -> dict[str, Any]:
    """No host is running: start the configured plugins here, just for a snapshot."""
    from .._core._runtime import Runtime
    from ._control import load_config_with_overrides
    from ._serve import _load_configured

    async def snapshot() -> dict[str, Any]:
        async with Runtime(load_config_with_overrides(args.config)) as rt:
            await _load_configured(rt)
            for handle in rt.plugins.values():
                # Start each worker so the snapshot shows its pid, memory and sandbox.
                try:
                    await handle.start()
                except CordonError as exc:
                    print(
                        f"cordon: {handle.id}: {type(exc).__name__}: {_shown(exc.message)}",
                        file=sys.stderr,
                    )
            return {k: msgspec.to_builtins(v) for k, v in rt.stats().items()}

    result: dict[str, Any] = anyio.run(snapshot)
    return result


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


def _cmd_doctor(args: argparse.Namespace) -> int:
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
    report["exec_lockdown"] = _exec_lockdown_verdict()
    report["exec_grants"] = exec_report
    if args.json:
        _print_json(report)
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
    print(f"{'missing layers':18} {', '.join(missing) or 'none'}")
    print(f"{'exec lockdown':18} {report['exec_lockdown']}")
    for plugin_id, verdict in sorted(plugins.items()):
        print(f"  plugin {plugin_id:12} {verdict}")
        for grant in exec_report.get(plugin_id, []):
            print(f"    {_shown(grant['summary'])}")
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


def _plugin_rows(config: Path | None) -> list[dict[str, Any]]:
    """One row per plugin under the configured plugin dirs, from the manifests, the config
    and the persisted overrides (no host needed)."""
    from .._platform._discovery import discover
    from .._settings._config import find_config
    from .._settings._exec_rules import exec_grants
    from .._settings._manifest import load_manifest
    from .._settings._permissions import effective_permissions
    from ._control import apply_overrides, overrides_path, read_overrides

    cfg = find_config(config)
    overrides = read_overrides(overrides_path(cfg))
    cfg = apply_overrides(cfg, overrides)
    found = discover(
        [Path(d) for d in cfg.runtime.plugin_dirs], entry_points=cfg.runtime.entry_points
    )
    rows: list[dict[str, Any]] = []
    for cand in found.candidates:
        try:
            m = load_manifest(cand.path)
        except CordonError as exc:
            rows.append(
                {
                    "id": cand.path.name,
                    "path": str(cand.path),
                    "state": "broken",
                    "error": exc.message,
                }
            )
            continue
        s = cfg.for_plugin(m.id)
        perms = effective_permissions(m.permissions, s.grant, s.deny)
        contributes = msgspec.to_builtins(m.contributes)
        usable = [p for p in perms.requested if p.startswith("exec:") and perms.allows(p)]
        rows.append(
            {
                "id": m.id,
                "name": m.name,
                "version": m.version,
                "path": str(cand.path),
                "origin": cand.origin,
                "description": m.description,
                "state": "enabled" if s.enabled else "disabled",
                "override": (
                    None
                    if m.id not in overrides
                    else ("enabled" if overrides[m.id] else "disabled")
                ),
                "permissions": {
                    "requested": list(perms.requested),
                    "granted": list(perms.granted),
                    "denied": list(perms.denied),
                    "effective": list(perms.effective),
                    "missing": list(perms.missing),
                },
                "contributes": contributes,
                "sandbox": s.sandbox,
                # Each exec grant in plain words: as powerful as the command, escalators named.
                "exec": exec_grants(usable, s.exec_rules),
            }
        )
    for problem in found.problems:
        rows.append({"id": None, "state": "broken", "error": str(problem)})
    return rows


def _merge_live(rows: list[dict[str, Any]], live: list[dict[str, Any]] | None) -> None:
    """Overlay a running host's view (``None``: no host) on the rows from files: its state
    and the version it runs. A plugin on disk that the host did not load is ``not-loaded``."""
    for row in rows:
        row["live"] = live is not None
    if live is None:
        return
    by_id = {p["id"]: p for p in live}
    for row in rows:
        running = by_id.pop(row.get("id"), None)
        if row["state"] == "broken":
            if running is not None:
                # Broken on disk now, yet the host still runs the version it loaded.
                row["running"] = running
            continue
        if running is None:
            row["state"], row["reason"] = "not-loaded", "the running host did not load it"
            continue
        if running["version"] != row["version"]:
            row["version_on_disk"] = row["version"]
        row["version"] = running["version"]
        row["state"], row["reason"] = running["state"], running.get("reason")
        row["sandbox_applied"] = running.get("sandbox") or {}
    for extra in by_id.values():
        # Loaded by the host from elsewhere (an installed distribution's entry point).
        rows.append({**extra, "description": "", "live": True})


def _cmd_plugin_list(args: argparse.Namespace) -> int:
    rows = _plugin_rows(args.config)
    _merge_live(rows, _live(args, "plugins"))
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for r in rows:
        if r["state"] == "broken":
            print(f"{_shown(r.get('id') or '?'):16} BROKEN   {_shown(r['error'])}")
        else:
            print(
                f"{_shown(r['id']):16} {_shown(r['version']):10} {r['state']:9} "
                f"{_shown(r['description'])}"
            )
    return EXIT_OK


def _cmd_plugin_info(args: argparse.Namespace) -> int:
    rows = _plugin_rows(args.config)
    live = _live(args, "plugins")
    _merge_live(rows, live)
    for r in rows:
        if r.get("id") == args.plugin_id:
            if live is not None:
                r["stats"] = (_ask_host(args, "stats") or {}).get(args.plugin_id)
            if args.json:
                _print_json(r)
            else:
                grants = r.pop("exec", None) or []
                _print_kv(r)
                # One line per exec grant: what it lets the plugin do, escalators named.
                for grant in grants:
                    print(f"{'exec':12} {_shown(grant['summary'])}")
            return EXIT_OK
    raise PluginUnavailable(
        f"no plugin {args.plugin_id!r} under the configured plugin dirs",
        plugin=args.plugin_id,
        reason="not-found",
    )


def _cmd_audit(args: argparse.Namespace) -> int:
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
        _print_json(
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
                f"{iso8601(e.ts)} {verdict} {_shown(e.method):20} x{e.count:<4} "
                f"{_shown(e.summary)} {_shown(e.outcome)}"
            )
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace) -> int:
    from ._control import stream

    params = {"plugin": args.plugin_id, "limit": args.limit}
    if not args.follow:
        for record in _ask_host(args, "logs", params):
            print_record(record, as_json=args.json)
        return EXIT_OK
    try:
        for method, record in stream(_socket_for(args), "logs", {**params, "follow": True}):
            if method == "log" and isinstance(record, dict):
                print_record(record, as_json=args.json)
    except KeyboardInterrupt:
        # Interrupting a follow is how it is meant to end.
        return EXIT_OK
    except BrokenPipeError:
        # `cordon logs --follow | head`: the reader has what it wanted.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from ._scaffold import scaffold_plugin, write_grants

    path = scaffold_plugin(args.name, Path(args.dest))
    print(f"created {path}")
    if args.no_config:
        return EXIT_OK
    note = write_grants(args.name, Path(args.dest), Path.cwd())
    if note.action == "unchanged":
        print(
            f"cordon: left {note.path} alone ({note.why}); to run the plugin from here, "
            f"grant what it requests:{note.section}",
            file=sys.stderr,
        )
    else:
        print(f"{note.action} {note.path} (grants {args.name} what it requests)")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cordon",
        description="Run untrusted Python plugins in sandboxed, supervised workers.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            metavar="FILE",
            help="operator TOML (default: ./cordon.toml, else built-in safe defaults)",
        )

    def socket_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--socket",
            metavar="PATH",
            help="the running host's control socket (default: <state-dir>/cordon.sock)",
        )

    c = sub.add_parser("call", help="load one plugin, call one tool, print the result as JSON")
    add_log_options(c)
    c.add_argument("plugin_dir", help="directory holding plugin.toml")
    c.add_argument("tool", help="name of the tool (or other contribution) to call")
    c.add_argument("--params", metavar="JSON", help="arguments as a JSON object or array")
    c.add_argument("--kind", default="tool", help="contribution kind (default: tool)")
    c.add_argument("--timeout", type=float, help="seconds (up to max-call-timeout)")
    config_opt(c)
    c.set_defaults(func=_cmd_call)

    cfg = sub.add_parser("config", help="validate or show the operator configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = cfg_sub.add_parser("check", help="validate FILE, reporting every problem at once")
    chk.add_argument("file")
    chk.add_argument("--json", action="store_true", help="print the result as JSON")
    chk.set_defaults(func=_cmd_config_check)
    show = cfg_sub.add_parser("show", help="print effective per-plugin settings")
    config_opt(show)
    show.set_defaults(func=_cmd_config_show)

    d = sub.add_parser("doctor", help="which sandbox layers this machine supports")
    config_opt(d)
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_cmd_doctor)

    run = sub.add_parser(
        "run", help="a long-running host: JSON-RPC on a control socket and stdin/stdout"
    )
    config_opt(run)
    socket_opt(run)
    run.add_argument("--watch", action="store_true", help="reload plugins when files change")
    add_log_options(run, file=True)
    run.add_argument(
        "--no-entry-points",
        action="store_true",
        help="load only the plugins under plugin-dirs, not installed distributions' "
        "cordon.plugins entry points (config: [runtime] entry-points = false)",
    )
    channels = run.add_mutually_exclusive_group()
    channels.add_argument(
        "--no-stdin",
        action="store_true",
        help="serve the control socket only; run until SIGTERM/SIGINT (not stdin's EOF)",
    )
    channels.add_argument(
        "--no-socket", action="store_true", help="serve stdin/stdout only (no control socket)"
    )
    run.set_defaults(func=_cmd_run)

    st = sub.add_parser(
        "stats",
        help="the running host's live stats; with no host, start the configured plugins "
        "and print a snapshot",
    )
    config_opt(st)
    socket_opt(st)
    add_log_options(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_stats)

    pl = sub.add_parser("plugin", help="plugins under the configured plugin dirs")
    pl_sub = pl.add_subparsers(dest="plugin_command", required=True, metavar="ACTION")
    ls = pl_sub.add_parser(
        "list", help="list plugins (with live states when a host runs; starts no worker)"
    )
    config_opt(ls)
    socket_opt(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_plugin_list)
    info = pl_sub.add_parser(
        "info", help="one plugin: permissions, and live state and stats when a host runs"
    )
    info.add_argument("plugin_id")
    config_opt(info)
    socket_opt(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_plugin_info)
    for action, what, func in (
        ("enable", "allow a plugin to run (live, and persisted for restarts)", _cmd_plugin_toggle),
        ("disable", "stop a plugin and refuse its calls (live and persisted)", _cmd_plugin_toggle),
        ("reload", "hot-reload a plugin in the running host", _cmd_plugin_reload),
    ):
        act = pl_sub.add_parser(action, help=what)
        act.add_argument("plugin_id")
        config_opt(act)
        socket_opt(act)
        act.add_argument("--json", action="store_true")
        act.set_defaults(func=func)

    au = sub.add_parser("audit", help="a plugin's audit trail of host-API calls")
    au.add_argument("plugin_id")
    au.add_argument("--limit", type=int, default=50)
    config_opt(au)
    au.add_argument("--json", action="store_true")
    au.set_defaults(func=_cmd_audit)

    lg = sub.add_parser(
        "logs", help="a plugin's recent log records from the running host (--follow: and new ones)"
    )
    lg.add_argument("plugin_id")
    lg.add_argument(
        "--limit", type=count_arg, default=100, help="recent records to show first (default: 100)"
    )
    lg.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new records until interrupted"
    )
    lg.add_argument("--json", action="store_true", help="one JSON object per record and line")
    config_opt(lg)
    socket_opt(lg)
    lg.set_defaults(func=_cmd_logs)

    new = sub.add_parser("new", help="scaffold a new plugin")
    new_sub = new.add_subparsers(dest="new_command", required=True, metavar="WHAT")
    np = new_sub.add_parser("plugin", help="a plugin dir with a test that runs it sandboxed")
    np.add_argument("name")
    np.add_argument("--dest", default=".", help="parent directory (default: .)")
    np.add_argument(
        "--no-config",
        action="store_true",
        help="do not create or extend ./cordon.toml with the grants the plugin requests",
    )
    np.set_defaults(func=_cmd_new_plugin)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        args.config = Path(args.config)
    setup: LoggingSetup | None = None
    try:
        setup = configure_from_args(parser, args)
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        group = exc if isinstance(exc, BaseExceptionGroup) else None
        while group is not None and len(group.exceptions) == 1:
            inner = group.exceptions[0]
            exc = inner
            group = inner if isinstance(inner, BaseExceptionGroup) else None
        return _fail(exc)
    finally:
        if setup is not None:
            setup.close()
