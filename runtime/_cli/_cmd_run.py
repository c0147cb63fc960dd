"""The commands that run plugins or watch them run: ``cordon call`` (one tool, then exit),
``cordon run`` (the long-running host, served by :mod:`._serve`), ``cordon stats`` and
``cordon logs`` (the running host's numbers and records; ``stats`` starts the configured
plugins itself when no host is reachable).

Grouped because each of them either starts workers or reads what running workers report,
unlike the plugin commands (:mod:`._cmd_plugin`, which read manifests and start none) and the
operator's checks (:mod:`._cmd_admin`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Any

import anyio
import msgspec

from cordon.protocol import CordonError, InvalidParams

from ._clilog import print_record
from ._cmd_common import ask_host, explicit_socket, live_or_none, print_json, shown, socket_for
from ._exitcodes import EXIT_OK

__all__ = ["cmd_call", "cmd_logs", "cmd_run", "cmd_stats"]


def cmd_call(args: argparse.Namespace) -> int:
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

    print_json(anyio.run(run))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ._serve import serve

    return anyio.run(
        functools.partial(
            serve,
            args.config,
            args.watch,
            socket_path=explicit_socket(args),
            use_socket=not args.no_socket,
            use_stdin=not args.no_stdin,
            entry_points=False if args.no_entry_points else None,
        )
    )


def cmd_stats(args: argparse.Namespace) -> int:
    stats = live_or_none(args, "stats")
    if stats is None:
        stats = _stats_snapshot(args)
    _add_installed(args, stats)
    if args.json:
        print_json(stats)
    else:
        for pid, s in stats.items():
            applied = sum(1 for v in s["sandbox"].values() if v == "applied")
            print(
                f"{pid:16} state={s['state']:8} pid={s['pid']} rss={s['rss_bytes']} "
                f"calls={s['calls']} restarts={s['restarts']} "
                f"sandbox={applied}/{len(s['sandbox'])} layers launcher={s.get('launcher')}"
                + (f" decode-pauses={s['decode_pauses']}" if s.get("decode_pauses") else "")
                + (f" installed={_installed_text(s['installed'])}" if s.get("installed") else "")
            )
    return EXIT_OK


def _add_installed(args: argparse.Namespace, stats: dict[str, Any]) -> None:
    """Each plugin's installed version, source and signer (``None``: not installed), read
    from the store (``cordon plugin install``), next to what the workers report."""
    from .._packages._store import installed
    from .._settings._config import find_config
    from ._cmd_plugin import installed_row, store_dir

    store = store_dir(find_config(args.config))
    for plugin_id, s in stats.items():
        record = installed(store, plugin_id)
        s["installed"] = installed_row(store, record.plugin_dir) if record is not None else None


def _installed_text(inst: dict[str, Any]) -> str:
    signer = inst["signer"] or "unsigned"
    return f"{inst['version']} from {shown(inst['source'])} ({shown(signer)})"


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
                        f"cordon: {handle.id}: {type(exc).__name__}: {shown(exc.message)}",
                        file=sys.stderr,
                    )
            return {k: msgspec.to_builtins(v) for k, v in rt.stats().items()}

    result: dict[str, Any] = anyio.run(snapshot)
    return result


def cmd_logs(args: argparse.Namespace) -> int:
    from ._control import stream

    params = {"plugin": args.plugin_id, "limit": args.limit}
    if not args.follow:
        for record in ask_host(args, "logs", params):
            print_record(record, as_json=args.json)
        return EXIT_OK
    try:
        for method, record in stream(socket_for(args), "logs", {**params, "follow": True}):
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
