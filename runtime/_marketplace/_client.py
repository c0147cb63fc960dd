"""The registry client (async, ``httpx2``): read the catalogue, download verified packages,
publish, yank, rate.

Reads retry on connection errors, timeouts and 5xx with exponential backoff; writes retry only
when nothing reached the server (a connection refused), since a retried publish that did land
would come back as ``version_exists``. A 404 is :class:`PluginNotFound`, any other 4xx
:class:`RegistryRefused` carrying the registry's error code, and a registry that does not
answer (after the retries) :class:`RegistryUnavailable`.

A download is trusted only through the registry's signature: the version's record
``(id, version, sha256, signature)`` must verify with the registry key the user pinned, and
the bytes received must hash to that ``sha256``; either failing is :class:`SignatureInvalid`
and the file is deleted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio

from .._packages._archive import PACKAGE_SUFFIX
from .._settings._config_values import check_plugin_id
from ._errors import PluginNotFound, RegistryRefused, RegistryUnavailable, SignatureInvalid
from ._publish import MAX_PACKAGE_BYTES
from ._trust import verify_version

if TYPE_CHECKING:
    import httpx2

__all__ = ["RegistryClient", "check_registry_url", "parse_request", "resolve"]

#: Seconds to connect, and between bytes of an answer: a registry slower than this is down.
CONNECT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 30.0
#: Tries of a read before giving up (the first plus retries), and the first backoff (doubled
#: at each retry: 0.25, 0.5, 1 s), enough to ride out a server restart.
ATTEMPTS: Final = 4
BACKOFF: Final = 0.25
_CHUNK: Final = 1 << 16
#: A whole download (at most MAX_PACKAGE_BYTES) within this, or the registry is unavailable.
DOWNLOAD_DEADLINE: Final = 300.0
_SAFE_VERSION: Final = re.compile(r"[0-9][0-9A-Za-z.+!_-]{0,63}")


def check_registry_url(url: str) -> str:
    """``url`` without a trailing slash. https, or http to a loopback address only (tokens and
    packages cross it: plain http elsewhere lets anyone on the path read or swap them)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url.rstrip("/")
    if parts.scheme == "http" and host:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return url.rstrip("/")
    raise RegistryRefused(
        f"registry URL {url!r} refused: use https:// (plain http only to a loopback address)",
        reason="insecure_url",
    )


def parse_request(text: str) -> tuple[str, str | None]:
    """``ID``, ``ID@VERSION`` or ``ID<SPEC>`` / ``ID@<SPEC>`` → (id, version or spec)."""
    plugin_id, at, rest = text.partition("@")
    if at:
        return plugin_id, rest or None
    for i, ch in enumerate(text):
        if ch in "<>=!~":
            return text[:i], text[i:]
    return text, None


def resolve(plugin_id: str, versions: list[dict[str, Any]], want: str | None) -> dict[str, Any]:
    """The version to install: an exact version as asked (even yanked: pinning it exactly is
    the way to get one); otherwise the newest not yanked that satisfies the spec."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    if want is not None and want[0].isdigit():
        for v in versions:
            if v["version"] == want and v.get("id", plugin_id) == plugin_id:
                return v
        raise PluginNotFound(plugin=plugin_id, version=want)
    try:
        spec = SpecifierSet(want or "")
    except InvalidSpecifier:
        raise PluginNotFound(
            f"{want!r} is neither a version nor a version specifier", plugin=plugin_id
        ) from None
    best: tuple[Version, dict[str, Any]] | None = None
    for v in versions:
        if v["yanked"] or v.get("id", plugin_id) != plugin_id:
            continue
        try:
            parsed = Version(v["version"])
        except InvalidVersion:
            continue
        if parsed in spec and (best is None or parsed > best[0]):
            best = (parsed, v)
    if best is None:
        raise PluginNotFound(
            f"no version of {plugin_id} that is not yanked" + (f" matches {want}" if want else ""),
            plugin=plugin_id,
            version=want,
        )
    return best[1]


class RegistryClient:
    """``async with RegistryClient(url) as reg: await reg.search("docker")``."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        download_deadline: float = DOWNLOAD_DEADLINE,
    ) -> None:
        self.url = check_registry_url(url)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._download_deadline = download_deadline
        self._http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        import httpx2

        self._http = httpx2.AsyncClient(
            base_url=self.url,
            timeout=httpx2.Timeout(self._read_timeout, connect=self._connect_timeout),
            follow_redirects=False,  # a redirect could leave https, or the pinned registry
            trust_env=False,
            headers={"User-Agent": "cordon-registry-client/1"},
        )
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- transport ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        plugin: str | None = None,
    ) -> httpx2.Response:
        import httpx2

        assert self._http is not None, "use the client inside `async with`"
        delay = self._backoff
        last = ""
        for attempt in range(self._attempts):
            if attempt:
                await anyio.sleep(delay)  # backoff between tries, not synchronisation
                delay *= 2
            try:
                response = await self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx2.ConnectError as exc:
                last = f"cannot connect ({exc})"
                continue  # nothing reached the server: safe to retry any request
            except httpx2.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                if retry:
                    continue
                break
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                if retry:
                    continue
                break
            if response.status_code >= 400:
                self._raise(response, plugin)
            return response
        raise RegistryUnavailable(url=self.url, detail=last)

    def _raise(self, response: httpx2.Response, plugin: str | None) -> None:
        try:
            err = response.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:200]
        if response.status_code == 404 and code == "not_found":
            raise PluginNotFound(message, plugin=plugin)
        raise RegistryRefused(status=response.status_code, reason=code, detail=message)

    async def _get(
        self, path: str, params: Mapping[str, Any] | None = None, plugin: str | None = None
    ) -> Any:
        response = await self._request("GET", path, params=params, plugin=plugin)
        try:
            return response.json()
        except ValueError:
            raise RegistryUnavailable(url=self.url, detail=f"{path}: not JSON") from None

    @staticmethod
    def _page(limit: int, offset: int, **extra: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        params.update({k: v for k, v in extra.items() if v})
        return params

    # -- reads --------------------------------------------------------------------------------

    async def well_known(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._get("/.well-known/cordon-registry.json")
        return data

    async def search(
        self,
        q: str,
        *,
        category: str | None = None,
        sort: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        return dict(
            await self._get("/search", self._page(limit, offset, q=q, category=category, sort=sort))
        )

    async def list_plugins(
        self, *, sort: str | None = None, limit: int = 20, offset: int = 0
    ) -> dict[str, Any]:
        return dict(await self._get("/plugins", self._page(limit, offset, sort=sort)))

    async def popular(self, limit: int = 10) -> dict[str, Any]:
        return dict(await self._get("/popular", {"limit": limit}))

    async def by_category(self, name: str, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        return dict(await self._get(f"/category/{_seg(name)}", self._page(limit, offset)))

    async def categories(self) -> list[dict[str, Any]]:
        return list((await self._get("/categories"))["items"])

    async def get(self, plugin_id: str) -> dict[str, Any]:
        return dict(await self._get(f"/plugins/{_seg(plugin_id)}", plugin=plugin_id))

    async def versions(self, plugin_id: str) -> list[dict[str, Any]]:
        data = await self._get(f"/plugins/{_seg(plugin_id)}/versions", plugin=plugin_id)
        return list(data["items"])

    async def download(self, info: Mapping[str, Any], dest_dir: Path, *, key: str) -> Path:
        """Download the version ``info`` (from :meth:`versions`) into ``dest_dir``, checking
        the registry's signature with ``key`` first and the bytes' sha256 as they arrive."""
        import httpx2

        plugin_id, version = str(info["id"]), str(info["version"])
        sha, size = str(info["sha256"]), int(info["size"])
        where = f"{self.url}/plugins/{plugin_id}/{version}"
        # The id and version name a file here: a registry (even one whose key is pinned) does
        # not get to choose a path with them.
        if check_plugin_id(plugin_id) is not None or not _SAFE_VERSION.fullmatch(version):
            raise RegistryRefused(
                f"the registry answered with an unusable id or version: {plugin_id[:80]!r} "
                f"{version[:80]!r}",
                reason="bad_answer",
            )
        verify_version(key, plugin_id, version, sha, str(info["signature"]), where=where)
        if size > MAX_PACKAGE_BYTES:
            raise SignatureInvalid(
                f"{where}: declared size {size} over {MAX_PACKAGE_BYTES}",
                path=where,
                reason="too large",
            )
        target = dest_dir / f"{plugin_id}-{version}{PACKAGE_SUFFIX}"
        path = f"/plugins/{_seg(plugin_id)}/{_seg(version)}/download"
        try:
            # A whole-download deadline: the read timeout alone lets a server drip one byte
            # per timeout forever.
            with anyio.fail_after(self._download_deadline):
                received, digest = await self._stream_to(path, target, size, plugin_id)
        except TimeoutError:
            await anyio.Path(target).unlink(missing_ok=True)
            raise RegistryUnavailable(
                url=self.url, detail=f"download not finished within {self._download_deadline:g} s"
            ) from None
        except httpx2.TransportError as exc:
            await anyio.Path(target).unlink(missing_ok=True)
            raise RegistryUnavailable(url=self.url, detail=f"download: {exc}") from None
        except BaseException:
            target.unlink(missing_ok=True)  # also on cancellation: no await here
            raise
        if received != size or digest != sha:
            await anyio.Path(target).unlink(missing_ok=True)
            raise SignatureInvalid(
                f"{where}: the downloaded bytes do not match the sha256 the registry signed "
                "(tampered in storage or on the way)",
                path=where,
                reason="hash mismatch",
            )
        return target

    async def _stream_to(
        self, path: str, target: Path, size: int, plugin_id: str
    ) -> tuple[int, str]:
        """Write the answer to ``path`` into ``target``: (bytes received, their sha256),
        stopping one chunk past ``size`` (the caller refuses any count but ``size``)."""
        assert self._http is not None, "use the client inside `async with`"
        h = hashlib.sha256()
        received = 0
        async with self._http.stream("GET", path) as response:
            if response.status_code >= 400:
                await response.aread()
                self._raise(response, plugin_id)
            async with await anyio.open_file(target, "wb") as out:
                async for chunk in response.aiter_bytes(_CHUNK):
                    received += len(chunk)
                    if received > size:
                        break  # more than the signed size: refused by the caller
                    h.update(chunk)
                    await out.write(chunk)
        return received, h.hexdigest()

    # -- writes -------------------------------------------------------------------------------

    async def publish(
        self, package: Path, token: str, *, category: str = "other", repository: str = ""
    ) -> dict[str, Any]:
        data = await anyio.Path(package).read_bytes()
        params = {"category": category}
        if repository:
            params["repository"] = repository
        response = await self._request(
            "POST",
            "/plugins",
            params=params,
            content=data,
            headers={
                **_auth(token),
                "Content-Type": "application/octet-stream",
                "X-Cordon-Sha256": hashlib.sha256(data).hexdigest(),
            },
            retry=False,
        )
        return dict(response.json())

    async def yank(self, plugin_id: str, version: str, reason: str, token: str) -> None:
        await self._request(
            "POST",
            f"/plugins/{_seg(plugin_id)}/{_seg(version)}/yank",
            content=json.dumps({"reason": reason}).encode(),
            headers={**_auth(token), "Content-Type": "application/json"},
            retry=False,
            plugin=plugin_id,
        )

    async def rate(self, plugin_id: str, stars: int, token: str) -> dict[str, Any]:
        response = await self._request(
            "POST",
            f"/plugins/{_seg(plugin_id)}/ratings",
            content=json.dumps({"stars": stars}).encode(),
            headers={**_auth(token), "Content-Type": "application/json"},
            retry=False,
            plugin=plugin_id,
        )
        return dict(response.json())


def _auth(token: str) -> dict[str, str]:
    # No token, no header (an empty "Bearer " is not a header value): the server says 401.
    return {"Authorization": f"Bearer {token}"} if token else {}


def _seg(part: str) -> str:
    """One path segment, percent-encoded (the server checks it; this keeps it one segment)."""
    return urllib.parse.quote(part, safe="")
