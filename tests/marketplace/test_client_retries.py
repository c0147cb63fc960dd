"""The client's retries, against a real HTTP listener on a loopback port that fails on
purpose (a registry behind a restarting proxy): 5xx is retried with backoff, 4xx never."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from cordon.runtime._marketplace._client import RegistryClient
from cordon.runtime._marketplace._errors import RegistryRefused, RegistryUnavailable

pytestmark = pytest.mark.anyio

DEADLINE = 30.0
EMPTY_PAGE = {"items": [], "total": 0, "limit": 20, "offset": 0}


async def flaky_server(
    answers: list[tuple[int, object]], seen: list[str], *, task_status: anyio.abc.TaskStatus[int]
) -> None:
    """Answer each request with the next (status, JSON) of ``answers`` (the last repeats)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            seen.append(data.split(b"\r\n", 1)[0].decode())
            status, doc = answers[min(len(seen) - 1, len(answers) - 1)]
            body = json.dumps(doc).encode()
            await stream.send(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )

    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(handle)


async def run_against(answers: list[tuple[int, object]]) -> tuple[object, list[str]]:
    seen: list[str] = []
    outcome: object = None
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            port = await tg.start(flaky_server, answers, seen)
            async with RegistryClient(f"http://127.0.0.1:{port}", attempts=4, backoff=0.01) as reg:
                try:
                    outcome = await reg.search("x")
                except (RegistryUnavailable, RegistryRefused) as exc:
                    outcome = exc
            tg.cancel_scope.cancel()
    return outcome, seen


async def test_a_5xx_is_retried_until_the_registry_answers() -> None:
    unavailable = {"error": {"code": "x", "message": "restarting", "status": 503}}
    outcome, seen = await run_against([(503, unavailable), (502, unavailable), (200, EMPTY_PAGE)])
    assert outcome == EMPTY_PAGE
    assert len(seen) == 3


async def test_a_registry_failing_every_try_is_unavailable_after_the_last() -> None:
    outcome, seen = await run_against([(500, {"error": "boom"})])
    assert isinstance(outcome, RegistryUnavailable) and "HTTP 500" in outcome.message
    assert len(seen) == 4


async def test_a_4xx_is_not_retried() -> None:
    refusal = {"error": {"code": "invalid_parameter", "message": "no", "status": 400}}
    outcome, seen = await run_against([(400, refusal), (200, EMPTY_PAGE)])
    assert isinstance(outcome, RegistryRefused) and outcome.reason == "invalid_parameter"
    assert len(seen) == 1


async def test_a_download_dripping_slower_than_its_deadline_is_unavailable_and_left_nowhere(
    tmp_path: Path,
) -> None:
    from cordon.runtime._marketplace._trust import sign_version
    from cordon.runtime._packages._keys import new_key

    key_path = tmp_path / "k.pem"
    public = new_key(key_path)
    size, sha = 1000, "ab" * 32
    info = {
        "id": "drip",
        "version": "1.0.0",
        "sha256": sha,
        "size": size,
        "signature": sign_version(key_path, "drip", "1.0.0", sha),
    }
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def drip(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size):  # a byte every 50 ms: each read is quick, the whole is not
                await stream.send(b"x")
                await anyio.sleep(0.05)

    dest = tmp_path / "dl"
    dest.mkdir()
    with anyio.fail_after(DEADLINE):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, drip)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with RegistryClient(f"http://127.0.0.1:{port}", download_deadline=0.5) as reg:
                with pytest.raises(RegistryUnavailable, match="not finished within"):
                    await reg.download(info, dest, key=public)
            tg.cancel_scope.cancel()
    assert list(dest.iterdir()) == []
