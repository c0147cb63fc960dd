"""The registry's HTTP API (Starlette, JSON everywhere, errors as
``{"error": {"code", "message", "status"}}``).

Every path part is checked (:func:`check_id`, :func:`check_version`) before it is used, so
``..``, encoded slashes or NUL bytes in an id are a 400, never a path. Bodies are read with a
cap as they arrive (a declared ``Content-Length`` over it is refused before reading), and the
blocking work (SQLite, hashing, ``open_package``) runs in worker threads so one slow publish
never stalls the event loop for the others.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from ._pages import catalogue_routes
from ._publish import MAX_PACKAGE_BYTES, ApiError, Registry, check_category, check_id, check_version

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["API_VERSION", "create_app"]

API_VERSION: Final = 1
#: JSON bodies (a rating, a yank reason) are tiny.
MAX_JSON_BYTES: Final = 16 * 1024
#: A whole upload (at most the package limit) within this: generous for a slow uplink.
UPLOAD_DEADLINE: Final = 300.0
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
#: An offset past this is a crawler, not a person paging: refused rather than scanned.
MAX_OFFSET: Final = 100_000


def _json(data: Any, status: int = 200) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message, "status": status}}, status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} is a whole number from {low} to {high}")
    return int(raw)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    count = row["rating_count"]
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "version": row["latest"],
        "author": row["author"],
        "category": row["category"],
        "keywords": json.loads(row["keywords"]),
        "permissions": json.loads(row["permissions"]),
        "downloads": row["downloads"],
        "rating": round(row["rating_sum"] / count, 2) if count else None,
        "rating_count": count,
        "updated": row["updated"],
    }


def _version_info(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["plugin_id"],
        "version": row["version"],
        "sha256": row["sha256"],
        "size": row["size"],
        "signature": row["signature"],
        "publisher_signer": row["publisher_signer"],
        "manifest": row["manifest"],
        "permissions": json.loads(row["permissions"]),
        "dependencies": json.loads(row["dependencies"]),
        "published": row["published"],
        "yanked": bool(row["yanked"]),
        "yank_reason": row["yank_reason"],
        "download": f"/plugins/{row['plugin_id']}/{row['version']}/download",
    }


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "too_large", f"the body may be at most {limit} bytes")


async def _json_body(request: Request) -> dict[str, Any]:
    _declared_length(request, MAX_JSON_BYTES)
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"the body may be at most {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body is a JSON object")
    return body


def create_app(data_dir: Path, *, max_package_bytes: int = MAX_PACKAGE_BYTES) -> Starlette:
    """The registry's ASGI app over ``data_dir`` (created, with its key, if new)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse
    from starlette.routing import Route

    reg = Registry(data_dir)

    def api(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.code, exc.message)

        return wrapped

    def run(func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(func, *args)

    async def well_known(request: Request) -> Response:
        return _json({"api": API_VERSION, "key": reg.public_key, "name": "cordon-registry"})

    async def listing(
        request: Request,
        *,
        q: str | None = None,
        category: str | None = None,
        default_sort: str | None = "downloads",
    ) -> Response:
        sort = request.query_params.get("sort") or default_sort
        if sort is not None and sort not in ("downloads", "rating", "updated", "name", "relevance"):
            raise ApiError(
                400, "invalid_parameter", "sort is downloads, rating, updated, name or relevance"
            )
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
        rows, total = await run(
            lambda: reg.db.listing(q=q, category=category, sort=sort, limit=limit, offset=offset)
        )
        return _json(
            {"items": [_summary(r) for r in rows], "total": total, "limit": limit, "offset": offset}
        )

    async def plugins(request: Request) -> Response:
        category = request.query_params.get("category")
        return await listing(request, category=check_category(category) if category else None)

    async def search(request: Request) -> Response:
        q = request.query_params.get("q", "")
        if len(q) > 200:
            raise ApiError(400, "invalid_parameter", "q is at most 200 characters")
        category = request.query_params.get("category")
        return await listing(
            request,
            q=q,
            category=check_category(category) if category else None,
            default_sort=None if q else "downloads",
        )

    async def popular(request: Request) -> Response:
        return await listing(request, default_sort="downloads")

    async def category(request: Request) -> Response:
        name = check_category(request.path_params["name"])
        return await listing(request, category=name)

    async def categories(request: Request) -> Response:
        cats = await run(reg.db.categories)
        return _json({"items": [{"name": n, "plugins": c} for n, c in cats]})

    async def plugin(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        row = await run(reg.db.plugin, plugin_id)
        if row is None:
            raise ApiError(404, "not_found", f"no plugin {plugin_id}")
        versions = await run(reg.db.versions, plugin_id)
        latest = next((v for v in versions if v["version"] == row["latest"]), None)
        return _json(
            {
                **_summary(row),
                "readme": row["readme"],
                "repository": row["repository"],
                "homepage": row["homepage"],
                "created": row["created"],
                "dependencies": json.loads(latest["dependencies"]) if latest else [],
                "versions": [
                    {
                        "version": v["version"],
                        "published": v["published"],
                        "yanked": bool(v["yanked"]),
                        "yank_reason": v["yank_reason"],
                    }
                    for v in versions
                ],
            }
        )

    async def versions(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        if await run(reg.db.plugin, plugin_id) is None:
            raise ApiError(404, "not_found", f"no plugin {plugin_id}")
        rows = await run(reg.db.versions, plugin_id)
        return _json({"id": plugin_id, "items": [_version_info(r) for r in rows]})

    async def one_version(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        version = check_version(request.path_params["version"])
        row = await run(reg.db.version, plugin_id, version)
        if row is None:
            raise ApiError(404, "not_found", f"no version {plugin_id} {version}")
        return _json(_version_info(row))

    async def download(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        version = check_version(request.path_params["version"])
        row = await run(reg.db.version, plugin_id, version)
        path = reg.package_path(plugin_id, version)
        if row is None or not path.is_file():
            raise ApiError(404, "not_found", f"no version {plugin_id} {version}")
        client = request.client.host if request.client is not None else "unknown"
        await run(reg.count_download, plugin_id, client)
        return FileResponse(
            path,
            media_type="application/octet-stream",
            headers={"X-Cordon-Sha256": row["sha256"]},
        )

    async def publish(request: Request) -> Response:
        _declared_length(request, max_package_bytes)
        token = _token(request)
        # Refuse a bad token before receiving megabytes from whoever holds it.
        await run(reg.authenticate, token)
        category = request.query_params.get("category", "other")
        repository = request.query_params.get("repository", "")[:500]
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".cordon", dir=reg.incoming)
        upload = Path(name)
        try:
            received = 0
            # A whole-upload deadline: a client dripping bytes holds a connection and a temp
            # file; it gets UPLOAD_DEADLINE, not forever.
            with anyio.move_on_after(UPLOAD_DEADLINE) as upload_scope:
                async with anyio.wrap_file(os.fdopen(fd, "wb")) as out:
                    async for chunk in request.stream():
                        received += len(chunk)
                        # Counted as it arrives: a missing or lying Content-Length changes
                        # nothing.
                        if received > max_package_bytes:
                            raise ApiError(
                                413,
                                "too_large",
                                f"a package may be at most {max_package_bytes} bytes",
                            )
                        await out.write(chunk)
            if upload_scope.cancelled_caught:
                raise ApiError(408, "timeout", f"the upload took over {UPLOAD_DEADLINE:g} s")
            result = await run(
                lambda: reg.publish(
                    upload,
                    token=token,
                    declared_sha256=request.headers.get("x-cordon-sha256"),
                    category=category,
                    repository=repository,
                )
            )
        finally:
            await anyio.Path(upload).unlink(missing_ok=True)
        return _json(result, 201)

    async def yank(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        version = check_version(request.path_params["version"])
        body = await _json_body(request)
        reason = body.get("reason")
        if not isinstance(reason, str):
            raise ApiError(400, "reason_required", "a yank needs a reason (a string)")
        await run(reg.yank, plugin_id, version, _token(request), reason)
        return _json({"id": plugin_id, "version": version, "yanked": True, "reason": reason})

    async def rate(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        body = await _json_body(request)
        total, count = await run(reg.rate, plugin_id, _token(request), body.get("stars"))
        return _json({"id": plugin_id, "rating": round(total / count, 2), "rating_count": count})

    async def disconnected(request: Request, exc: Exception) -> Response:
        # The client went away mid-body: nothing to answer, and nothing for the operator's log.
        return _error(400, "client_disconnected", "the request body was cut off")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return _error(status, code, str(detail))

    async def internal(request: Request, exc: Exception) -> Response:
        # The operator's log gets the traceback; the client only that it was our fault.
        traceback.print_exception(exc, file=sys.stderr)
        return _error(500, "internal", "internal error")

    routes = [
        Route("/.well-known/cordon-registry.json", api(well_known)),
        Route("/plugins", api(plugins), methods=["GET"]),
        Route("/plugins", api(publish), methods=["POST"]),
        Route("/search", api(search)),
        Route("/popular", api(popular)),
        Route("/categories", api(categories)),
        Route("/category/{name}", api(category)),
        Route("/plugins/{id}", api(plugin)),
        Route("/plugins/{id}/versions", api(versions)),
        Route("/plugins/{id}/ratings", api(rate), methods=["POST"]),
        Route("/plugins/{id}/{version}", api(one_version)),
        Route("/plugins/{id}/{version}/download", api(download)),
        Route("/plugins/{id}/{version}/yank", api(yank), methods=["POST"]),
        # The HTML catalogue a person browses (_pages.py).
        *catalogue_routes(reg),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            ClientDisconnect: disconnected,
            Exception: internal,
        },
    )
    app.state.registry = reg
    return app
