"""The ``cordon`` command line: the parser and :func:`main` (the console script's entry point).

Errors print one line on stderr (``cordon: <ErrorType>: message``) and exit with the code of
their class, so scripts can tell a plugin's failure from a timeout from a bad config. The codes
live in one table, :data:`cordon.runtime._cli._exitcodes.TABLE`, which also writes
``cordon --help``'s list and the README's.

Commands that talk to a running host (``plugin enable|disable|reload``, ``logs``, and
``stats``, ``plugin list``, ``plugin info`` when one is reachable) connect to
``--socket PATH``, else to ``<state-dir>/cordon.sock`` of the config's state-dir.

The parser is whole here, so ``cordon --help`` lists the commands in one deliberate order; the
commands live by group: :mod:`._cmd_run` (call, run, stats, logs), :mod:`._cmd_plugin`
(plugin list|info|enable|disable|reload, new plugin), :mod:`._cmd_admin` (config check|show,
doctor, audit), and what they share (error printing, exit codes, output, reaching the host)
in :mod:`._cmd_common`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._clilog import add_log_options, configure_from_args, count_arg
from ._cmd_admin import cmd_audit, cmd_config_check, cmd_config_show, cmd_doctor
from ._cmd_common import EXIT_CODES, exit_code_for, fail
from ._cmd_mcp import add_mcp_parser
from ._cmd_packages import (
    add_index_options,
    add_install_options,
    cmd_key_new,
    cmd_plugin_lock,
    cmd_plugin_pack,
    cmd_plugin_rollback,
    cmd_plugin_sync,
    cmd_plugin_uninstall,
)
from ._cmd_plugin import (
    cmd_new_plugin,
    cmd_plugin_list,
    cmd_plugin_reload,
    cmd_plugin_toggle,
)
from ._cmd_registry import (
    TOKEN_ENV,
    add_registry_option,
    cmd_plugin_info_any,
    cmd_plugin_install_any,
    cmd_plugin_publish,
    cmd_plugin_search,
    cmd_plugin_update_any,
    cmd_plugin_yank,
    cmd_registry_serve,
    cmd_registry_token_create,
    cmd_registry_token_revoke,
    cmd_registry_trust,
)
from ._cmd_run import cmd_call, cmd_logs, cmd_run, cmd_stats
from ._exitcodes import help_text
from ._oplog import LoggingSetup

# EXIT_CODES and exit_code_for live with the other shared helpers (the command groups use
# them too); they stay importable from here, where scripts and tests have always found them.
__all__ = ["EXIT_CODES", "exit_code_for", "main"]


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
    c.add_argument(
        "plugin_dir",
        metavar="PLUGIN",
        help="an installed plugin's id, or a directory holding plugin.toml",
    )
    c.add_argument("tool", help="name of the tool (or other contribution) to call")
    c.add_argument("--params", metavar="JSON", help="arguments as a JSON object or array")
    c.add_argument("--kind", default="tool", help="contribution kind (default: tool)")
    c.add_argument("--timeout", type=float, help="seconds (up to max-call-timeout)")
    config_opt(c)
    c.set_defaults(func=cmd_call)

    cfg = sub.add_parser("config", help="validate or show the operator configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = cfg_sub.add_parser("check", help="validate FILE, reporting every problem at once")
    chk.add_argument("file")
    chk.add_argument("--json", action="store_true", help="print the result as JSON")
    chk.set_defaults(func=cmd_config_check)
    show = cfg_sub.add_parser("show", help="print effective per-plugin settings")
    config_opt(show)
    show.set_defaults(func=cmd_config_show)

    d = sub.add_parser("doctor", help="which sandbox layers this machine supports")
    config_opt(d)
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)

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
    run.set_defaults(func=cmd_run)

    st = sub.add_parser(
        "stats",
        help="the running host's live stats; with no host, start the configured plugins "
        "and print a snapshot",
    )
    config_opt(st)
    socket_opt(st)
    add_log_options(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)

    pl = sub.add_parser("plugin", help="plugins under the configured plugin dirs")
    pl_sub = pl.add_subparsers(dest="plugin_command", required=True, metavar="ACTION")
    ls = pl_sub.add_parser(
        "list", help="list plugins (with live states when a host runs; starts no worker)"
    )
    config_opt(ls)
    socket_opt(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_plugin_list)
    info = pl_sub.add_parser(
        "info", help="one plugin: permissions, and live state and stats when a host runs"
    )
    info.add_argument("plugin_id")
    config_opt(info)
    socket_opt(info)
    info.add_argument("--json", action="store_true")
    info.add_argument("--remote", action="store_true", help="the registry's page of the plugin")
    add_registry_option(info)
    info.set_defaults(func=cmd_plugin_info_any)
    for action, what, func in (
        ("enable", "allow a plugin to run (live, and persisted for restarts)", cmd_plugin_toggle),
        ("disable", "stop a plugin and refuse its calls (live and persisted)", cmd_plugin_toggle),
        ("reload", "hot-reload a plugin in the running host", cmd_plugin_reload),
    ):
        act = pl_sub.add_parser(action, help=what)
        act.add_argument("plugin_id")
        config_opt(act)
        socket_opt(act)
        act.add_argument("--json", action="store_true")
        act.set_defaults(func=func)

    # Packages: lock and pack a plugin folder; install, update, roll back, uninstall, sync.
    lk = pl_sub.add_parser("lock", help="resolve a plugin's dependencies into DIR/plugin.lock")
    lk.add_argument("plugin_dir", metavar="DIR")
    add_index_options(lk)
    lk.set_defaults(func=cmd_plugin_lock)
    pk = pl_sub.add_parser("pack", help="write DIR as <id>-<version>.cordon and print its path")
    pk.add_argument("plugin_dir", metavar="DIR")
    pk.add_argument("-o", "--out-dir", metavar="OUT_DIR", help="where (default: .)")
    pk.add_argument("--sign", metavar="KEY", help="sign with this private key (cordon key new)")
    add_index_options(pk)
    pk.set_defaults(func=cmd_plugin_pack)
    ins = pl_sub.add_parser(
        "install",
        help="install a .cordon file, a plugin folder, an https URL, or ID[@VERSION|SPEC] from "
        "the registry, into state-dir",
    )
    ins.add_argument("source", metavar="SOURCE")
    config_opt(ins)
    socket_opt(ins)
    add_install_options(ins)
    add_index_options(ins)
    add_registry_option(ins)
    ins.set_defaults(func=cmd_plugin_install_any)
    up = pl_sub.add_parser(
        "update", help="install a new version (default: from the same source); keeps the old"
    )
    up.add_argument("plugin_id", metavar="ID")
    up.add_argument("source", metavar="SOURCE", nargs="?")
    config_opt(up)
    socket_opt(up)
    add_install_options(up)
    add_index_options(up)
    add_registry_option(up)
    up.set_defaults(func=cmd_plugin_update_any)
    rb = pl_sub.add_parser("rollback", help="return an installed plugin to its previous version")
    rb.add_argument("plugin_id", metavar="ID")
    config_opt(rb)
    socket_opt(rb)
    rb.set_defaults(func=cmd_plugin_rollback)
    un = pl_sub.add_parser("uninstall", help="remove an installed plugin (storage kept)")
    un.add_argument("plugin_id", metavar="ID")
    un.add_argument("--purge", action="store_true", help="also delete its stored data")
    un.add_argument("--yes", action="store_true", help="do not ask")
    config_opt(un)
    socket_opt(un)
    un.set_defaults(func=cmd_plugin_uninstall)
    sy = pl_sub.add_parser(
        "sync", help="install exactly what FILE pins (--write FILE: what is installed here)"
    )
    sy.add_argument("file", metavar="FILE", nargs="?")
    sy.add_argument("--write", metavar="FILE", help="write the installed plugins to FILE")
    config_opt(sy)
    add_install_options(sy)
    add_index_options(sy)
    sy.set_defaults(func=cmd_plugin_sync)

    # The registry: search it, publish to it, yank from it (install ID and update use it too).
    se = pl_sub.add_parser("search", help="search the registry (typos forgiven)")
    se.add_argument("query", metavar="Q")
    se.add_argument("--category", metavar="C")
    se.add_argument(
        "--sort", metavar="S", choices=("relevance", "downloads", "rating", "updated", "name")
    )
    se.add_argument("--limit", type=int, default=20, help="results (default: 20, at most 100)")
    se.add_argument("--json", action="store_true")
    config_opt(se)
    add_registry_option(se)
    se.set_defaults(func=cmd_plugin_search)
    pb = pl_sub.add_parser(
        "publish", aliases=["register"], help="publish a .cordon package to the registry"
    )
    pb.add_argument("file", metavar="FILE")
    pb.add_argument("--token", metavar="T", help=f"publish token (or ${TOKEN_ENV})")
    pb.add_argument("--category", default="other", help="catalogue category (default: other)")
    pb.add_argument("--repository", metavar="URL", help="source repository shown in the catalogue")
    config_opt(pb)
    add_registry_option(pb)
    pb.set_defaults(func=cmd_plugin_publish)
    yk = pl_sub.add_parser("yank", help="withdraw a published version (kept for exact pins)")
    yk.add_argument("plugin_id", metavar="ID")
    yk.add_argument("version", metavar="VERSION")
    yk.add_argument("--reason", required=True, help="shown to users (e.g. CVE, broken build)")
    yk.add_argument("--token", metavar="T", help=f"publish token (or ${TOKEN_ENV})")
    config_opt(yk)
    add_registry_option(yk)
    yk.set_defaults(func=cmd_plugin_yank)

    au = sub.add_parser("audit", help="a plugin's audit trail of host-API calls")
    au.add_argument("plugin_id")
    au.add_argument("--limit", type=int, default=50)
    config_opt(au)
    au.add_argument("--json", action="store_true")
    au.set_defaults(func=cmd_audit)

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
    lg.set_defaults(func=cmd_logs)

    ky = sub.add_parser("key", help="publisher keys for signing plugin packages")
    ky_sub = ky.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kn = ky_sub.add_parser("new", help="write an Ed25519 key to PATH (public key: PATH.pub)")
    kn.add_argument("path", metavar="PATH")
    kn.set_defaults(func=cmd_key_new)

    rg = sub.add_parser("registry", help="run a plugin registry; manage its tokens; pin one")
    rg_sub = rg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    rs = rg_sub.add_parser("serve", help="serve the registry in DIR (prints its URL when ready)")
    rs.add_argument("--data", required=True, metavar="DIR")
    rs.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    rs.add_argument("--port", type=int, default=8470, help="port (default: 8470; 0: any free)")
    rs.set_defaults(func=cmd_registry_serve)
    rt = rg_sub.add_parser("token", help="publish tokens (stored hashed)")
    rt_sub = rt.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = rt_sub.add_parser("create", help="print a new token allowed to publish the --scope ids")
    tc.add_argument("--data", required=True, metavar="DIR")
    tc.add_argument("--scope", required=True, action="append", metavar="ID", help="repeatable")
    tc.add_argument("--expires-days", type=float, metavar="DAYS", help="default: never")
    tc.set_defaults(func=cmd_registry_token_create)
    tr = rt_sub.add_parser("revoke", help="revoke TOKEN")
    tr.add_argument("--data", required=True, metavar="DIR")
    tr.add_argument("token", metavar="TOKEN")
    tr.set_defaults(func=cmd_registry_token_revoke)
    tt = rg_sub.add_parser(
        "trust", help="pin a registry's signing key (default: the one it serves now)"
    )
    tt.add_argument("url", metavar="URL")
    tt.add_argument("key", metavar="KEY", nargs="?", help="ed25519:... (from its operator)")
    config_opt(tt)
    tt.set_defaults(func=cmd_registry_trust)

    # The MCP bridge; the SDK is imported only when `cordon mcp serve` runs.
    add_mcp_parser(sub, config_opt, add_log_options)

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
    np.set_defaults(func=cmd_new_plugin)
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
        return fail(exc)
    finally:
        if setup is not None:
            setup.close()
