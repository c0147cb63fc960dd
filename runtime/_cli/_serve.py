"""``cordon run``: a long-running host serving JSON-RPC 2.0 on a local control socket and on
its own stdin/stdout.

One JSON text per line, as between host and worker, on both channels. Methods:

- ``call {plugin, name, arguments?, kind?, timeout?}`` → the contribution's result
- ``plugins {}`` → ``[{id, version, state, reason, sandbox, directory}]`` (``directory``: the
  folder its worker runs from, e.g. an installed version's dir)
- ``stats {}`` → per-plugin stats (as ``rt.stats()``)
- ``reset {plugin}`` → closes a plugin's circuit breaker
- ``reload {plugin}`` / ``enable {plugin}`` / ``disable {plugin}`` → the plugin's new state;
  ``enable``/``disable`` are also persisted in ``<state-dir>/plugin-overrides.json``, so they
  survive a restart
- ``unload {plugin}`` → the ids unloaded: stops the plugin's worker and forgets it until the
  host restarts (``cordon plugin uninstall`` asks this first). A plugin other loaded plugins
  require is refused (``PluginInUse``), an unknown one is ``PluginUnavailable``; not persisted
- ``emit {topic, payload?}`` → delivers an application event, returns the subscriber count
- ``audit {plugin, limit?}`` → the plugin's host-API audit trail
- ``logs {plugin, limit?, follow?}`` → the plugin's last ``limit`` log records (from the
  host's bounded ring, :mod:`._logring`), oldest first. With ``follow: true`` (control socket
  only) the answer is a stream instead: a ``log`` notification per record — the last
  ``limit`` first, then each new one as it is logged — and a ``heartbeat`` notification after
  :data:`FOLLOW_HEARTBEAT` seconds without one (so a follower that left is noticed); it ends
  when the client disconnects or the host stops. An unknown plugin is a
  ``PluginUnavailable`` error.

Errors are cordon's typed wire errors (the same codes as between host and worker); a line that
is not JSON gets a parse error (-32700) and the connection keeps working. Requests are served
concurrently, on every channel.

Channels (:func:`serve`):

- **the control socket** (``<state-dir>/cordon.sock``, or ``--socket PATH``): any number of
  concurrent clients of the host's own uid (or root), see :mod:`cordon.runtime._cli._control`. A
  client's EOF lets its requests in flight finish; its garbage or disconnect touches only it.
  ``--no-socket`` serves stdin only.
- **stdin/stdout**: a ``ready`` notification (the loaded plugin ids) is printed on stdout once
  the plugins are loaded; answers to stdin's requests follow. EOF on stdin finishes what is in
  flight and stops the host. ``--no-stdin`` does not read stdin at all (for a service manager
  or a shell's background job): the host then runs until SIGTERM or SIGINT.

SIGTERM or SIGINT stop the host in either mode: requests in flight are cancelled, every worker
is stopped, the socket file is removed, and the exit code is 0.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
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
from cordon.protocol._framing import _Oversize

from .._core._runtime import Runtime
from .._hostapi._logring import LogRing
from .._settings._config import Config
from ._control import (
    ControlSocket,
    Send,
    default_socket_path,
    load_config_with_overrides,
    overrides_path,
    write_override,
)

__all__ = ["Host", "serve"]

log = structlog.get_logger("cordon")

#: Bytes per read from stdin.
STDIN_CHUNK: Final = 65536
#: A ``logs --follow`` stream with nothing to say sends a heartbeat this often: writing is
#: the only way to learn that the follower disconnected, and an idle plugin must not keep a
#: dead follower's task alive for long.
FOLLOW_HEARTBEAT: Final = 5.0
#: Records sent by ``logs`` when the request names no ``limit``.
DEFAULT_LOG_RECORDS: Final = 100

# Log records carry plugin-chosen values: anything msgspec cannot encode goes as its repr.
_records = msgspec.json.Encoder(enc_hook=repr)


class _Call(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    name: str
    arguments: Any = None
    kind: str = "tool"
    timeout: float | None = None


class _PluginRef(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    limit: int = 100


class _Logs(msgspec.Struct, forbid_unknown_fields=True):
    plugin: str
    limit: int = DEFAULT_LOG_RECORDS
    follow: bool = False


class _Emit(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    payload: Any = None


def _params(raw: msgspec.Raw, typ: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=typ)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}", field=None) from None


class Host:
    """The JSON-RPC face of a running :class:`Runtime`, shared by every channel.

    ``overrides`` is the file ``enable``/``disable`` persist to (``None``: not persisted);
    ``ring`` holds the plugins' recent log records (a fresh one, fed by the runtime's log
    sink, by default).
    """

    def __init__(
        self, rt: Runtime, overrides: Path | None = None, ring: LogRing | None = None
    ) -> None:
        self.rt = rt
        self.overrides = overrides
        self.ring = ring if ring is not None else LogRing()
        # enable/disable persist, then apply: two racing ones must apply in the order they
        # were persisted, or the file and the live state would disagree.
        self._lifecycle = anyio.Lock()

    async def dispatch(self, method: str, raw: msgspec.Raw) -> Any:
        rt = self.rt
        if method == "call":
            c = _params(raw, _Call)
            return await rt.get(c.plugin).call(c.name, c.arguments, kind=c.kind, timeout=c.timeout)
        if method == "plugins":
            return [
                {
                    "id": h.id,
                    "version": h.manifest.version,
                    "state": h.state,
                    "reason": h.state_reason,
                    "sandbox": h.sandbox,
                    "directory": str(h.manifest.directory),
                }
                for h in rt.plugins.values()
            ]
        if method == "stats":
            return {k: msgspec.to_builtins(v) for k, v in rt.stats().items()}
        if method == "reload":
            ref = _params(raw, _PluginRef)
            await rt.reload(ref.plugin)
            return rt.get(ref.plugin).state
        if method in ("enable", "disable"):
            ref = _params(raw, _PluginRef)
            rt.get(ref.plugin)  # an unknown plugin is refused before anything is persisted
            async with self._lifecycle:
                if self.overrides is not None:
                    await anyio.to_thread.run_sync(
                        write_override, self.overrides, ref.plugin, method == "enable"
                    )
                if method == "enable":
                    await rt.enable(ref.plugin)
                else:
                    await rt.disable(ref.plugin, reason="disabled by the operator")
            return rt.get(ref.plugin).state
        if method == "unload":
            ref = _params(raw, _PluginRef)
            async with self._lifecycle:
                return await rt.unload(ref.plugin)
        if method == "reset":
            rt.reset(_params(raw, _PluginRef).plugin)
            return True
        if method == "emit":
            e = _params(raw, _Emit)
            return await rt.emit(e.topic, e.payload)
        if method == "audit":
            ref = _params(raw, _PluginRef)
            return msgspec.to_builtins(await rt.audit(ref.plugin, ref.limit))
        if method == "logs":
            q = self._logs_params(raw)
            if q.follow:
                raise InvalidParams(
                    "logs with follow streams records: ask on the control socket, alone "
                    "(not on stdin, not in a batch)",
                    field="follow",
                )
            return self.ring.recent(q.plugin, q.limit)
        raise MethodNotFound(f"method {method!r} not found", method=method)

    def _logs_params(self, raw: msgspec.Raw) -> _Logs:
        q: _Logs = _params(raw, _Logs)
        if q.limit < 0:
            raise InvalidParams("limit must be >= 0", field="limit")
        if not self.ring.knows(q.plugin):
            self.rt.get(q.plugin)  # PluginUnavailable for a plugin this host never had
        return q

    async def follow_logs(self, req: Request, send: Send) -> None:
        """Stream ``req``'s plugin's records to ``send`` until the client is gone."""
        try:
            q = self._logs_params(req.params)
            self.ring.check_room(q.plugin)
        except CordonError as exc:
            await send(encode_error(req.id, error_to_wire(exc)))
            return
        with self.ring.follow(q.plugin) as follower:
            # Subscribed before the backlog is read (no await in between): nothing is
            # missed and nothing is sent twice.
            for record in self.ring.recent(q.plugin, q.limit):
                if not await send(_notification("log", record)):
                    return
            while True:
                with anyio.move_on_after(FOLLOW_HEARTBEAT):
                    record = await follower.receive.receive()
                    if follower.dropped:
                        lost, follower.dropped = follower.dropped, 0
                        note = {"plugin": q.plugin, "level": "warning", "event": "logs.dropped"}
                        if not await send(_notification("log", {**note, "dropped": lost})):
                            return
                    if not await send(_notification("log", record)):
                        return
                    continue
                if not await send(_notification("heartbeat", None)):
                    return

    async def answer(self, req: Request) -> bytes:
        try:
            result = await self.dispatch(req.method, req.params)
            return encode_result(req.id, result)
        except CordonError as exc:
            return encode_error(req.id, error_to_wire(exc))
        except Exception as exc:
            # A bug in cordon answers this one request with an internal error; it must not
            # take down the host and every other client's requests with it.
            log.exception("host.request_failed", method=req.method)
            return encode_error(req.id, error_to_wire(exc))

    async def handle_frame(self, frame: bytes | _Oversize, send: Send) -> None:
        """Answer one frame from a control socket client through ``send`` (nothing, for
        notifications and stray responses)."""
        await self._handle(frame, send, streams=True)

    async def handle_stdin_frame(self, frame: bytes | _Oversize, send: Send) -> None:
        """As :meth:`handle_frame`, for stdin: no streams (stdin's EOF must stop the host)."""
        await self._handle(frame, send, streams=False)

    async def _handle(self, frame: bytes | _Oversize, send: Send, *, streams: bool) -> None:
        if not isinstance(frame, bytes):
            await send(encode_error(None, error_to_wire(InvalidParams("frame too large"))))
            return
        msg = decode_frame(frame)
        if streams and isinstance(msg, Request) and msg.method == "logs" and _follows(msg):
            await self.follow_logs(msg, send)
        elif isinstance(msg, Request):
            await send(await self.answer(msg))
        elif isinstance(msg, Batch):
            parts = []
            for item in msg.items:
                if isinstance(item, Request):
                    parts.append((await self.answer(item)).rstrip(b"\n"))
                elif isinstance(item, Invalid):
                    parts.append(encode_error(item.id, item.error).rstrip(b"\n"))
            if parts:
                await send(b"[" + b",".join(parts) + b"]\n")
        elif isinstance(msg, Invalid):
            await send(encode_error(msg.id, msg.error))


def _notification(method: str, params: Any) -> bytes:
    return _records.encode({"jsonrpc": "2.0", "method": method, "params": params}) + b"\n"


def _follows(req: Request) -> bool:
    try:
        return bool(msgspec.json.decode(req.params or b"{}", type=_Logs).follow)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False  # answered (as invalid params) by the ordinary path


async def _load_configured(rt: Runtime, *, entry_points: bool | None = None) -> None:
    """Load every configured plugin; installed entry points too unless ``entry_points`` (by
    default the config's ``[runtime] entry-points``) is false."""
    if entry_points is None:
        entry_points = rt.config.runtime.entry_points
    # Dependency order; a broken plugin is reported and never stops the others.
    report = await rt.load_all(entry_points=entry_points)
    for failure in report.failed:
        log.error(
            "plugin.load_failed", plugin=failure.plugin, path=failure.path, reason=failure.reason
        )


def _write_stdout(frame: bytes) -> None:
    try:
        out = sys.stdout.buffer
        out.write(frame)
        out.flush()
    except (BrokenPipeError, ValueError):
        # Nobody reads our stdout any more (or it is closed): the socket may still be used.
        pass


async def _send_stdout(frame: bytes) -> bool:
    _write_stdout(frame)
    return True


async def _read_stdin() -> bytes:
    """The next bytes of stdin, ``b""`` at EOF. Waits in the event loop (not in a thread), so
    a signal can stop the host while stdin stays open."""
    while True:
        try:
            await anyio.wait_readable(0)
        except PermissionError:
            pass  # a regular file or /dev/null: epoll refuses them, and reads never block
        except OSError:
            return b""  # fd 0 is closed
        try:
            return os.read(0, STDIN_CHUNK)
        except BlockingIOError:
            continue  # inherited O_NONBLOCK and another reader took the data
        except OSError:
            return b""


async def _serve_stdin(host: Host) -> None:
    splitter = FrameSplitter()
    async with anyio.create_task_group() as tg:
        while data := await _read_stdin():
            for frame in splitter.feed(data):
                tg.start_soon(host.handle_stdin_frame, frame, _send_stdout)
        for frame in splitter.feed_eof():
            tg.start_soon(host.handle_stdin_frame, frame, _send_stdout)
        # EOF: the task group waits for requests still in flight, then the host stops.


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.warning("host.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def serve(
    config: Path | None,
    watch: bool = False,
    *,
    socket_path: Path | None = None,
    use_socket: bool = True,
    use_stdin: bool = True,
    entry_points: bool | None = None,
) -> int:
    """Run a host until stdin's EOF (if ``use_stdin``) or SIGTERM/SIGINT; see the module doc.

    ``entry_points``: whether installed distributions' ``cordon.plugins`` entry points are
    loaded (``None``: as the config's ``[runtime] entry-points`` says, by default yes).

    Raises :class:`~cordon.runtime._cli._control.HostAlreadyRunning` before starting any plugin
    when another host serves the socket.
    """
    if not (use_socket or use_stdin):
        raise ValueError("a host needs a channel: the control socket, stdin, or both")
    cfg = load_config_with_overrides(config)
    control = ControlSocket.bind(socket_path or default_socket_path(cfg)) if use_socket else None
    try:
        # Signals are caught from before the first worker starts, so even a host stopped
        # while loading stops its workers and removes its socket.
        with anyio.CancelScope() as stopping:
            async with anyio.create_task_group() as signals:
                signals.start_soon(_stop_on_signal, stopping)
                async with Runtime(cfg) as rt:
                    await _serve_channels(
                        rt,
                        cfg,
                        control,
                        watch=watch,
                        use_stdin=use_stdin,
                        entry_points=entry_points,
                    )
                signals.cancel_scope.cancel()
    finally:
        if control is not None:
            control.close()
    return 0


async def _serve_channels(
    rt: Runtime,
    cfg: Config,
    control: ControlSocket | None,
    *,
    watch: bool,
    use_stdin: bool,
    entry_points: bool | None,
) -> None:
    host = Host(rt, overrides_path(cfg))
    assert rt.log_sink is not None
    stop_ring = rt.log_sink.subscribe(host.ring.add)
    try:
        await _serve_host(
            host, control, watch=watch, use_stdin=use_stdin, entry_points=entry_points
        )
    finally:
        stop_ring()


async def _serve_host(
    host: Host,
    control: ControlSocket | None,
    *,
    watch: bool,
    use_stdin: bool,
    entry_points: bool | None,
) -> None:
    rt = host.rt
    await _load_configured(rt, entry_points=entry_points)
    async with anyio.create_task_group() as tg:
        if watch:
            tg.start_soon(rt.watch)
        if control is not None:
            await tg.start(control.serve, host.handle_frame)
        _write_stdout(encode({"jsonrpc": "2.0", "method": "ready", "params": sorted(rt.plugins)}))
        if use_stdin:
            await _serve_stdin(host)
            tg.cancel_scope.cancel()
        else:
            await anyio.sleep_forever()
