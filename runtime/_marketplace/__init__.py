"""The marketplace: a registry service a community can run, its client, and the trust rules
between them.

Rank 3 (a peer of ``_hostapi`` and ``_platform``): imports ``_packages`` (to verify a package
with ``open_package`` and to sign with ``_keys``), ``_settings``, ``_errors`` and
``cordon.protocol``; the CLI imports it. Nothing here is imported by ``import cordon.runtime``:
the server stack and the HTTP client come from the optional extra ``cordon[registry]`` and are
imported inside functions only.

Choices:

- **Starlette** for the app: a thin ASGI toolkit built on anyio (like the rest of cordon), with
  plain request/response objects, so the size limits and JSON errors are written here, in
  view, rather than configured inside a framework's validation layer (Litestar's DI and
  schema machinery would be most of the dependency and little of the use).
- **uvicorn** to serve it: the most deployed ASGI server, pure-Python ``h11`` underneath (no
  compiler needed), and a ``Server`` object that serves sockets we bound ourselves, so
  ``--port 0`` works and the bound address is printed before the first request can arrive.
- **httpx2** for the client: the maintained fork of ``httpx`` the MCP SDK moved to (``httpx``
  has had no release since 2024), anyio-based, with per-phase timeouts and streaming
  downloads, so a size cap is enforced as bytes arrive.

Modules: :mod:`._errors` (the typed errors), :mod:`._trust` (tokens, the registry's signing
key and signed statements, look-alike ids, pinned registry keys), :mod:`._db` (SQLite in WAL
mode, FTS5 search), :mod:`._app` (the ASGI routes), :mod:`._publish` (the publish checks),
:mod:`._serve` (``cordon registry serve``), :mod:`._client` (the async client and the
resolution of ``ID[@VERSION|SPEC]``).
"""
