"""The ``cordon plugin`` commands (``list``, ``info``, ``enable``, ``disable``, ``reload``) and
``cordon new plugin``: plugins under the configured plugin dirs, read from their manifests,
the config and the persisted overrides, overlaid with the running host's view when one is
reachable. None of them starts a worker.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cordon.protocol import CordonError, PluginUnavailable

from ._cmd_common import ask_host, live_or_none, print_json, print_kv, shown
from ._control import HostNotRunning
from ._exitcodes import EXIT_OK

if TYPE_CHECKING:
    from .._settings._config import Config

__all__ = [
    "cmd_new_plugin",
    "cmd_plugin_info",
    "cmd_plugin_list",
    "cmd_plugin_reload",
    "cmd_plugin_toggle",
]


def store_dir(cfg: Config) -> Path:
    """The state dir holding installed plugins (what ``cordon plugin install`` writes to)."""
    return Path(cfg.runtime.state_dir).expanduser().resolve()


def installed_row(store: Path, plugin_dir: str | Path) -> dict[str, Any] | None:
    """What ``plugin list``/``info``/``stats`` show of an installed plugin (``None`` for one
    not in the store): version, source, signer, and the disk its environment uses."""
    from .._packages._env import PluginEnv, env_size
    from .._packages._store import ENVS, installed_at_dir

    record = installed_at_dir(store, plugin_dir)
    if record is None:
        return None
    size = 0
    if record.env_key is not None and record.site_packages is not None:
        env = PluginEnv(
            key=record.env_key,
            path=str(store / ENVS / record.env_key),
            site_packages=record.site_packages,
        )
        size = env_size(env)
    return {
        "version": record.version,
        "source": record.source,
        "sha256": record.sha256,
        "signer": record.signer,
        "signature": "signed" if record.signer else "unsigned",
        "env_key": record.env_key,
        "env_bytes": size,
        "installed_at": record.installed_at,
    }


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size / 1024:.1f} GiB"


def _plugin_rows(config: Path | None) -> list[dict[str, Any]]:
    """One row per plugin installed or under the configured plugin dirs, from the manifests,
    the store's records, the config and the persisted overrides (no host needed)."""
    from .._platform._discovery import discover
    from .._settings._config import find_config
    from .._settings._exec_rules import exec_grants
    from .._settings._http_keys import http_grant_summary, secret_summaries
    from .._settings._manifest import load_manifest
    from .._settings._permissions import effective_permissions
    from ._control import apply_overrides, overrides_path, read_overrides

    cfg = find_config(config)
    overrides = read_overrides(overrides_path(cfg))
    cfg = apply_overrides(cfg, overrides)
    store = store_dir(cfg)
    found = discover(
        [Path(d) for d in cfg.runtime.plugin_dirs],
        entry_points=cfg.runtime.entry_points,
        installed=store,
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
                # Origins it may reach through the host, and its secrets by name (never values).
                "http": [http_grant_summary(p) for p in perms.effective if p.startswith("http:")],
                "secrets": secret_summaries(s.secrets, os.environ),
                # Installed with ``cordon plugin install``: its version, source and signer.
                "installed": (
                    installed_row(store, cand.path)
                    if cand.origin.startswith("installed:")
                    else None
                ),
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


def cmd_plugin_list(args: argparse.Namespace) -> int:
    rows = _plugin_rows(args.config)
    _merge_live(rows, live_or_none(args, "plugins"))
    if args.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        if r["state"] == "broken":
            print(f"{shown(r.get('id') or '?'):16} BROKEN   {shown(r['error'])}")
        else:
            # Installed plugins: where from, signed or not, the disk their environment uses.
            inst = r.get("installed")
            if inst:
                where = f"{inst['signature']:8} env={_size(inst['env_bytes'])} {inst['source']}"
            else:
                where = f"{'-':8} env=- {r.get('origin') or 'running host'}"
            print(
                f"{shown(r['id']):16} {shown(r['version']):10} {r['state']:9} "
                f"{shown(where)}  {shown(r['description'])}"
            )
    return EXIT_OK


def cmd_plugin_info(args: argparse.Namespace) -> int:
    rows = _plugin_rows(args.config)
    live = live_or_none(args, "plugins")
    _merge_live(rows, live)
    for r in rows:
        if r.get("id") == args.plugin_id:
            if live is not None:
                r["stats"] = (ask_host(args, "stats") or {}).get(args.plugin_id)
            if args.json:
                print_json(r)
            else:
                grants = r.pop("exec", None) or []
                origins = r.pop("http", None) or []
                secrets = r.pop("secrets", None) or []
                print_kv(r)
                # One line per exec grant: what it lets the plugin do, escalators named.
                for grant in grants:
                    print(f"{'exec':12} {shown(grant['summary'])}")
                for origin in origins:
                    print(f"{'http':12} {shown(origin)}")
                for sec in secrets:
                    state = "set" if sec["set"] else "NOT SET"
                    to = ", ".join(sec["hosts"])
                    print(
                        f"{'secret':12} {shown(sec['name'])} from ${sec['env']} ({state}) -> {to}"
                    )
            return EXIT_OK
    raise PluginUnavailable(
        f"no plugin {args.plugin_id!r} under the configured plugin dirs",
        plugin=args.plugin_id,
        reason="not-found",
    )


def cmd_plugin_toggle(args: argparse.Namespace) -> int:
    from ._control import load_config_with_overrides, overrides_path, write_override

    enable = args.plugin_command == "enable"
    try:
        state = ask_host(args, args.plugin_command, {"plugin": args.plugin_id})
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
        print_json(result)
    elif live:
        print(f"{args.plugin_id}: {state} (running host; persisted for restarts)")
    else:
        print(f"{args.plugin_id}: {state} (no running host; applies when one starts)")
    return EXIT_OK


def cmd_plugin_reload(args: argparse.Namespace) -> int:
    state = ask_host(args, "reload", {"plugin": args.plugin_id})
    version = next(
        (p["version"] for p in ask_host(args, "plugins") if p["id"] == args.plugin_id), None
    )
    result = {"plugin": args.plugin_id, "state": state, "version": version}
    if args.json:
        print_json(result)
    else:
        print(f"{args.plugin_id}: {state} (version {version})")
    return EXIT_OK


def cmd_new_plugin(args: argparse.Namespace) -> int:
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
