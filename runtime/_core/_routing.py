"""Routed calls: :meth:`~cordon.runtime.Runtime.invoke` resolves ``plugin.name`` (or a
name only one plugin offers) through the contribution registry and runs it inside the
middleware chain — every ``before_request`` in ``middleware-order``, the handler, every
``after_response`` in reverse — under each middleware plugin's fail-open or fail-closed
policy. A mixin of ``Runtime``; :class:`MiddlewareFailed` lives here with the code that
raises it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from cordon.protocol import CordonError, ProgressParams

from .._platform._registry import ContributionInfo, Registry, plugin_contributions
from .._supervise._handle import PluginHandle

if TYPE_CHECKING:
    from .._settings._config import Config

__all__ = ["MiddlewareFailed", "Routing"]

log = structlog.get_logger("cordon")


class MiddlewareFailed(CordonError):
    """A middleware failed or timed out under ``middleware-policy = "fail-closed"``:
    ``plugin``/``middleware`` name it, ``phase`` is ``before_request`` or ``after_response``,
    ``reason`` is what went wrong."""

    code = -32042
    _fields: ClassVar[tuple[str, ...]] = ("plugin", "middleware", "phase", "reason")
    plugin: str | None
    middleware: str | None
    phase: str | None
    reason: str | None

    def _default_message(self) -> str:
        return f"middleware {self.plugin}.{self.middleware} ({self.phase}) failed: {self.reason}"


def _middleware_output_problem(phase: str, request: dict[str, Any], out: Any) -> str | None:
    if not isinstance(out, dict):
        return f"returned {type(out).__name__}, not an object"
    if phase == "after_response":
        return None if "result" in out else "returned a response without 'result'"
    if "arguments" not in out:
        return "returned a request without 'arguments'"
    for key in ("plugin", "name", "kind"):
        if key in out and out[key] != request[key]:
            return f"may change only the arguments, but changed {key!r}"
    return None


class Routing:
    """Calls routed by name through the registry and the middleware chain (a mixin of
    ``Runtime``)."""

    if TYPE_CHECKING:
        # The runtime's state, made in Runtime.__init__.
        config: Config
        registry: Registry
        _plugins: dict[str, PluginHandle]

    async def invoke(
        self,
        target: str,
        arguments: Any = None,
        *,
        kind: str = "tool",
        timeout: float | None = None,
        on_progress: Callable[[ProgressParams], Any] | None = None,
    ) -> Any:
        """Call ``target`` (``plugin.name``, or a name only one plugin offers) through the
        middleware chain: every ``before_request`` middleware in ``middleware-order``, the
        handler, then every ``after_response`` middleware in reverse. Starts lazy workers
        on first use. Raises :class:`AmbiguousContribution` for a clash between plugins,
        :class:`MiddlewareFailed` when a fail-closed middleware fails."""
        handle, name = self.registry.resolve(target, kind)
        request: dict[str, Any] = {
            "plugin": handle.id,
            "name": name,
            "kind": kind,
            "arguments": arguments if arguments is not None else {},
        }
        chain = await self._middleware_chain() if kind != "middleware" else []
        before = [m for m in chain if m[1].options.get("phase") != "after_response"]
        after = [m for m in chain if m[1].options.get("phase") == "after_response"]
        for mw_handle, mw in before:
            out = await self._run_middleware(mw_handle, mw, "before_request", request, None)
            if out is not None:
                request = {**request, "arguments": out["arguments"]}
        result = await handle.call(
            name, request["arguments"], kind=kind, timeout=timeout, on_progress=on_progress
        )
        response: dict[str, Any] = {"result": result}
        for mw_handle, mw in reversed(after):
            out = await self._run_middleware(mw_handle, mw, "after_response", request, response)
            if out is not None:
                response = {"result": out["result"]}
        return response["result"]

    async def call_tool(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a tool by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="tool", **kw)

    async def run_command(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a command by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="command", **kw)

    async def call_provider(self, name: str, arguments: Any = None, **kw: Any) -> Any:
        """:meth:`invoke` a provider by (qualified or unique) name."""
        return await self.invoke(name, arguments, kind="provider", **kw)

    async def _middleware_chain(self) -> list[tuple[PluginHandle, ContributionInfo]]:
        """Every enabled plugin's middleware: plugins in ``middleware-order``, then the rest
        by id; within a plugin by declared priority (highest first), then name. A plugin
        whose middleware is only declared (worker never ran) is started to learn phases."""
        order = self.config.runtime.middleware_order
        rank = {pid: i for i, pid in enumerate(order)}
        handles = sorted(
            (h for h in self._plugins.values() if h.settings.enabled),
            key=lambda h: (rank.get(h.id, len(order)), h.id),
        )
        chain: list[tuple[PluginHandle, ContributionInfo]] = []
        for h in handles:
            entries = [c for c in plugin_contributions(h) if c.kind == "middleware"]
            if entries and entries[0].source == "manifest":
                try:
                    await h._ensure_worker()
                except CordonError as exc:
                    self._middleware_failed(h, entries[0].name, "before_request", exc)
                    continue
                entries = [c for c in plugin_contributions(h) if c.kind == "middleware"]
            entries.sort(key=lambda c: (-int(c.options.get("priority", 0) or 0), c.name))
            chain += [(h, c) for c in entries]
        return chain

    async def _run_middleware(
        self,
        handle: PluginHandle,
        mw: ContributionInfo,
        phase: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one middleware; its output, or ``None`` when skipped (fail-open)."""
        args: dict[str, Any] = {"request": request}
        if response is not None:
            args["response"] = response
        try:
            out = await handle.call(mw.name, args, kind="middleware")
        except CordonError as exc:
            self._middleware_failed(handle, mw.name, phase, exc)
            return None
        problem = _middleware_output_problem(phase, request, out)
        if problem is not None:
            self._middleware_failed(handle, mw.name, phase, problem)
            return None
        assert isinstance(out, dict)
        return out

    def _middleware_failed(
        self, handle: PluginHandle, name: str, phase: str, why: CordonError | str
    ) -> None:
        reason = f"{type(why).__name__}: {why.message}" if isinstance(why, CordonError) else why
        if handle.settings.middleware_policy == "fail-closed":
            err = MiddlewareFailed(plugin=handle.id, middleware=name, phase=phase, reason=reason)
            if isinstance(why, CordonError):
                raise err from why
            raise err
        log.error(
            "middleware.skipped", plugin=handle.id, middleware=name, phase=phase, reason=reason
        )
