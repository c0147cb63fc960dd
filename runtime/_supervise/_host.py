"""What a :class:`~cordon.runtime._supervise._handle.PluginHandle` needs from the runtime
that owns it, as a protocol: the task group to run starts and watchers in, worker wiring
(spares, cgroups), lifecycle events, the event bus and audit trail, and the load-time checks
a reload repeats. The supervision room may not import the runtime core (a higher room), so the
handle sees its :class:`~cordon.runtime.Runtime` only through this; ``Runtime`` satisfies it
structurally."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._hostapi._audit import AuditTrail
    from .._hostapi._events import EventBus
    from .._settings._config import PluginSettings
    from .._settings._manifest import Manifest
    from .._settings._permissions import PermissionSet
    from ._cgroup import WorkerCgroup
    from ._handle import PluginHandle
    from ._sampler import FleetSampler
    from ._worker import WorkerProcess

__all__ = ["PluginHost"]


class PluginHost(Protocol):
    """The runtime, as its plugin handles use it (read-only attributes are properties here,
    so the runtime's plain attributes satisfy them)."""

    @property
    def events(self) -> EventBus | None: ...

    @property
    def audit_trail(self) -> AuditTrail | None: ...

    @property
    def _closing(self) -> bool:
        """Set once the runtime is being left: crashed workers are no longer restarted."""
        ...

    @property
    def _cgroups(self) -> Mapping[WorkerProcess, WorkerCgroup]: ...

    @property
    def _sampler(self) -> FleetSampler:
        """The runtime's one pass over its workers (health, RSS, idleness, CPU time)."""
        ...

    @property
    def _cgroup_why(self) -> Mapping[WorkerProcess, str]: ...

    def _tg_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the runtime's task group (raises if it is not running)."""
        ...

    def _new_worker(
        self, handle: PluginHandle, manifest: Manifest | None = None, *, spare: bool = True
    ) -> WorkerProcess: ...

    def _is_claimed_spare(self, worker: WorkerProcess) -> bool: ...

    async def _start_worker(self, worker: WorkerProcess) -> None: ...

    async def _emit(self, topic: str, payload: dict[str, Any]) -> None: ...

    def _check_dependencies(self, manifest: Manifest) -> None: ...

    def _reload_dir(self, manifest: Manifest) -> str:
        """Where a reload reads the plugin from (an installed one: the version ``current``
        names now)."""
        ...

    def _permissions_for(self, manifest: Manifest, settings: PluginSettings) -> PermissionSet: ...
