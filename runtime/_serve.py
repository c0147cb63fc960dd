"""``cordon run``: a long-running host serving JSON-RPC 2.0 on its own stdin/stdout.

One JSON text per line, as between host and worker. Methods:

- ``call {plugin, name, arguments?, kind?, timeout?}`` → the contribution's result
- ``plugins {}`` → ``[{id, version, state, sandbox}]``
- ``stats {}`` → per-plugin stats (as ``rt.stats()``)
- ``reset {plugin}`` → closes a plugin's circuit breaker
- ``reload {plugin}`` / ``enable {plugin}`` / ``disable {plugin}`` → the plugin's new state
- ``emit {topic, payload?}`` → delivers an application event, returns the subscriber count
- ``audit {plugin, limit?}`` → the plugin's host-API audit trail

Errors are cordon's typed wire errors (the same codes as between host and worker). Requests are
served concurrently; EOF on stdin shuts the host down, stopping every worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from cordon.protocol import (
    Batch,
    CordonError,
    FrameSplitter,
    Invalid,
    InvalidParams,
    MethodNotFound,
    Request,
    decode_frame,
    encode,
    encode_error,
    encode_result,
    error_to_wire,
)

from ._runtime import Runtime

__all__ = ["serve"]

log = structlog.get_logger("cordon")


class _Call(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    name: str
    arguments: Any = None
    kind: str = "tool"
    timeout: float | None = None


class _PluginRef(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    limit: int = 100


class _Emit(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    payload: Any = None


def _params(raw: msgspec.Raw, typ: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}", field=None) from None


async def _dispatch(rt: Runtime, method: str, raw: msgspec.Raw) -> Any:
    if method == "call":
        c = _params(raw, _Call)
        return await rt.get(c.plugin).call(c.name, c.arguments, kind=c.kind, timeout=c.timeout)
    if method == "plugins":
        return [
            {"id": h.id, "version": h.manifest.version, "state": h.state, "sandbox": h.sandbox}
            for h in rt.plugins.values()
        ]
    if method == "stats":
        return {k: msgspec.to_builtins(v) for k, v in rt.stats().items()}
    if method in ("reload", "enable", "disable"):
        ref = _params(raw, _PluginRef)
        if method == "reload":
            await rt.reload(ref.plugin)
        elif method == "enable":
            await rt.enable(ref.plugin)
        else:
            await rt.disable(ref.plugin)
        return rt.get(ref.plugin).state
    if method == "reset":
        rt.reset(_params(raw, _PluginRef).plugin)
        return True
    if method == "emit":
        e = _params(raw, _Emit)
        return await rt.emit(e.topic, e.payload)
    if method == "audit":
        ref = _params(raw, _PluginRef)
        return msgspec.to_builtins(await rt.audit(ref.plugin, ref.limit))
    raise MethodNotFound(f"method {method!r} not found", method=method)


async def _load_configured(rt: Runtime) -> None:
    # Dependency order; a broken plugin is reported and never stops the others.
    report = await rt.load_all()
    for failure in report.failed:
        log.error(
            "plugin.load_failed", plugin=failure.plugin, path=failure.path, reason=failure.reason
        )


async def serve(config: Path | None, watch: bool = False) -> int:
    out = sys.stdout.buffer

    def send(frame: bytes) -> None:
        out.write(frame)
        out.flush()

    async with Runtime(config) as rt:
        await _load_configured(rt)
        send(encode({"jsonrpc": "2.0", "method": "ready", "params": sorted(rt.plugins)}))
        splitter = FrameSplitter()

        async def answer(req: Request) -> bytes:
            try:
                result = await _dispatch(rt, req.method, req.params)
                return encode_result(req.id, result)
            except CordonError as exc:
                return encode_error(req.id, error_to_wire(exc))

        async with anyio.create_task_group() as tg:
            if watch:
                watcher = anyio.CancelScope()

                async def watch_files() -> None:
                    with watcher:
                        await rt.watch()

                tg.start_soon(watch_files)

            async def one(req: Request) -> None:
                send(await answer(req))

            async def batch(msg: Batch) -> None:
                parts = []
                for item in msg.items:
                    if isinstance(item, Request):
                        parts.append((await answer(item)).rstrip(b"\n"))
                    elif isinstance(item, Invalid):
                        parts.append(encode_error(item.id, item.error).rstrip(b"\n"))
                if parts:
                    send(b"[" + b",".join(parts) + b"]\n")

            while True:
                data = await anyio.to_thread.run_sync(os.read, 0, 65536, abandon_on_cancel=True)
                if not data:
                    break
                for frame in splitter.feed(data):
                    if not isinstance(frame, bytes):
                        send(encode_error(None, error_to_wire(InvalidParams("frame too large"))))
                        continue
                    msg = decode_frame(frame)
                    if isinstance(msg, Request):
                        tg.start_soon(one, msg)
                    elif isinstance(msg, Batch):
                        tg.start_soon(batch, msg)
                    elif isinstance(msg, Invalid):
                        send(encode_error(msg.id, msg.error))
                    # Notifications and stray responses need no answer.
            # EOF: the task group waits for requests still in flight, then the host stops.
            if watch:
                watcher.cancel()
    return 0
