"""The registry's HTTP API against a real server on a loopback port, driven by the real
client (and raw HTTP where the point is a request the client would never send)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest

from cordon.runtime._marketplace._client import RegistryClient
from cordon.runtime._marketplace._errors import (
    PluginNotFound,
    RegistryRefused,
    RegistryUnavailable,
)
from cordon.runtime._marketplace._trust import verify_version
from tests.marketplace.conftest import package
from tests.marketplace.serving import Server, error_of

pytestmark = pytest.mark.anyio

#: Every wait on the server has a deadline (a hung server fails the test, never hangs it).
DEADLINE = 60.0


async def publish(reg: RegistryClient, path: Path, token: str, **kw: str) -> dict[str, object]:
    return await reg.publish(path, token, **kw)


async def raw_request(url: str, head: str) -> tuple[int, bytes]:
    """Send ``head`` as is; the status and body of the answer (the server closes after)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            dict(
                line.split(b": ", 1) for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            ).get(b"content-length", b"0")
        ):
            data += await stream.receive()
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    return int(head_bytes.split()[1]), body


async def still_serving(server: Server) -> None:
    assert server.alive()
    async with httpx2.AsyncClient(base_url=server.url, trust_env=False) as http:
        r = await http.get("/.well-known/cordon-registry.json")
    assert r.status_code == 200 and r.json()["key"].startswith("ed25519:")


async def test_a_published_plugin_is_listed_found_by_a_typo_and_served_with_its_details(
    registry: Server, tmp_path: Path
) -> None:
    token = registry.token("docker", "weather")
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(
                reg,
                package(tmp_path / "a", "docker", description="Run containers"),
                token,
                category="devops",
            )
            await publish(reg, package(tmp_path / "b", "weather", description="Forecasts"), token)
            for typo in ("dokcer", "dockr", "dock", "CONTAINERS"):
                found = await reg.search(typo)
                assert found["items"][0]["id"] == "docker", (typo, found)
            assert (await reg.search("zzzzqqq"))["total"] == 0
            detail = await reg.get("docker")
            assert detail["version"] == "1.0.0" and detail["permissions"] == ["log"]
            assert detail["category"] == "devops" and detail["versions"][0]["yanked"] is False
            assert {"readme", "repository", "homepage", "dependencies"} <= set(detail)
            page = await reg.list_plugins(sort="name", limit=1, offset=1)
            assert page["total"] == 2 and [i["id"] for i in page["items"]] == ["weather"]
            assert [c["name"] for c in await reg.categories()] == ["devops", "other"]
            assert [i["id"] for i in (await reg.by_category("devops"))["items"]] == ["docker"]
            assert len((await reg.popular(limit=1))["items"]) == 1


async def test_every_version_carries_a_registry_signature_that_verifies_with_its_served_key(
    registry: Server, tmp_path: Path
) -> None:
    path = package(tmp_path, "signed")
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, path, registry.token("signed"))
            key = (await reg.well_known())["key"]
            (info,) = await reg.versions("signed")
    assert key == (registry.data / "registry-key.pub").read_text().strip()
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    verify_version(key, "signed", "1.0.0", info["sha256"], info["signature"], where="test")
    with pytest.raises(Exception, match="does not verify"):
        verify_version(key, "signed", "1.0.1", info["sha256"], info["signature"], where="test")


async def test_a_token_publishes_only_the_ids_it_is_scoped_to(
    registry: Server, tmp_path: Path
) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            with pytest.raises(RegistryRefused) as exc:
                await publish(reg, package(tmp_path / "m", "victim"), registry.token("mine"))
            assert (exc.value.status, exc.value.reason) == (403, "scope")
            assert (await reg.search("victim"))["total"] == 0
            # Nor may it yank another's version.
            await publish(reg, package(tmp_path / "v", "victim"), registry.token("victim"))
            with pytest.raises(RegistryRefused) as exc:
                await reg.yank("victim", "1.0.0", "mine now", registry.token("mine"))
            assert (exc.value.status, exc.value.reason) == (403, "scope")
            assert (await reg.versions("victim"))[0]["yanked"] is False
        await still_serving(registry)


async def test_missing_unknown_expired_and_revoked_tokens_are_all_unauthorized(
    registry: Server, tmp_path: Path
) -> None:
    from tests.packages.installing import CORDON

    path = package(tmp_path, "gated")
    revoked = registry.token("gated")
    expired = registry.token("gated", expires_days=-1)
    r = await anyio.run_process(
        [CORDON, "registry", "token", "revoke", "--data", str(registry.data), revoked],
        check=False,
    )
    assert r.returncode == 0, r.stderr
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            for token in ("", "cdnr_guess", revoked, expired):
                with pytest.raises(RegistryRefused) as exc:
                    await publish(reg, path, token)
                assert (exc.value.status, exc.value.reason) == (401, "unauthorized")
        await still_serving(registry)


async def test_a_published_version_is_immutable_and_versions_only_increase(
    registry: Server, tmp_path: Path
) -> None:
    token = registry.token("imm")
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            first = package(tmp_path / "1", "imm", "1.1.0")
            await publish(reg, first, token)
            other_bytes = package(tmp_path / "2", "imm", "1.1.0", permissions=("log", "storage"))
            with pytest.raises(RegistryRefused) as exc:
                await publish(reg, other_bytes, token)
            assert (exc.value.status, exc.value.reason) == (409, "version_exists")
            with pytest.raises(RegistryRefused) as exc:
                await publish(reg, package(tmp_path / "3", "imm", "1.0.9"), token)
            assert (exc.value.status, exc.value.reason) == (409, "version_not_increasing")
            (info,) = await reg.versions("imm")
            assert info["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
        await still_serving(registry)


@pytest.mark.parametrize(
    ("existing", "squat"),
    [
        ("docker", "dockr"),
        ("depuser", "depusr"),
        ("docker", "d0cker"),
        ("docker", "docekr"),
        ("my-tool", "my_tool"),
        ("mytool", "my-tool"),
    ],
)
async def test_an_id_that_looks_like_an_existing_one_is_refused(
    registry: Server, tmp_path: Path, existing: str, squat: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, package(tmp_path / "a", existing), registry.token(existing))
            with pytest.raises(RegistryRefused) as exc:
                await publish(reg, package(tmp_path / "b", squat), registry.token(squat))
            assert (exc.value.status, exc.value.reason) == (409, "lookalike")
            assert existing in (exc.value.detail or "")
            with pytest.raises(PluginNotFound):
                await reg.get(squat)
        await still_serving(registry)


async def test_distinct_ids_and_the_owner_of_both_are_not_taken_for_lookalikes(
    registry: Server, tmp_path: Path
) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, package(tmp_path / "a", "docker"), registry.token("docker"))
            await publish(
                reg, package(tmp_path / "b", "docker-compose"), registry.token("docker-compose")
            )
            await publish(reg, package(tmp_path / "c", "git"), registry.token("git"))
            await publish(reg, package(tmp_path / "d", "gitx"), registry.token("gitx"))
            # The same owner may hold both (a token scoped to the existing id too).
            await publish(
                reg, package(tmp_path / "e", "dockers"), registry.token("dockers", "docker")
            )


async def test_hostile_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
    registry: Server, tmp_path: Path
) -> None:
    token = registry.token("good")
    good = package(tmp_path, "good")
    garbage = tmp_path / "garbage.cordon"
    garbage.write_bytes(b"PK\x03\x04 not really a zip" * 100)
    no_manifest = tmp_path / "nomanifest.cordon"
    with zipfile.ZipFile(no_manifest, "w") as zf:
        zf.writestr("x.py", "print(1)\n")
    auth = {"Authorization": f"Bearer {token}"}
    cases: list[tuple[str, str, dict[str, str], bytes | None, set[int]]] = [
        ("POST", "/plugins", auth, garbage.read_bytes(), {400}),
        ("POST", "/plugins", auth, no_manifest.read_bytes(), {400}),
        ("POST", "/plugins", {**auth, "X-Cordon-Sha256": "0" * 64}, good.read_bytes(), {400}),
        ("POST", "/plugins?category=..%2Fetc", auth, good.read_bytes(), {400}),
        ("POST", "/plugins/good/ratings", auth, b"{not json", {400}),
        ("POST", "/plugins/good/ratings", auth, b'{"stars": 6}', {400, 404}),
        ("POST", "/plugins/good/ratings", auth, b"[" * 20000, {413}),
        ("POST", "/plugins/good/ratings", auth, b"[" * 16000, {400}),
        ("GET", "/plugins/..%2F..%2Fetc%2Fpasswd", {}, None, {400, 404}),
        ("GET", "/plugins/%2e%2e/%2e%2e/download", {}, None, {400, 404}),
        ("GET", "/plugins/good%00/1.0.0/download", {}, None, {400, 404}),
        ("GET", "/plugins/Good/1.0.0", {}, None, {400}),
        ("GET", "/plugins/good/..%2F..%2Fregistry-key.pem/download", {}, None, {400, 404}),
        ("GET", "/plugins/good/1.0.0%2F..%2F..%2F..%2Fregistry-key/download", {}, None, {400, 404}),
        ("GET", "/plugins/" + "a" * 5000, {}, None, {400, 404, 414}),
        ("GET", "/plugins?limit=100000", {}, None, {400}),
        ("GET", "/plugins?sort=id;DROP TABLE plugins", {}, None, {400}),
        ("GET", "/category/..%2F..", {}, None, {400, 404}),
        ("DELETE", "/plugins/good", {}, None, {405}),
        ("GET", "/no/such/route", {}, None, {404}),
    ]
    with anyio.fail_after(DEADLINE):
        async with httpx2.AsyncClient(base_url=registry.url, trust_env=False) as http:
            for method, path, headers, body, statuses in cases:
                r = await http.request(method, path, headers=headers, content=body)
                assert r.status_code in statuses, (method, path, r.status_code, r.text)
                err = error_of(r.content)
                assert err["status"] == r.status_code and err["code"], (path, err)
                assert b"registry-key" not in r.content and b"PRIVATE" not in r.content
            # A declared length far over the limit: refused before a byte of body is read
            # (sent raw: an HTTP client will not declare a length it does not send).
            status, body = await raw_request(
                registry.url,
                f"POST /plugins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Length: 99999999999\r\n\r\n",
            )
            assert status == 413 and error_of(body)["code"] == "too_large"
            # Dot segments sent as they are (an HTTP client would normalise them away).
            for path in ("/plugins/../registry-key.pem", "/plugins/good/../../registry-key.pem"):
                status, body = await raw_request(
                    registry.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert status in (400, 404) and b"PRIVATE" not in body, (path, status)
            # The refused publishes left nothing behind, and an honest one still goes in.
            assert not list((registry.data / "incoming").iterdir())
            r = await http.post("/plugins", headers=auth, content=good.read_bytes())
            assert r.status_code == 201, r.text
        await still_serving(registry)


async def test_a_body_over_the_limit_without_a_length_is_cut_off_with_413(
    registry: Server,
) -> None:
    token = registry.token("big")

    async def endless() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        chunk = b"\0" * (1 << 20)
        for _ in range(64):
            yield chunk

    with anyio.fail_after(DEADLINE):
        async with httpx2.AsyncClient(base_url=registry.url, trust_env=False) as http:
            try:
                r = await http.post(
                    "/plugins", headers={"Authorization": f"Bearer {token}"}, content=endless()
                )
            except httpx2.TransportError:
                pass  # the server may close the connection on the rest of the upload
            else:
                assert r.status_code == 413 and error_of(r.content)["code"] == "too_large"
        assert not list((registry.data / "incoming").iterdir())
        await still_serving(registry)


@pytest.mark.parametrize(
    "q",
    [
        '"',
        'dock"er',
        "dock*",
        "NEAR(docker run)",
        "docker OR",
        "AND",
        "id:docker",
        "-docker",
        "^docker",
        "{id}: x",
        "((",
        "' OR 1=1 --",
        "\x00",
        "🐳 docker",
        "a" * 200,
        "%",
    ],
)
async def test_fts_syntax_in_the_query_is_text_never_an_error(
    registry: Server, tmp_path: Path, q: str
) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, package(tmp_path, "docker"), registry.token("docker"))
            found = await reg.search(q)
            assert isinstance(found["items"], list)
            if "docker" in q:
                assert found["items"][0]["id"] == "docker"
        await still_serving(registry)


async def test_concurrent_publishes_of_one_version_let_exactly_one_in(
    registry: Server, tmp_path: Path
) -> None:
    token = registry.token("race")
    # Eight packages of race 1.0.0, each with other bytes (another permission list).
    paths = [
        package(tmp_path / str(i), "race", permissions=("log", f"events:emit:t{i}"))
        for i in range(8)
    ]
    outcomes: list[object] = []

    async def one(reg: RegistryClient, path: Path) -> None:
        try:
            outcomes.append(await publish(reg, path, token))
        except RegistryRefused as exc:
            outcomes.append(exc.reason)

    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            async with anyio.create_task_group() as tg:
                for path in paths:
                    tg.start_soon(one, reg, path)
            (info,) = await reg.versions("race")
    won = [o for o in outcomes if isinstance(o, dict)]
    assert (
        len(won) == 1
        and sorted(o for o in outcomes if isinstance(o, str)) == ["version_exists"] * 7
    ), outcomes
    assert info["sha256"] == won[0]["sha256"]
    stored = registry.data / "packages" / "race" / "1.0.0.cordon"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == info["sha256"]


async def test_downloads_are_counted_once_per_client_per_day(
    registry: Server, tmp_path: Path
) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, package(tmp_path, "counted"), registry.token("counted"))
            key = (await reg.well_known())["key"]
            (info,) = await reg.versions("counted")
            for i in range(5):
                dest = tmp_path / f"dl{i}"
                dest.mkdir()
                await reg.download(info, dest, key=key)
            assert (await reg.get("counted"))["downloads"] == 1


async def test_a_rating_is_one_per_token_and_from_one_to_five(
    registry: Server, tmp_path: Path
) -> None:
    token = registry.token("rated")
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            await publish(reg, package(tmp_path, "rated"), token)
            await reg.rate("rated", 5, token)
            assert await reg.rate("rated", 2, token) == {
                "id": "rated",
                "rating": 2.0,
                "rating_count": 1,
            }
            await reg.rate("rated", 4, registry.token("someone"))
            assert (await reg.get("rated"))["rating"] == 3.0
            for stars in (0, 6):
                with pytest.raises(RegistryRefused) as exc:
                    await reg.rate("rated", stars, token)
                assert exc.value.status == 400


async def test_unknown_plugins_and_versions_are_plugin_not_found(registry: Server) -> None:
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(registry.url) as reg:
            with pytest.raises(PluginNotFound):
                await reg.get("nothere")
            with pytest.raises(PluginNotFound):
                await reg.versions("nothere")


async def test_a_registry_that_does_not_answer_is_unavailable_after_the_retries(
    tmp_path: Path,
) -> None:
    import socket

    # A port bound and closed: nothing listens there (connection refused at once).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with anyio.fail_after(DEADLINE):
        async with RegistryClient(f"http://127.0.0.1:{port}", attempts=3, backoff=0.01) as reg:
            with pytest.raises(RegistryUnavailable) as exc:
                await reg.search("x")
    assert "cannot connect" in (exc.value.detail or "")


async def test_a_registry_cannot_steer_the_download_path_with_its_answer(
    tmp_path: Path,
) -> None:
    # No server: the answer is refused before any request or write.
    async with RegistryClient("http://127.0.0.1:9") as reg:
        for plugin_id, version in (("x", "../../evil"), ("../x", "1.0.0"), ("x", "1.0/..")):
            info = {"id": plugin_id, "version": version, "sha256": "0", "size": 1, "signature": ""}
            with pytest.raises(RegistryRefused):
                await reg.download(info, tmp_path, key="ed25519:x")
    assert list(tmp_path.iterdir()) == []


def test_only_https_or_loopback_http_registries_are_used() -> None:
    from cordon.runtime._marketplace._client import check_registry_url

    assert check_registry_url("https://plugins.example/") == "https://plugins.example"
    assert check_registry_url("http://127.0.0.1:8470") == "http://127.0.0.1:8470"
    assert check_registry_url("http://[::1]:8470") == "http://[::1]:8470"
    for bad in ("http://plugins.example", "ftp://x", "file:///etc", "http://10.0.0.1:80"):
        with pytest.raises(RegistryRefused):
            check_registry_url(bad)


def test_the_json_in_error_bodies_is_the_documented_shape() -> None:
    assert error_of(json.dumps({"error": {"code": "c", "message": "m", "status": 400}}).encode())
