"""The MCP bridge (``cordon mcp serve``): every tool of the configured plugins as an MCP tool,
served by the official ``mcp`` SDK over stdio or streamable HTTP.

:mod:`._tools` maps contributions to MCP tools (names, schemas, annotations), :mod:`._bridge`
answers ``tools/list`` and ``tools/call`` (results, errors, progress, cancellation) through
the runtime, :mod:`._serve` runs the transports. The sandbox is the runtime's: an MCP client
reaches a plugin only through a routed call, with the operator's grants, limits and call
timeouts, exactly as any other caller. Imports ``_core`` and below, never ``_cli``; the
``mcp`` SDK is imported only here (the ``cordon[mcp]`` extra), so plain ``cordon`` never loads it.
"""
