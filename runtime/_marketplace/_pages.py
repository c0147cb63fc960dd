"""The catalogue a person browses: server-rendered HTML over the registry's database.

``GET /`` lists and searches (``q``, ``category``, ``sort``, ``page``), ``GET /p/{id}`` is a
plugin's page (its declared permissions first, then versions with the yanked ones marked,
downloads, rating, links, the readme), ``GET /assets/catalogue.css`` the one stylesheet.

No page needs a script, so the Content-Security-Policy allows none: even if some text slipped
past the escaping in :mod:`._html`, a browser would refuse to run it, load images from
elsewhere, or post the search form to another site. Every value from a publisher goes through
:func:`._html.esc`; the markup in this module is the only markup on a page.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import anyio.to_thread

from ._html import esc, render_readme, safe_url
from ._publish import ApiError, Registry, check_category, check_id

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["SECURITY_HEADERS", "catalogue_routes"]

#: Plugins on one page of results.
PAGE_SIZE: Final = 20
#: The API's own bound on offsets (a crawler, not a person, pages this far).
MAX_PAGE: Final = 100_000 // PAGE_SIZE
#: The API's bound on a query's length.
MAX_QUERY_CHARS: Final = 200
PAGE_SORTS: Final = ("relevance", "downloads", "rating", "updated", "name")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The stylesheet changes only with the code: browsers may keep it for an hour.
_CSS_MAX_AGE: Final = 3600
_CSS: Final = """\
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d232b;
background:#f5f6f8}
header{background:#1f3a5f;color:#fff;padding:.8rem 1.5rem}
header a{color:#fff;text-decoration:none;font-weight:600;font-size:1.2rem}
main{max-width:60rem;margin:0 auto;padding:1rem 1.5rem 3rem}
a{color:#1f5fa8}
form.search{display:flex;flex-wrap:wrap;gap:.5rem;margin:1rem 0}
form.search input[type=search]{flex:1 1 18rem;padding:.5rem;font-size:1rem;
border:1px solid #9aa5b1;border-radius:4px}
form.search select,form.search button{padding:.5rem;font-size:1rem;border-radius:4px;
border:1px solid #9aa5b1;background:#fff}
form.search button{background:#1f5fa8;color:#fff;border-color:#1f5fa8}
ul.results{list-style:none;padding:0}
ul.results li{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:.8rem 1rem;
margin:.6rem 0}
.meta{color:#56606b;font-size:.9rem}
.perm{display:inline-block;background:#fff4d6;border:1px solid #e0b84c;color:#6b4e00;
border-radius:3px;padding:0 .4rem;margin:.1rem .2rem .1rem 0;font:.85rem ui-monospace,monospace}
.perms{background:#fffaf0;border:2px solid #e0b84c;border-radius:6px;padding:.6rem 1rem;
margin:1rem 0}
.perms h2{margin:.2rem 0 .4rem;font-size:1.1rem}
.yanked{color:#a11;font-weight:600}
.kw{display:inline-block;background:#e8eef6;border-radius:3px;padding:0 .4rem;margin:.1rem;
font-size:.85rem}
.readme{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:.5rem 1.2rem;
overflow-wrap:anywhere}
pre{background:#f0f2f5;padding:.6rem;overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}
code{font-family:ui-monospace,monospace;font-size:.9rem}
table{border-collapse:collapse}td,th{padding:.2rem .8rem .2rem 0;text-align:left}
.pager{display:flex;gap:1rem;align-items:center;margin-top:1rem}
.note{color:#56606b;font-style:italic}
h1{overflow-wrap:anywhere}
"""


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _rating(row: dict[str, Any]) -> str:
    count = int(row["rating_count"])
    if not count:
        return "not rated yet"
    return f"{row['rating_sum'] / count:.1f} / 5 ({count} rating{'s' if count != 1 else ''})"


def _permissions(perms: list[str]) -> str:
    if not perms:
        return '<span class="meta">no permissions</span>'
    return "".join(f'<span class="perm">{esc(p)}</span>' for p in perms)


def _page(title: str, body: str, status: int = 200) -> Response:
    from starlette.responses import HTMLResponse

    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · cordon registry</title>"
        '<link rel="stylesheet" href="/assets/catalogue.css"></head>'
        '<body><header><a href="/">cordon registry</a></header>'
        f"<main>{body}</main></body></html>\n"
    )
    return HTMLResponse(doc, status_code=status, headers=SECURITY_HEADERS)


def _error_page(status: int, message: str) -> Response:
    title = "Not found" if status == 404 else "Bad request" if status < 500 else "Error"
    body = f'<h1>{esc(title)}</h1><p>{esc(message)}</p><p><a href="/">Browse the catalogue</a></p>'
    return _page(title, body, status)


def _search_form(q: str, category: str, sort: str, categories: list[tuple[str, int]]) -> str:
    cats = ['<option value="">every category</option>'] + [
        f'<option value="{esc(name)}"{" selected" if name == category else ""}>'
        f"{esc(name)} ({count})</option>"
        for name, count in categories
    ]
    sorts = [
        f'<option value="{s}"{" selected" if s == sort else ""}>sort by {s}</option>'
        for s in PAGE_SORTS
    ]
    return (
        '<form class="search" method="get" action="/" role="search">'
        f'<input type="search" name="q" value="{esc(q)}" maxlength="{MAX_QUERY_CHARS}" '
        'placeholder="Search plugins" aria-label="Search plugins">'
        f'<select name="category" aria-label="Category">{"".join(cats)}</select>'
        f'<select name="sort" aria-label="Sort">{"".join(sorts)}</select>'
        '<button type="submit">Search</button></form>'
    )


def _result(row: dict[str, Any]) -> str:
    pid = row["id"]
    return (
        f'<li><a href="/p/{quote(pid)}"><strong>{esc(row["name"])}</strong></a> '
        f'<span class="meta">{esc(pid)} {esc(row["latest"])}'
        f"{' by ' + esc(row['author']) if row['author'] else ''}</span>"
        f"<div>{esc(row['description'])}</div>"
        f"<div>{_permissions(json.loads(row['permissions']))}</div>"
        f'<div class="meta">{int(row["downloads"]):,} downloads · {_rating(row)} · '
        f"{esc(row['category'])} · updated {_date(row['updated'])}</div></li>"
    )


def _listing_page(
    rows: list[dict[str, Any]],
    total: int,
    *,
    q: str,
    category: str,
    sort: str,
    page: int,
    categories: list[tuple[str, int]],
) -> Response:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    heading = f"Plugins matching “{esc(q)}”" if q else "Plugins"
    found = f"{total:,} plugin{'s' if total != 1 else ''}"
    items = "".join(_result(r) for r in rows)
    results = f'<ul class="results">{items}</ul>' if rows else '<p class="note">Nothing found.</p>'

    def link(to: int, label: str) -> str:
        params = {k: v for k, v in (("q", q), ("category", category), ("sort", sort)) if v}
        return f'<a href="/?{esc(urlencode({**params, "page": to}))}">{label}</a>'

    pager = [link(page - 1, "← previous") if page > 1 else ""]
    pager.append(f"<span>page {page} of {pages}</span>")
    pager.append(link(page + 1, "next →") if page < pages else "")
    body = (
        f"<h1>{heading}</h1>{_search_form(q, category, sort, categories)}"
        f'<p class="meta">{found}</p>{results}'
        f'<nav class="pager" aria-label="pages">{"".join(pager)}</nav>'
    )
    return _page("Search" if q else "Plugins", body)


def _plugin_page(row: dict[str, Any], versions: list[dict[str, Any]]) -> Response:
    pid = row["id"]
    perms: list[str] = json.loads(row["permissions"])
    keywords: list[str] = json.loads(row["keywords"])
    latest = row["latest"]
    if perms:
        perm_list = "".join(f'<li><span class="perm">{esc(p)}</span></li>' for p in perms)
        perm_html = f"<ul>{perm_list}</ul>"
    else:
        perm_html = "<p>None: it runs with no access beyond its own sandbox.</p>"
    rows = []
    for v in versions:
        state = (
            f'<span class="yanked">yanked</span>: {esc(v["yank_reason"])}'
            if v["yanked"]
            else ("latest" if v["version"] == latest else "")
        )
        rows.append(
            f"<tr><td><code>{esc(v['version'])}</code></td><td>{_date(v['published'])}</td>"
            f"<td>{_permissions(json.loads(v['permissions']))}</td><td>{state}</td></tr>"
        )
    links = []
    for label, url in (("Homepage", row["homepage"]), ("Repository", row["repository"])):
        safe = safe_url(url)
        if safe is not None:
            links.append(
                f'<li>{label}: <a href="{esc(safe)}" rel="nofollow noopener noreferrer ugc">'
                f"{esc(safe)}</a></li>"
            )
    kw = "".join(f'<span class="kw">{esc(k)}</span>' for k in keywords)
    install = (
        f"<pre><code>cordon plugin install {esc(pid)}</code></pre>"
        if latest
        else '<p class="yanked">Every version is yanked: only an exact pin installs one.</p>'
    )
    readme = row["readme"]
    body = (
        f"<h1>{esc(row['name'])}</h1>"
        f'<p class="meta"><code>{esc(pid)}</code> {esc(latest)}'
        f"{' by ' + esc(row['author']) if row['author'] else ''} · {esc(row['category'])}</p>"
        f"<p>{esc(row['description'])}</p>"
        f'<section class="perms"><h2>Permissions it asks for</h2>{perm_html}</section>'
        f"{install}"
        f'<p class="meta">{int(row["downloads"]):,} downloads · {_rating(row)} · '
        f"updated {_date(row['updated'])}</p>"
        f"{'<p>' + kw + '</p>' if kw else ''}"
        f"{'<ul>' + ''.join(links) + '</ul>' if links else ''}"
        "<h2>Versions</h2><table><thead><tr><th>version</th><th>published</th>"
        f"<th>permissions</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<h2>Readme</h2>"
        + (
            f'<div class="readme">{render_readme(readme)}</div>'
            if readme.strip()
            else '<p class="note">No readme.</p>'
        )
    )
    return _page(str(row["name"]), body)


def catalogue_routes(reg: Registry) -> list[Route]:
    """The catalogue's routes over ``reg`` (mounted next to the JSON API by ``create_app``)."""
    from starlette.responses import Response as PlainResponse
    from starlette.routing import Route

    def run(func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(func, *args)

    def html_errors(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return _error_page(exc.status, exc.message)

        return wrapped

    async def index(request: Request) -> Response:
        params = request.query_params
        q = params.get("q", "").strip()
        if len(q) > MAX_QUERY_CHARS:
            raise ApiError(
                400, "invalid_parameter", f"a search is at most {MAX_QUERY_CHARS} characters"
            )
        category = params.get("category", "")
        if category:
            check_category(category)
        sort = params.get("sort", "") or ("relevance" if q else "downloads")
        if sort not in PAGE_SORTS:
            raise ApiError(400, "invalid_parameter", f"sort is one of {', '.join(PAGE_SORTS)}")
        raw_page = params.get("page", "1")
        if not raw_page.isdigit() or not 1 <= int(raw_page) <= MAX_PAGE:
            raise ApiError(400, "invalid_parameter", f"page is a whole number from 1 to {MAX_PAGE}")
        page = int(raw_page)
        rows, total = await run(
            lambda: reg.db.listing(
                q=q or None,
                category=category or None,
                sort=sort,
                limit=PAGE_SIZE,
                offset=(page - 1) * PAGE_SIZE,
            )
        )
        categories = await run(reg.db.categories)
        return _listing_page(
            rows, total, q=q, category=category, sort=sort, page=page, categories=categories
        )

    async def plugin(request: Request) -> Response:
        plugin_id = check_id(request.path_params["id"])
        row = await run(reg.db.plugin, plugin_id)
        if row is None:
            raise ApiError(404, "not_found", f"There is no plugin {plugin_id!r} in this registry.")
        versions = await run(reg.db.versions, plugin_id)
        return _plugin_page(row, versions)

    async def stylesheet(request: Request) -> Response:
        return PlainResponse(
            _CSS,
            media_type="text/css",
            headers={**SECURITY_HEADERS, "Cache-Control": f"public, max-age={_CSS_MAX_AGE}"},
        )

    return [
        Route("/", html_errors(index), methods=["GET"]),
        # ``path``: an id holding an (encoded) slash still reaches check_id and gets an HTML
        # 400, rather than falling through to the API's JSON 404.
        Route("/p/{id:path}", html_errors(plugin), methods=["GET"]),
        Route("/assets/catalogue.css", stylesheet, methods=["GET"]),
    ]
