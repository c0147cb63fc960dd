"""Method names and payload shapes of cordon's JSON-RPC dialogue.

Host → worker: ``initialize``, ``activate``, ``deactivate``, ``invoke``, ``$/ping``, and the
``$/cancel`` and ``$/placed`` notifications; ``$/fault`` only when the host enabled fault
injection at ``initialize`` (tests, via :mod:`cordon.testing`) — otherwise MethodNotFound.
Worker → host: the ``$/hello`` notification first, ``$/progress``
notifications during a call, ``host/...`` requests for the host APIs (storage, config, ...),
and ``host/log`` notifications for log records (no answer: a plugin never waits to log).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

__all__ = [
    "ACTIVATE",
    "CANCEL",
    "DEACTIVATE",
    "FAULT",
    "HELLO",
    "INITIALIZE",
    "INVOKE",
    "LOCKED_DOWN",
    "PING",
    "PLACED",
    "PROGRESS",
    "CancelParams",
    "Contribution",
    "ContributionKind",
    "FaultParams",
    "Hello",
    "InitializeParams",
    "InitializeResult",
    "InvokeParams",
    "Limits",
    "LockedDown",
    "ProgressParams",
    "SandboxPolicy",
]

HELLO: Final = "$/hello"
INITIALIZE: Final = "initialize"
ACTIVATE: Final = "activate"
DEACTIVATE: Final = "deactivate"
INVOKE: Final = "invoke"
PING: Final = "$/ping"
CANCEL: Final = "$/cancel"
PROGRESS: Final = "$/progress"
FAULT: Final = "$/fault"
#: Worker → host, once, right after the lock-down and before a line of the plugin is
#: imported: the layer report, from code the plugin has not touched yet. From then on the
#: channel may carry the plugin's own bytes, so the host trusts this report (not the one in
#: ``initialize``'s result) and treats any later launch-only error as the plugin's.
LOCKED_DOWN: Final = "$/lockedDown"
#: Host → worker, after ``initialize`` when that asked for it (``await_placed``): the worker
#: is in its cgroups now. The host sends ``initialize`` without waiting for the move (it
#: overlaps the worker's lock-down); the worker imports nothing of the plugin before this.
PLACED: Final = "$/placed"

ContributionKind = Literal["tool", "command", "provider", "middleware", "event_handler"]


class LockedDown(msgspec.Struct):
    """``$/lockedDown``: each sandbox layer -> "applied" | "unavailable: why" | "off"."""

    sandbox: dict[str, str]


class Hello(msgspec.Struct):
    """The worker's first frame: what it speaks, announced before it trusts anything."""

    protocols: list[int]
    pid: int
    cordon: str


class Limits(msgspec.Struct, omit_defaults=True):
    """Kernel resource limits the worker applies to itself before importing plugin code.
    ``None`` leaves a limit as inherited."""

    memory: int | None = None  # RLIMIT_AS, bytes
    cpu_seconds: int | None = None  # RLIMIT_CPU soft; hard is soft + 1
    open_files: int | None = None  # RLIMIT_NOFILE
    file_size: int | None = None  # RLIMIT_FSIZE, bytes
    processes: int | None = None  # RLIMIT_NPROC (0 also closes fork in seccomp)
    core: int = 0  # RLIMIT_CORE: never dump plugin memory to disk


class SandboxPolicy(msgspec.Struct, omit_defaults=True):
    mode: Literal["strict", "best-effort", "off"] = "strict"
    fs_read: list[str] = []
    fs_write: list[str] = []


class InitializeParams(msgspec.Struct, omit_defaults=True):
    protocol: int
    plugin_id: str
    plugin_dir: str
    entry: str
    scratch_dir: str
    limits: Limits = msgspec.field(default_factory=Limits)
    sandbox: SandboxPolicy = msgspec.field(default_factory=SandboxPolicy)
    max_frame: int = 16 * 1024 * 1024
    host_pid: int = 0
    #: Honour ``$/fault`` requests (fault injection for tests). Never set in production.
    faults: bool = False
    #: The plugin's own environment (its installed dependencies' ``site-packages``): appended
    #: to ``sys.path`` after lock-down, never through ``site`` (no ``.pth`` runs), read-only.
    site_paths: list[str] = []
    #: The host is still moving the worker into its cgroups: lock down, then wait for
    #: ``$/placed`` before importing the plugin (its first line must run under the group's
    #: memory and task limits).
    await_placed: bool = False


class Contribution(msgspec.Struct, omit_defaults=True):
    kind: ContributionKind
    name: str
    description: str = ""
    params_schema: dict[str, Any] = {}
    result_schema: dict[str, Any] = {}
    options: dict[str, Any] = {}


class InitializeResult(msgspec.Struct, omit_defaults=True):
    contributions: list[Contribution]
    sandbox: dict[str, str] = {}  # layer -> "applied" | "unavailable: why" | "off"
    activate_hooks: int = 0


class InvokeParams(msgspec.Struct, omit_defaults=True):
    name: str
    kind: ContributionKind = "tool"
    arguments: msgspec.Raw = msgspec.Raw()


class FaultParams(msgspec.Struct, omit_defaults=True):
    """``$/fault``: make the worker misbehave for real. ``kind`` is ``memory`` (allocate
    until MemoryError, then die of it), ``cpu`` (burn ``seconds`` of CPU in a thread) or
    ``corrupt`` (write garbage onto the protocol channel)."""

    kind: Literal["memory", "cpu", "corrupt"]
    seconds: float = 0.0


class CancelParams(msgspec.Struct):
    id: int | str | None


class ProgressParams(msgspec.Struct, omit_defaults=True):
    id: int | str | None
    progress: float
    total: float | None = None
    message: str | None = None
