"""ctx.http from a plugin: plain requests, secrets in headers, many at once, a sync tool."""

from __future__ import annotations

import asyncio
from typing import Any

from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()


@plugin.tool
async def fetch(
    ctx: Context,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    json_body: Any = None,
    timeout: float | None = None,
    secret_header: str | None = None,
    secret: str | None = None,
    secret_prefix: str = "",
) -> dict[str, Any]:
    """One request; with ``secret``, header ``secret_header`` is ``secret_prefix`` + ref."""
    hdrs: dict[str, Any] = dict(headers or {})
    if secret is not None and secret_header is not None:
        hdrs[secret_header] = f"{secret_prefix}{ctx.secret(secret)}"
    r = await ctx.http.request(
        method, url, headers=hdrs, content=body, json=json_body, timeout=timeout
    )
    try:
        parsed: Any = r.json()
    except Exception:
        parsed = None
    return {
        "status": r.status,
        "headers": r.headers.raw(),
        "content_type": r.headers.get("Content-Type"),
        "text": r.text(),
        "json": parsed,
        "url": r.url,
        "size": len(r.content),
    }


@plugin.tool
def fetch_sync(ctx: Context, url: str) -> dict[str, Any]:
    """The same from a plain def tool, through ctx.run."""
    r = ctx.run(ctx.http.get(url))
    return {"status": r.status, "text": r.text()}


@plugin.tool
async def many(ctx: Context, url: str, n: int) -> list[Any]:
    """``n`` requests at once: each one's status, or its error's type and kind."""

    async def one() -> Any:
        try:
            return (await ctx.http.get(url)).status
        except CordonError as exc:
            return [type(exc).__name__, getattr(exc, "kind", None)]

    return list(await asyncio.gather(*(one() for _ in range(n))))


@plugin.tool
async def in_sequence(ctx: Context, url: str, n: int) -> list[Any]:
    """``n`` requests one after the other, as fast as they go."""
    out: list[Any] = []
    for _ in range(n):
        try:
            out.append((await ctx.http.get(url)).status)
        except CordonError as exc:
            out.append([type(exc).__name__, getattr(exc, "kind", None)])
    return out


@plugin.tool
async def show_secret(ctx: Context, name: str) -> dict[str, str]:
    """Everything a plugin can learn from a reference by looking at it."""
    ref = ctx.secret(name)
    ctx.log.info("my secret", ref=str(ref), shown=repr(ref))
    print("the secret is", ref)
    return {"str": str(ref), "repr": repr(ref), "format": f"{ref:>5}", "name": ref.name}


@plugin.tool
async def secret_in_error(ctx: Context, name: str, url: str) -> None:
    """Send the secret where it may not go, and let the refusal propagate."""
    await ctx.http.get(url, headers={"Authorization": f"Bearer {ctx.secret(name)}"})


@plugin.tool
async def try_fetch(ctx: Context, url: str, method: str = "GET") -> dict[str, Any]:
    """A request whose error the plugin catches: what the plugin itself sees of a failure
    (an error a tool lets escape reaches the caller as the plugin's own claim)."""
    try:
        r = await ctx.http.request(method, url)
    except CordonError as exc:
        return {"type": type(exc).__name__, "message": exc.message, **exc.fields()}
    return {"status": r.status}


@plugin.tool
async def raw(ctx: Context, params: Any) -> Any:
    """Skip ctx.http: the request exactly as a hostile plugin would write it."""
    return await ctx.request("host/http.request", params)
