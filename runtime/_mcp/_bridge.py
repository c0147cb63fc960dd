"""The bridge's MCP handlers: ``tools/list`` and ``tools/call`` answered through a running
:class:`~cordon.runtime.Runtime`, on the official SDK's low-level ``Server``.

- **A call is a routed call** (:meth:`Runtime.invoke`): middleware, the operator's grants and
  limits, and the plugin's ``call-timeout`` all hold; the MCP client cannot ask for a longer
  timeout.
- **Results.** A string is one text block; anything else is its JSON as text, and a dict (on
  the 2026-07-28 revision, a list too) is also ``structuredContent``.
- **Errors.** What went wrong *in the call* — the plugin raised, its arguments failed the
  signature's check, a crash, a timeout, a quota, a plugin disabled or behind its open
  breaker — is a tool result with ``isError`` and ``<ErrorType>: <message>`` (the message
  already redacted where the worker's answer was decoded), so the model can read it, as the
  spec asks (tool execution errors, SEP-1303); the supervisor restarts a crashed worker as
  usual and the bridge keeps serving. A tool that does not exist is a JSON-RPC error
  (``INVALID_PARAMS``, "Unknown tool: ..."), as the spec's example has it.
- **Progress.** When the request carries a progress token, the plugin's ``ctx.progress``
  reports become ``notifications/progress``: coalesced (a plugin reporting faster than the
  client reads costs one pending value, never a queue), only increasing values (the spec
  requires it; others are dropped), the message redacted and capped, the last one sent before
  the result.
- **Cancellation.** ``notifications/cancelled`` cancels the handler's scope (the SDK's
  dispatcher does it), which cancels the routed call: the worker gets ``$/cancel`` and the
  plugin's task sees ``CancelledError``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Final

import anyio
import mcp_types as types
import msgspec
import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from cordon.protocol import CordonError, MethodNotFound, PluginUnavailable, ProgressParams

from .._core._runtime import Runtime
from .._hostapi._redact import Redactor
from .._platform._versions import CORDON_VERSION
from ._tools import BridgedTool, bridged_tools

__all__ = ["Bridge"]

log = structlog.get_logger("cordon")

#: A progress message is the plugin's text shown to a person: capped like a log line's event.
MAX_PROGRESS_MESSAGE: Final = 512
#: What the bridge says it is, in ``initialize`` / ``server/discover`` answers.
SERVER_NAME: Final = "cordon"
INSTRUCTIONS: Final = (
    "Tools of sandboxed cordon plugins, named <plugin>.<tool>. Each call runs in the plugin's "
    "own locked-down worker process under the operator's grants, limits and call timeout."
)


class _Progress:
    """One call's progress, from the worker's reader (synchronous) to the client (async)."""

    def __init__(self, session: ServerSession, redactor: Redactor) -> None:
        self._session = session
        self._redactor = redactor
        self._latest: ProgressParams | None = None
        self._wake = anyio.Event()
        self._sent = -math.inf
        self._closing = False

    def report(self, progress: ProgressParams) -> None:
        # Called by the channel reader for each $/progress: keep only the newest value, so a
        # plugin flooding reports costs the host nothing that grows.
        self._latest = progress
        self._wake.set()

    async def forward(self) -> None:
        """Send reports as they come, until :meth:`close`; then send the last one and
        return. Never cancelled from inside: a notification cut mid-send would be lost."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush()
            if self._closing:
                return

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def _flush(self) -> None:
        p, self._latest = self._latest, None
        # NaN compares false: dropped like a value that does not increase.
        if p is None or not (math.isfinite(p.progress) and p.progress > self._sent):
            return
        self._sent = p.progress
        total = p.total if p.total is not None and math.isfinite(p.total) else None
        message = (
            self._redactor.clean_message(p.message, MAX_PROGRESS_MESSAGE)
            if p.message is not None
            else None
        )
        await self._session.report_progress(p.progress, total, message)


def _progress_token(ctx: ServerRequestContext[Any, Any]) -> object:
    # The SDK validates `_meta` into a TypedDict keyed by field name (the wire's
    # `progressToken` is `progress_token` there); either spelling is accepted.
    meta: Mapping[str, Any] | None = ctx.meta
    if not meta:
        return None
    return meta.get("progress_token", meta.get("progressToken"))


def _modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


class Bridge:
    """MCP's view of a running runtime: ``plugins`` (``None``: all loaded) are exposed."""

    def __init__(
        self, rt: Runtime, plugins: Collection[str] | None = None, separator: str = "."
    ) -> None:
        self.rt = rt
        self.plugins = frozenset(plugins) if plugins is not None else None
        self.separator = separator
        assert rt.log_sink is not None, "the runtime is not running"
        self._redactor = rt.log_sink.redactor
        #: name → tool, as last listed: a call finds its tool without walking every
        #: contribution (a plugin with thousands of tools must not slow every call down).
        self._by_name: dict[str, BridgedTool] = {}

    def check_plugins(self) -> None:
        """Every plugin ``--plugins`` names must be loaded: a typo would serve nothing."""
        for pid in sorted(self.plugins or ()):
            if pid not in self.rt.plugins:
                loaded = ", ".join(sorted(self.rt.plugins)) or "none"
                raise PluginUnavailable(
                    f"--plugins names {pid!r}, which is not loaded (loaded: {loaded})",
                    plugin=pid,
                    reason="not-loaded",
                )

    async def start_workers(self) -> None:
        """Start the exposed plugins' workers, all at once, so ``tools/list`` has every tool
        with its schema from the signature (a manifest may declare fewer, without schemas).
        A plugin that cannot start is logged and listed from its manifest; calls to it then
        answer with the error."""

        async def start(pid: str) -> None:
            try:
                await self.rt.get(pid).start()
            except CordonError as exc:
                log.error(
                    "mcp.plugin_not_started",
                    plugin=pid,
                    error=type(exc).__name__,
                    reason=exc.message,
                )

        async with anyio.create_task_group() as tg:
            for pid, handle in sorted(self.rt.plugins.items()):
                if (self.plugins is None or pid in self.plugins) and handle.settings.enabled:
                    tg.start_soon(start, pid)

    def tools(self) -> list[BridgedTool]:
        tools = bridged_tools(self.rt, self.plugins, self.separator)
        self._by_name = {t.name: t for t in tools}
        return tools

    def tool(self, name: str) -> BridgedTool | None:
        """The tool called ``name``; the list is walked again only for a name not seen in
        the last one (a reload may have added it). A tool gone since answers MethodNotFound
        from its worker, which the caller gets as an unknown tool."""
        found = self._by_name.get(name)
        if found is None:
            self.tools()
            found = self._by_name.get(name)
        return found

    def server(self) -> Server[Any]:
        return Server(
            SERVER_NAME,
            version=CORDON_VERSION,
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            # 2026-07-28 over HTTP checks Mcp-Param-* headers against the tool's schema;
            # without this lookup the SDK would run the whole tools/list for every call.
            get_tool_input_schema=self._input_schema,
        )

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.tool(name)
        return dict(tool.input_schema) if tool is not None else None

    # -- handlers -------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        modern = _modern(ctx)
        return types.ListToolsResult(tools=[_mcp_tool(t, modern) for t in self.tools()])

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self.tool(params.name)
        if tool is None:
            raise _unknown_tool(params.name)
        arguments = params.arguments or {}
        try:
            if _progress_token(ctx) is None:
                result = await self.rt.invoke(tool.target, arguments, kind="tool")
            else:
                result = await self._call_with_progress(ctx, tool, arguments)
        except MethodNotFound:
            # Listed, but the worker no longer has it (reloaded without it).
            raise _unknown_tool(params.name) from None
        except CordonError as exc:
            log.info("mcp.call_failed", tool=tool.target, error=type(exc).__name__)
            return _error_result(exc)
        return _result(result, _modern(ctx))

    async def _call_with_progress(
        self, ctx: ServerRequestContext[Any, Any], tool: BridgedTool, arguments: dict[str, Any]
    ) -> Any:
        progress = _Progress(ctx.session, self._redactor)
        outcome: Any = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.forward)
            try:
                outcome = await self.rt.invoke(
                    tool.target, arguments, kind="tool", on_progress=progress.report
                )
            except CordonError as exc:
                # Raised out of a task group it would come wrapped in an ExceptionGroup.
                outcome = exc
            finally:
                # The task group waits for the forwarder's last report: it goes out
                # before the result does.
                progress.close()
        if isinstance(outcome, CordonError):
            raise outcome
        return outcome


def _unknown_tool(name: str) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name!r}", data=name)


def _mcp_tool(tool: BridgedTool, modern: bool) -> types.Tool:
    output: dict[str, Any] | None = None
    kind = tool.result_schema.get("type")
    # Handshake revisions restrict outputSchema (and structuredContent) to objects.
    if kind == "object" or (kind == "array" and modern):
        output = dict(tool.result_schema)
    annotations = (
        types.ToolAnnotations.model_validate(dict(tool.annotations)) if tool.annotations else None
    )
    return types.Tool(
        name=tool.name,
        title=f"{tool.plugin}: {tool.tool}",
        description=tool.description or None,
        input_schema=dict(tool.input_schema),
        output_schema=output,
        annotations=annotations,
    )


def _result(value: Any, modern: bool) -> types.CallToolResult:
    if isinstance(value, str):
        return types.CallToolResult(content=[types.TextContent(text=value)])
    text = msgspec.json.encode(value).decode()
    structured = value if isinstance(value, dict) or (modern and isinstance(value, list)) else None
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=structured
    )


def _error_result(exc: CordonError) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=f"{type(exc).__name__}: {exc.message}")], is_error=True
    )
