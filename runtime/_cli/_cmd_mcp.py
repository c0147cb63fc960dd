"""``cordon mcp serve``: the configured plugins' tools for any MCP client (:mod:`.._mcp`).

Nothing of the ``mcp`` SDK is imported until the command runs, so the rest of ``cordon``
works (and starts as fast) without the ``cordon[mcp]`` extra.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

import anyio

from ._exitcodes import EXIT_USAGE

__all__ = ["add_mcp_parser", "cmd_mcp_serve"]

_TRANSPORTS = ("stdio", "http")


def add_mcp_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_opt: Callable[[argparse.ArgumentParser], None],
    add_log_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The ``mcp`` command group (``serve``), added to the ``cordon`` parser."""
    # Light: names and limits only, no SDK and no runtime.
    from .._mcp._tools import SEPARATORS

    mcp = sub.add_parser("mcp", help="serve the configured plugins' tools to MCP clients")
    mcp_sub = mcp.add_subparsers(dest="mcp_command", required=True, metavar="ACTION")
    sv = mcp_sub.add_parser(
        "serve",
        help="an MCP server (stdio, or streamable HTTP on loopback) whose tools are the "
        "plugins' tools, each call run in the plugin's sandboxed worker",
    )
    config_opt(sv)
    add_log_options(sv)
    sv.add_argument(
        "--plugins",
        metavar="A,B",
        help="expose only these plugins' tools (default: every configured plugin)",
    )
    sv.add_argument("--transport", choices=_TRANSPORTS, default="stdio", help="default: stdio")
    sv.add_argument("--host", default="127.0.0.1", help="http: address (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="http: port (default: 8471; 0: any)")
    sv.add_argument(
        "--allow-remote",
        action="store_true",
        help="http: serve on a non-loopback --host (the bridge has no authentication)",
    )
    sv.add_argument(
        "--separator",
        choices=SEPARATORS,
        default=".",
        help="between plugin and tool in MCP tool names (default: '.', as in hello.greet)",
    )
    sv.set_defaults(func=cmd_mcp_serve)


def _usage(message: str) -> int:
    print(f"cordon mcp serve: {message}", file=sys.stderr)
    return EXIT_USAGE


def _plugin_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def cmd_mcp_serve(args: argparse.Namespace) -> int:
    try:
        from .._mcp._serve import DEFAULT_PORT, RemoteBindRefused, serve_http, serve_stdio
    except ImportError as exc:
        return _usage(f"needs the MCP SDK ({exc.name} is missing): pip install 'cordon[mcp]'")
    from ._control import load_config_with_overrides

    plugins = _plugin_list(args.plugins)
    if plugins is not None and not plugins:
        return _usage("--plugins names no plugin")
    if args.transport == "stdio" and (args.port is not None or args.allow_remote):
        return _usage("--port and --allow-remote are for --transport http")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        return _usage(f"--port {port} is not a port number")
    config = load_config_with_overrides(args.config)
    if args.transport == "stdio":
        return anyio.run(functools.partial(serve_stdio, config, plugins, args.separator))

    def ready(url: str) -> None:
        # Not stdio: stdout is free, and a script (or a test) waits for this line.
        print(f"cordon mcp serving on {url}", flush=True)

    try:
        return anyio.run(
            functools.partial(
                serve_http,
                config,
                plugins,
                args.separator,
                host=args.host,
                port=port,
                allow_remote=args.allow_remote,
                on_ready=ready,
            )
        )
    except RemoteBindRefused as exc:
        return _usage(str(exc))
