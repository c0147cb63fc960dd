"""The package commands: ``cordon plugin lock|pack|install|update|rollback|uninstall|sync`` and
``cordon key new``. The work is :mod:`cordon.runtime._packages`'; here are the operator's side
of it: the plan shown before anything is placed, the ``[y/N]`` question (asked only on a
terminal; a script says ``--yes``, and without either the answer is no), and the talk with a
running host (``cordon run``, over its control socket):

- after an update or rollback it is asked to ``reload`` (drain-and-switch to the new current);
- before an uninstall it is asked to ``unload`` the plugin when it runs it from the store, so
  no worker keeps running from deleted files (a refusal, e.g. ``PluginInUse``, aborts the
  uninstall with nothing deleted);
- before an update it is asked which version dir it runs (``plugins``): the tidy after the
  update never deletes that one (nor its environment), even though it is no longer current
  or previous, since a host that did not reload still imports from it. The next install or
  update of the plugin sweeps it once no reachable host reports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cordon.protocol import CordonError

from ._cmd_common import ask_host, live_or_none, shown
from ._control import ControlSocketError, HostNotRunning
from ._exitcodes import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from .._packages._install import InstallPlan
    from .._packages._lock import IndexOptions
    from .._settings._config import Config

__all__ = [
    "add_index_options",
    "cmd_key_new",
    "cmd_plugin_install",
    "cmd_plugin_lock",
    "cmd_plugin_pack",
    "cmd_plugin_rollback",
    "cmd_plugin_sync",
    "cmd_plugin_uninstall",
    "cmd_plugin_update",
]


def add_index_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--index-url", metavar="URL", help="package index to resolve from")
    sp.add_argument(
        "--find-links",
        metavar="DIR",
        action="append",
        default=[],
        help="a wheelhouse (directory of wheels) to use; repeatable",
    )
    sp.add_argument("--offline", action="store_true", help="never touch the network")


def add_install_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--yes", action="store_true", help="accept the permissions without asking")
    sp.add_argument(
        "--allow-insecure-localhost",
        action="store_true",
        help="also fetch http://127.0.0.1:PORT/ URLs (for tests and local mirrors only; any "
        "other http URL is still refused)",
    )


def _options(args: argparse.Namespace) -> IndexOptions:
    from .._packages._lock import IndexOptions

    # Relative wheelhouses mean the caller's cwd, as a shell user expects.
    links = tuple(
        d if "://" in d else str(Path(d).expanduser().absolute()) for d in args.find_links
    )
    return IndexOptions(index_url=args.index_url, find_links=links, offline=args.offline)


def _config(args: argparse.Namespace) -> Config:
    from .._settings._config import find_config

    return find_config(getattr(args, "config", None))


def _state_dir(cfg: Config) -> Path:
    return Path(cfg.runtime.state_dir).expanduser().resolve()


def _ask(question: str) -> bool:
    """``True`` only for an explicit yes typed on a terminal."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _show_plan(plan: InstallPlan) -> None:
    if plan.previous_version is None:
        print(f"install {plan.plugin_id} {plan.version}")
    else:
        change = "breaking" if plan.breaking else "compatible"
        print(f"update {plan.plugin_id} {plan.previous_version} -> {plan.version} ({change})")
    print(f"  source       {shown(plan.source)}")
    print(f"  signed by    {plan.signer or 'unsigned'}")
    deps = ", ".join(plan.dependencies) or "none"
    print(f"  dependencies {shown(deps)}")
    if plan.previous_version is None:
        print(f"  permissions  {shown(', '.join(plan.permissions) or 'none')}")
    else:
        for p in plan.added:
            print(f"  + permission {shown(p)} (new)")
        for p in plan.removed:
            print(f"  - permission {shown(p)} (dropped)")
        if not plan.added and not plan.removed:
            print("  permissions  unchanged")


def _consent(plan: InstallPlan, yes: bool) -> bool:
    """A first install always asks; an update asks only when it adds permissions."""
    needs = plan.previous_version is None or bool(plan.added)
    if not needs or yes:
        return True
    asking = plan.permissions if plan.previous_version is None else plan.added
    what = ", ".join(asking) or "no permissions"
    return _ask(f"{plan.plugin_id} {plan.version} requests {shown(what)}. Install?")


def _stage_and_commit(args: argparse.Namespace, source: str) -> int:
    from .._packages._errors import ConsentRefused
    from .._packages._install import commit, discard, stage
    from ..versions import is_breaking

    cfg = _config(args)
    plan, staged = stage(
        source,
        state_dir=_state_dir(cfg),
        trusted_keys=cfg.runtime.trusted_keys,
        require_signatures=cfg.runtime.require_signatures,
        options=_options(args),
        allow_insecure_localhost=args.allow_insecure_localhost,
        is_breaking=is_breaking,
    )
    try:
        _show_plan(plan)
        if not _consent(plan, args.yes):
            asked = plan.permissions if plan.previous_version is None else plan.added
            raise ConsentRefused(
                f"{plan.plugin_id} {plan.version} not installed: permissions "
                f"{', '.join(asked) or '(none)'} not accepted (answer y on a terminal, or "
                "pass --yes)",
                plugin=plan.plugin_id,
                permissions=list(asked),
            )
        in_use = _live_versions(args, cfg, plan)
    except BaseException:
        discard(staged)
        raise
    record = commit(staged, progress=sys.stderr.isatty(), in_use=in_use)
    print(f"installed {record.plugin_id} {record.version} in {record.plugin_dir}")
    if plan.previous_version is not None:
        _reload_live(args, record.plugin_id)
    return EXIT_OK


def _live_dirs(args: argparse.Namespace, plugin_id: str) -> list[Path] | None:
    """The folders a reachable running host runs ``plugin_id`` from (``None``: no host)."""
    listing = live_or_none(args, "plugins")
    if listing is None:
        return None
    return [
        Path(p["directory"])
        for p in listing
        if isinstance(p, dict) and p.get("id") == plugin_id and isinstance(p.get("directory"), str)
    ]


def _store_versions(cfg: Config, plugin_id: str, dirs: list[Path]) -> list[str]:
    """Of ``dirs``, the version names of those that are ``plugin_id``'s store version dirs."""
    from .._packages._store import plugins_root

    root = (plugins_root(_state_dir(cfg)) / plugin_id).resolve()
    return [d.name for d in dirs if d.resolve().parent == root]


def _live_versions(args: argparse.Namespace, cfg: Config, plan: InstallPlan) -> list[str]:
    if plan.previous_version is None:
        return []
    return _store_versions(cfg, plan.plugin_id, _live_dirs(args, plan.plugin_id) or [])


def _unload_live(args: argparse.Namespace, cfg: Config, plugin_id: str) -> None:
    """Ask a running host that runs ``plugin_id`` from the store to unload it (its worker
    stops) before its files go. Its typed refusal propagates: nothing is deleted."""
    dirs = _live_dirs(args, plugin_id)
    if not dirs or not _store_versions(cfg, plugin_id, dirs):
        return  # no host, or it runs a plugin of that id from elsewhere (a plugin-dir)
    unloaded = ask_host(args, "unload", {"plugin": plugin_id})
    print(f"unloaded {', '.join(map(str, unloaded))} in the running host")


def _reload_live(args: argparse.Namespace, plugin_id: str) -> None:
    """Tell a running host to switch to the new version (drain-and-switch); no host: nothing
    to do, the next start loads it."""
    try:
        state = ask_host(args, "reload", {"plugin": plugin_id})
    except (HostNotRunning, ControlSocketError):
        return
    except CordonError as exc:  # e.g. the host does not run this plugin
        print(f"cordon: the running host did not reload {plugin_id}: {shown(exc.message)}")
        return
    print(f"reloaded {plugin_id} in the running host ({state})")


def cmd_plugin_lock(args: argparse.Namespace) -> int:
    from .._packages._fetch import manifest_dependencies
    from .._packages._lock import lock_requirements, write_lock

    folder = Path(args.plugin_dir).absolute()
    deps = manifest_dependencies(folder)
    path = write_lock(folder, lock_requirements(deps, _options(args)))
    print(path)
    return EXIT_OK


def cmd_plugin_pack(args: argparse.Namespace) -> int:
    from .._packages._fetch import pack_folder

    folder = Path(args.plugin_dir).absolute()
    out = Path(args.out_dir).absolute() if args.out_dir else Path.cwd()
    sign = Path(args.sign).expanduser() if args.sign else None
    print(pack_folder(folder, out, _options(args), signing_key=sign))
    return EXIT_OK


def cmd_key_new(args: argparse.Namespace) -> int:
    from .._packages._keys import new_key

    path = Path(args.path).expanduser()
    public = new_key(path)
    print(public)
    print(f"private key {path} (keep it secret), public key {path.with_suffix('.pub')}")
    return EXIT_OK


def cmd_plugin_install(args: argparse.Namespace) -> int:
    return _stage_and_commit(args, args.source)


def cmd_plugin_update(args: argparse.Namespace) -> int:
    from .._packages._errors import NotInstalled
    from .._packages._store import installed

    cfg = _config(args)
    have = installed(_state_dir(cfg), args.plugin_id)
    if have is None:
        raise NotInstalled(f"{args.plugin_id} is not installed", plugin=args.plugin_id)
    return _stage_and_commit(args, args.source or have.source)


def cmd_plugin_rollback(args: argparse.Namespace) -> int:
    from .._packages._install import rollback

    record = rollback(_state_dir(_config(args)), args.plugin_id)
    print(f"rolled back {record.plugin_id} to {record.version}")
    _reload_live(args, record.plugin_id)
    return EXIT_OK


def cmd_plugin_uninstall(args: argparse.Namespace) -> int:
    from .._packages._errors import ConsentRefused, NotInstalled
    from .._packages._install import uninstall
    from .._packages._store import installed

    cfg = _config(args)
    state = _state_dir(cfg)
    have = installed(state, args.plugin_id)
    if have is None:
        raise NotInstalled(f"{args.plugin_id} is not installed", plugin=args.plugin_id)
    what = "and delete its stored data" if args.purge else "(its stored data is kept)"
    if not args.yes and not _ask(f"Uninstall {args.plugin_id} {have.version} {what}?"):
        raise ConsentRefused(
            f"{args.plugin_id} not uninstalled (answer y on a terminal, or pass --yes)",
            plugin=args.plugin_id,
        )
    _unload_live(args, cfg, args.plugin_id)
    uninstall(state, args.plugin_id, purge=args.purge)
    print(
        f"uninstalled {args.plugin_id} {have.version}" + (" (storage purged)" if args.purge else "")
    )
    return EXIT_OK


def cmd_plugin_sync(args: argparse.Namespace) -> int:
    from .._packages._sync import sync, write_sync
    from ..versions import is_breaking

    cfg = _config(args)
    state = _state_dir(cfg)
    if args.write:
        doc = write_sync(state, Path(args.write))
        print(f"wrote {args.write} ({len(doc.plugins)} plugins)")
        return EXIT_OK
    if not args.file:
        print("cordon: plugin sync: give FILE to install, or --write FILE", file=sys.stderr)
        return EXIT_USAGE

    def consent(plan: Any) -> bool:
        _show_plan(plan)
        return _consent(plan, args.yes)

    done = sync(
        state,
        Path(args.file),
        trusted_keys=cfg.runtime.trusted_keys,
        require_signatures=cfg.runtime.require_signatures,
        options=_options(args),
        consent=consent,
        allow_insecure_localhost=args.allow_insecure_localhost,
        is_breaking=is_breaking,
        progress=sys.stderr.isatty(),
    )
    for record in done:
        print(f"{record.plugin_id} {record.version} installed")
    # Sync adds and replaces; it never uninstalls on its own (that loses data without --purge
    # being asked for): what the file does not name is left alone, and said so.
    from .._packages._store import list_installed

    named = {r.plugin_id for r in done}
    for extra in list_installed(state):
        if extra.plugin_id not in named:
            print(f"note: {extra.plugin_id} {extra.version} is installed but not in {args.file}")
    return EXIT_OK
