"""The control socket of ``cordon run`` and the operator's persisted plugin overrides.

**The socket.** A running host listens on a unix stream socket, by default
``<state-dir>/cordon.sock`` (``cordon run --socket PATH`` overrides it), and speaks there the
same newline-delimited JSON-RPC 2.0 methods as on its stdin (:mod:`cordon.runtime._cli._serve`).
It is an operator interface, so it is locked down to the host's own user:

- the socket file is created with mode 0600 (the mode is set on the socket before ``bind``,
  so there is no moment in which it is more open) in a directory that is not world-writable;
- every connection's peer credentials (``SO_PEERCRED``) are checked: a uid other than the
  host's own and root gets one ``PermissionDenied`` error frame and is disconnected;
- one host per socket: the host holds an exclusive ``flock`` on ``<socket>.lock`` for its
  lifetime. A second host on the same socket fails with :class:`HostAlreadyRunning`; a socket
  file left by a host that died without cleaning up (no lock holder, no listener) is replaced;
- the socket and its lock file are removed when the host exits.

**Overrides.** ``cordon plugin enable|disable ID`` persist the operator's choice in
``<state-dir>/plugin-overrides.json`` (``{"version": 1, "plugins": {"hello": {"enabled":
false}}}``), written atomically (temp file, fsync, rename) under an ``flock`` on the
state-dir, by the live host when it handles ``enable``/``disable`` or by the CLI itself when
no host runs. ``cordon run`` and ``cordon plugin list`` apply them on top of the TOML config
(:func:`load_config_with_overrides`), so a disabled plugin stays disabled across restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import anyio
import anyio.abc
import msgspec
import structlog

from cordon.protocol import (
    DEFAULT_MAX_FRAME,
    CordonError,
    FrameSplitter,
    PermissionDenied,
    decode_frame,
    encode_error,
    encode_request,
    error_from_wire,
    error_to_wire,
)
from cordon.protocol._framing import _Oversize

from .._errors import ConfigError, Problem
from .._settings._config import Config, find_config

__all__ = [
    "OVERRIDES_NAME",
    "SOCKET_NAME",
    "ControlSocket",
    "ControlSocketError",
    "HostAlreadyRunning",
    "HostNotRunning",
    "apply_overrides",
    "default_socket_path",
    "load_config_with_overrides",
    "overrides_path",
    "read_overrides",
    "request",
    "stream",
    "write_override",
]

log = structlog.get_logger("cordon")

SOCKET_NAME: Final = "cordon.sock"
OVERRIDES_NAME: Final = "plugin-overrides.json"
#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107
#: Probing a socket file for a listener: a live host accepts at once (the kernel completes a
#: unix connect without the host's help while its backlog has room), so this only bounds a
#: host whose backlog is full.
PROBE_TIMEOUT: Final = 2.0
#: How long the CLI waits for the host's answer. The slowest request is ``reload``, which
#: answers after the old worker's in-flight calls drained (up to max-call-timeout, 60 s by
#: default, plus a grace): generous, so a legitimate reload is never reported as a timeout.
REQUEST_TIMEOUT: Final = 120.0
#: Requests one client may have in flight before the host stops reading from it: a client that
#: floods without reading its answers gets back-pressure instead of unbounded tasks.
MAX_IN_FLIGHT_PER_CLIENT: Final = 256
#: Bytes per read from a client socket.
READ_CHUNK: Final = 65536


class HostAlreadyRunning(CordonError):
    """Another ``cordon run`` is serving ``socket``: one host per socket (and state-dir)."""

    code = -32050
    _fields: ClassVar[tuple[str, ...]] = ("socket",)
    socket: str | None

    def _default_message(self) -> str:
        return (
            f"another cordon host is already running on {self.socket} "
            "(stop it first, or give this one its own --socket and state-dir)"
        )


class HostNotRunning(CordonError):
    """No host listens on ``socket`` (``reason``: ``no-socket``, ``refused``)."""

    code = -32051
    _fields: ClassVar[tuple[str, ...]] = ("socket", "reason")
    socket: str | None
    reason: str | None

    def _default_message(self) -> str:
        return f"no cordon host is running on {self.socket} ({self.reason}); start `cordon run`"


class ControlSocketError(CordonError):
    """The control socket at ``socket`` cannot be used safely or at all; ``reason`` says why
    (``path-too-long``, ``world-writable-dir``, ``not-a-socket``, ``foreign-owner``,
    ``permission``, ``bad-answer``, ``os``)."""

    code = -32052
    _fields: ClassVar[tuple[str, ...]] = ("socket", "reason")
    socket: str | None
    reason: str | None


# -- paths ------------------------------------------------------------------------------------


def _state_dir(config: Config) -> Path:
    # Relative state-dirs in a config file are already resolved against the file's folder;
    # the built-in default (".cordon") is relative to where the command runs.
    return Path(config.runtime.state_dir).expanduser().resolve()


def default_socket_path(config: Config) -> Path:
    """``<state-dir>/cordon.sock``."""
    return _state_dir(config) / SOCKET_NAME


def overrides_path(config: Config) -> Path:
    """``<state-dir>/plugin-overrides.json``."""
    return _state_dir(config) / OVERRIDES_NAME


# -- overrides --------------------------------------------------------------------------------


class _Override(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


class _OverrideFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 1
    plugins: dict[str, _Override] = msgspec.field(default_factory=dict)


_OVERRIDES_FORMAT: Final = 1


def read_overrides(path: Path) -> dict[str, bool]:
    """``{plugin id: enabled}`` from the overrides file; ``{}`` when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(source=str(path), problems=[Problem("", f"cannot read: {exc}")]) from None
    try:
        parsed = msgspec.json.decode(data, type=_OverrideFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(
            source=str(path),
            problems=[Problem("", f"not a plugin-overrides file: {exc} (fix or delete it)")],
        ) from None
    if parsed.version != _OVERRIDES_FORMAT:
        raise ConfigError(
            source=str(path),
            problems=[Problem("version", f"unknown format {parsed.version}; expected 1")],
        )
    return {pid: o.enabled for pid, o in parsed.plugins.items()}


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    # The host and the CLI may both update the file: the read-modify-write is serialised by an
    # flock on the directory itself, which needs no lock file to clean up.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_override(path: Path, plugin_id: str, enabled: bool) -> None:
    """Record that the operator enabled or disabled ``plugin_id``, atomically: readers see
    the old file or the new one, never a torn one, even if the writer dies mid-way."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _dir_lock(path.parent):
        current = read_overrides(path)
        current[plugin_id] = enabled
        doc = _OverrideFile(
            version=_OVERRIDES_FORMAT,
            plugins={pid: _Override(enabled=v) for pid, v in sorted(current.items())},
        )
        data = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def apply_overrides(config: Config, overrides: dict[str, bool]) -> Config:
    """``config`` with each overridden plugin's ``enabled`` replaced (other settings, and the
    defaults of plugins without a section of their own, are kept)."""
    if not overrides:
        return config
    plugins = dict(config.plugins)
    for pid, enabled in overrides.items():
        plugins[pid] = msgspec.structs.replace(config.for_plugin(pid), enabled=enabled)
    return msgspec.structs.replace(config, plugins=plugins)


def load_config_with_overrides(explicit: Path | None) -> Config:
    """The operator's config (``--config``, ./cordon.toml, defaults) with the persisted
    enable/disable overrides of its state-dir applied."""
    config = find_config(explicit)
    return apply_overrides(config, read_overrides(overrides_path(config)))


# -- the server side --------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlSocketError(
            f"control socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a unix "
            "socket address can hold; pass a shorter --socket",
            socket=str(path),
            reason="path-too-long",
        )


def _check_dir(directory: Path, sock: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = directory.stat()
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise ControlSocketError(
            f"refusing to put the control socket in {directory}: the directory is "
            "group- or world-writable, so others could replace the socket; use a private "
            "directory",
            socket=str(sock),
            reason="world-writable-dir",
        )
    if st.st_uid not in (os.getuid(), 0):
        raise ControlSocketError(
            f"refusing to put the control socket in {directory}: it belongs to uid "
            f"{st.st_uid}, not to this user ({os.getuid()}) or root",
            socket=str(sock),
            reason="foreign-owner",
        )


def _has_listener(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # someone is there, merely busy
    finally:
        probe.close()
    return True


def _take_lock(lock_path: Path, sock: Path) -> int:
    """An exclusive flock on ``lock_path`` held by the returned fd, or
    :class:`HostAlreadyRunning`. The lock file is unlinked by its holder on exit, so after
    locking we check the path still names the inode we locked (else retry on the new one)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HostAlreadyRunning(socket=str(sock)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


#: Sends one frame to the client that sent the request being answered; ``False`` once the
#: client is gone (a stream of records, ``logs --follow``, then stops).
Send = Callable[[bytes], Awaitable[bool]]
#: Handles one frame (or the oversize marker) read from a client, answering through ``send``.
#: Each frame runs in a task of its own, so requests are served concurrently.
FrameHandler = Callable[[bytes | _Oversize, Send], Awaitable[None]]


class ControlSocket:
    """A bound control socket owned by this host (lock held, file 0600). Serve it with
    :meth:`serve`; :meth:`close` removes the socket and lock files."""

    def __init__(self, path: Path, sock: socket.socket, lock_fd: int) -> None:
        self.path = path
        self._sock: socket.socket | None = sock
        self._lock_fd: int | None = lock_fd
        self._ino = os.stat(path).st_ino
        self.clients = 0

    @classmethod
    def bind(cls, path: Path) -> ControlSocket:
        """Create the socket at ``path``: :class:`HostAlreadyRunning` if another host serves
        it, :class:`ControlSocketError` if it cannot be done safely."""
        path = path.expanduser().absolute()
        try:
            return cls._bind(path)
        except OSError as exc:
            raise ControlSocketError(
                f"cannot create the control socket {path}: {exc}", socket=str(path), reason="os"
            ) from None

    @classmethod
    def _bind(cls, path: Path) -> ControlSocket:
        _check_path(path)
        _check_dir(path.parent, path)
        lock_fd = _take_lock(path.with_name(path.name + ".lock"), path)
        try:
            try:
                st = path.lstat()
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ControlSocketError(
                        f"{path} exists and is not a socket; refusing to replace it",
                        socket=str(path),
                        reason="not-a-socket",
                    )
                # We hold the lock, so a listener here is a host that does not take it
                # (an older cordon, another tool): never steal its socket.
                if _has_listener(path):
                    raise HostAlreadyRunning(socket=str(path))
                log.info("control.stale_socket_replaced", socket=str(path))
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # Set on the socket's inode before bind, the mode is the file's from its first
                # moment: no window in which another user could connect.
                os.fchmod(sock.fileno(), 0o600)
                sock.bind(os.fspath(path))
                sock.listen()
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return cls(path, sock, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    async def serve(
        self,
        handle_frame: FrameHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept clients until cancelled, each served concurrently by ``handle_frame``."""
        sock, self._sock = self._sock, None
        if sock is None:
            raise RuntimeError("the control socket is closed or already served")
        listener = await anyio.abc.SocketListener.from_socket(sock)
        log.info("control.listening", socket=str(self.path))
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            while True:
                stream = await listener.accept()
                tg.start_soon(self._client, stream, handle_frame)

    async def _client(self, stream: anyio.abc.SocketStream, handle_frame: FrameHandler) -> None:
        self.clients += 1
        try:
            async with stream:
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                uid = _peer_uid(raw)
                if uid not in (os.getuid(), 0):
                    await self._refuse(stream, uid)
                    return
                await _serve_client(stream, handle_frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            # The client went away: its answers have nowhere to go; others are unaffected.
            pass
        finally:
            self.clients -= 1

    async def _refuse(self, stream: anyio.abc.SocketStream, uid: int) -> None:
        log.warning("control.peer_refused", socket=str(self.path), uid=uid)
        err = PermissionDenied(
            f"uid {uid} may not use this host's control socket "
            f"(only uid {os.getuid()} and root may)",
            permission="control-socket",
        )
        with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
            await stream.send(encode_error(None, error_to_wire(err)))

    def close(self) -> None:
        """Remove the socket file (if it is still ours) and release and remove the lock."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._lock_fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._ino:
                    self.path.unlink()
            with contextlib.suppress(FileNotFoundError):
                # Unlinked while still locked: a host waiting on this inode re-checks the
                # path after locking and retries on a fresh file.
                os.unlink(self.path.with_name(self.path.name + ".lock"))
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None


async def _serve_client(stream: anyio.abc.SocketStream, handle_frame: FrameHandler) -> None:
    write_lock = anyio.Lock()
    gone = False

    async def send(frame: bytes) -> bool:
        nonlocal gone
        if gone:
            return False
        async with write_lock:
            try:
                await stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                gone = True
        return not gone

    slots = anyio.Semaphore(MAX_IN_FLIGHT_PER_CLIENT)

    async def limited(frame: bytes | _Oversize) -> None:
        try:
            await handle_frame(frame, send)
        finally:
            slots.release()

    splitter = FrameSplitter(DEFAULT_MAX_FRAME)
    # At EOF (the client is done sending, or gone) requests in flight still finish: a client
    # that half-closes after writing its requests gets its answers.
    async with anyio.create_task_group() as tg:
        while not gone:
            try:
                data = await stream.receive(READ_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                break
            for frame in splitter.feed(data):
                await slots.acquire()
                tg.start_soon(limited, frame)
        for frame in splitter.feed_eof():
            await slots.acquire()
            tg.start_soon(limited, frame)


# -- the client side --------------------------------------------------------------------------


def _rebuild(error: Any) -> CordonError:
    """The host's typed error, as the host raised it: every cordon error class with a code is
    decodable once its module is imported, so import the host's (the CLI may not have)."""
    from .. import _errors  # noqa: F401
    from .._core import _loading, _routing  # noqa: F401
    from .._hostapi import _exec  # noqa: F401
    from .._platform import _registry, _versions  # noqa: F401
    from . import _scaffold  # noqa: F401

    return error_from_wire(error)


def connect(path: Path) -> socket.socket:
    """A connected client socket, or :class:`HostNotRunning` if nothing listens there."""
    _check_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REQUEST_TIMEOUT)
    try:
        sock.connect(os.fspath(path))
    except FileNotFoundError:
        sock.close()
        raise HostNotRunning(socket=str(path), reason="no-socket") from None
    except ConnectionRefusedError:
        sock.close()
        raise HostNotRunning(socket=str(path), reason="refused") from None
    except PermissionError:
        sock.close()
        raise ControlSocketError(
            f"not allowed to connect to {path} (it belongs to another user)",
            socket=str(path),
            reason="permission",
        ) from None
    except BaseException:
        sock.close()
        raise
    # Both ways: a host refuses clients of another uid, and a client will not hand its
    # requests (or believe the answers) of a listener another user put there.
    host_uid = _peer_uid(sock)
    if host_uid not in (os.getuid(), 0):
        sock.close()
        raise ControlSocketError(
            f"the listener on {path} runs as uid {host_uid}, not as this user "
            f"({os.getuid()}) or root: not a cordon host of ours",
            socket=str(path),
            reason="foreign-host",
        )
    return sock


def request(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    """Send one request to the host at ``path`` and return its result; the host's error
    is raised as the typed exception it is. :class:`HostNotRunning` if no host listens."""
    from cordon.protocol import Response

    sock = connect(path)
    with sock:
        try:
            try:
                sock.sendall(encode_request(1, method, params or {}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a host refusing this peer says why before closing: read that below
            splitter = FrameSplitter(DEFAULT_MAX_FRAME)
            while True:
                try:
                    data = sock.recv(READ_CHUNK)
                except ConnectionResetError:
                    # The host closed with our request unread (it refused us): whatever it
                    # said before that has been read already.
                    data = b""
                frames = splitter.feed(data) if data else splitter.feed_eof()
                for frame in frames:
                    if not isinstance(frame, bytes):
                        continue
                    msg = decode_frame(frame)
                    if isinstance(msg, Response) and msg.id in (1, None):
                        if msg.error is not None:
                            raise _rebuild(msg.error)
                        return msgspec.json.decode(msg.result)
                if not data:
                    raise ControlSocketError(
                        f"the host at {path} closed the connection without answering {method}",
                        socket=str(path),
                        reason="bad-answer",
                    )
        except TimeoutError:
            from cordon.protocol import CallTimeout

            raise CallTimeout(
                f"the host at {path} did not answer {method} within {REQUEST_TIMEOUT} s",
                timeout=REQUEST_TIMEOUT,
                method=method,
            ) from None


def stream(
    path: Path, method: str, params: dict[str, Any] | None = None
) -> Iterator[tuple[str, Any]]:
    """Send one request whose answer is a stream (``logs`` with ``follow``) and yield each
    notification the host sends for it, as ``(method, params)``, with no time limit. Ends
    when the host answers (its error raised as the typed exception it is); a host that
    closes the connection instead (it stopped) is :class:`HostNotRunning` (``stopped``)."""
    from cordon.protocol import Notification, Response

    sock = connect(path)
    # A follower waits as long as the operator likes; the host's heartbeats keep it honest.
    sock.settimeout(None)
    with sock:
        sock.sendall(encode_request(1, method, params or {}))
        splitter = FrameSplitter(DEFAULT_MAX_FRAME)
        while True:
            try:
                data = sock.recv(READ_CHUNK)
            except ConnectionResetError:
                data = b""
            for frame in splitter.feed(data) if data else splitter.feed_eof():
                if not isinstance(frame, bytes):
                    continue
                msg = decode_frame(frame)
                if isinstance(msg, Notification):
                    yield msg.method, msgspec.json.decode(msg.params or b"null")
                elif isinstance(msg, Response) and msg.id in (1, None):
                    if msg.error is not None:
                        raise _rebuild(msg.error)
                    return
            if not data:
                raise HostNotRunning(
                    f"the cordon host on {path} stopped", socket=str(path), reason="stopped"
                )
