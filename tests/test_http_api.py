"""``ctx.http`` end to end: a real worker under the strict sandbox (no network of its own)
asks the host, which checks the grant, resolves, checks addresses, bounds the request and
talks to a real server on a loopback port started by the test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from cordon.protocol import (
    CallCancelled,
    CallTimeout,
    HttpError,
    InvalidParams,
    PermissionDenied,
    QuotaExceeded,
)
from cordon.runtime import PluginHandle, Runtime
from cordon.runtime._hostapi._http import HttpParams, HttpPolicy, HttpTimeout
from cordon.runtime._hostapi._http_policy import parse_url
from cordon.runtime._settings._http_keys import HttpLimits

from .conftest import base_config
from .http_loopback import Loopback, LoopbackCA, Seen, answer, loopback, make_plugin, tls_loopback

pytestmark = pytest.mark.anyio

#: Every test's whole budget: a hang must fail, not stall the suite.
DEADLINE = 20.0


async def _json_echo(seen: Seen, stream: anyio.abc.SocketStream) -> None:
    if seen.path.startswith("/hop"):
        await answer(stream, 302, headers=[("Location", "/final")])
        return
    echo = {"method": seen.method, "path": seen.path, "body": seen.body.decode("latin-1")}
    body = json.dumps(echo).encode()
    await answer(
        stream,
        200,
        body,
        headers=[("Content-Type", "application/json; charset=utf-8"), ("X-Seen", "yes")],
    )


async def _silent(seen: Seen, stream: anyio.abc.SocketStream) -> None:
    """Answer nothing; return once the client hangs up."""
    try:
        await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass


@pytest.fixture
async def server() -> AsyncIterator[Loopback]:
    async with loopback(_json_echo) as srv:
        yield srv


async def _runtime(tmp_path: Path, grants: list[str], **http: Any) -> tuple[Runtime, Path]:
    config = base_config(tmp_path)
    plugin_section: dict[str, Any] = {"grant": grants}
    if http:
        plugin_section["http"] = {k.replace("_", "-"): v for k, v in http.items()}
    config["plugins"] = {"web": plugin_section}
    return Runtime(config), make_plugin(tmp_path / "plugins", "web", grants)


async def _call(handle: PluginHandle, tool: str, timeout: float = 10, **args: Any) -> Any:
    return await handle.call(tool, args, timeout=timeout)


async def test_an_allowed_request_round_trips_status_headers_and_body(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            out = await _call(
                web, "fetch", url=server.url("/x?q=1#frag"), method="POST", json_body={"a": 1}
            )
    assert out["status"] == 200
    assert out["content_type"] == "application/json; charset=utf-8"
    assert ["x-seen", "yes"] in out["headers"]
    assert out["json"] == {"method": "POST", "path": "/x?q=1", "body": '{"a":1}'}
    assert out["text"].startswith('{"method": "POST"')
    # The host set Host to the granted origin and sent no fragment, proxy or cookie of its own.
    seen = server.seen[0]
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["content-type"] == "application/json"
    assert "cookie" not in seen.headers


async def test_a_sync_tool_reaches_http_through_ctx_run(tmp_path: Path, server: Loopback) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            out = await _call(web, "fetch_sync", url=server.url("/sync"))
    assert out["status"] == 200 and '"path": "/sync"' in out["text"]


async def test_the_same_ip_spelled_any_other_way_is_the_granted_origin(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            for host in ("2130706433", "0x7f.1", "127.1", "127.0.0.1."):
                out = await _call(web, "fetch", url=f"http://{host}:{server.port}/")
                assert out["status"] == 200
                assert out["url"] == f"http://127.0.0.1:{server.port}/"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("http://127.0.0.2:{port}/", "another host"),
        ("http://127.0.0.1:{other}/", "another port"),
        ("https://127.0.0.1:{port}/", "another scheme"),
        ("http://localhost:{port}/", "a name for the granted IP"),
        ("http://user@127.0.0.1:{port}/", "userinfo"),
        ("http://127.0.0.1:{port}\\@evil.example/", "a backslash"),
        ("http://127.0.0.1:{port}/a\r\nX-Injected: 1", "CR/LF in the URL"),
        ("file:///etc/passwd", "another scheme entirely"),
    ],
)
async def test_a_request_outside_the_grant_is_refused_before_anything_is_sent(
    tmp_path: Path, server: Loopback, template: str, why: str
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    url = template.format(port=server.port, other=server.port + 1)
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(PermissionDenied) as info:
                await _call(web, "fetch", url=url)
            entries = await rt.audit_trail.read("web")  # type: ignore[union-attr]
    assert server.seen == [], why
    assert info.value.plugin == "web"
    denied = [e for e in entries if e.method == "host/http.request"]
    assert denied and not denied[-1].allowed


async def test_a_granted_name_that_resolves_to_loopback_is_refused(
    tmp_path: Path, server: Loopback
) -> None:
    grant = f"http:http://localhost:{server.port}"
    rt, plugin = await _runtime(tmp_path, [grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(PermissionDenied, match="loopback"):
                await _call(web, "fetch", url=f"http://localhost:{server.port}/")
    assert server.seen == []


async def test_a_redirect_within_the_grant_is_followed_and_one_out_of_it_refused(
    tmp_path: Path, server: Loopback
) -> None:
    async def away(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await answer(stream, 302, headers=[("Location", server.url("/stolen"))])

    async with loopback(away) as outside:
        # The plugin is granted the redirector only; the redirect points at `server`.
        rt, plugin = await _runtime(tmp_path, [server.grant, outside.grant])
        async with loopback(away) as only:
            rt2, plugin2 = await _runtime(tmp_path / "2", [only.grant])
            with anyio.fail_after(DEADLINE):
                async with rt:
                    web = await rt.load(plugin)
                    followed = await _call(web, "fetch", url=server.url("/hop"))
                    crossed = await _call(web, "fetch", url=outside.url("/go"))
                async with rt2:
                    web2 = await rt2.load(plugin2)
                    with pytest.raises(PermissionDenied, match="redirect"):
                        await _call(web2, "fetch", url=only.url("/go"))
    assert followed["status"] == 200 and followed["json"]["path"] == "/final"
    assert followed["url"] == server.url("/final")
    # Both origins granted: followed across them.
    assert crossed["json"]["path"] == "/stolen"
    # Only the redirector granted: `server` saw nothing from rt2 (its two requests are rt's).
    assert [s.path for s in server.seen] == ["/hop", "/final", "/stolen"]


async def test_a_redirect_loop_ends_after_the_hop_limit(tmp_path: Path) -> None:
    async def loop_(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await answer(stream, 307, headers=[("Location", "/again")])

    async with loopback(loop_) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                seen = await _call(web, "try_fetch", url=srv.url("/"))
    assert seen["type"] == HttpError.__name__ and seen["reason"] == "redirects"
    assert len(srv.seen) == 6  # the request and five hops


async def test_an_oversized_request_body_is_refused_unsent(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant], max_request="1 KiB")
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            ok = await _call(web, "fetch", url=server.url(), method="POST", body="x" * 1024)
            with pytest.raises(QuotaExceeded) as info:
                await _call(web, "fetch", url=server.url(), method="POST", body="x" * 1025)
    assert ok["status"] == 200
    assert info.value.kind == "http-request-body"
    assert len(server.seen) == 1


async def test_a_response_past_the_limit_is_cut_off_and_its_connection_closed(
    tmp_path: Path,
) -> None:
    async def endless(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (4096, b"z" * 4096)
        while True:  # until the host hangs up
            await stream.send(chunk)

    async with loopback(endless) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant], max_response="64 KiB")
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                with pytest.raises(QuotaExceeded) as info:
                    await _call(web, "fetch", url=srv.url())
                # The host closed the connection: the server's endless writes failed.
                await srv.closed[0].wait()
    assert info.value.kind == "http-response-body"


async def test_a_slow_server_hits_the_request_timeout(tmp_path: Path) -> None:
    silent = _silent

    async with loopback(silent) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant], timeout="0.3 s")
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                seen = await _call(web, "try_fetch", url=srv.url())
                await srv.closed[0].wait()
    # In the plugin: a CallTimeout (HttpTimeout on the host) naming the request's limit.
    assert seen["type"] == CallTimeout.__name__ and seen["timeout"] == 0.3


async def test_a_call_past_its_deadline_aborts_its_request_on_the_host(tmp_path: Path) -> None:
    silent = _silent

    async with loopback(silent) as srv:
        # The request's own timeout is long; the call's deadline is what ends it.
        rt, plugin = await _runtime(tmp_path, [srv.grant], timeout="60 s")
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                with pytest.raises(CallTimeout):
                    await _call(web, "fetch", url=srv.url(), timeout=0.5)
                # The host hung up on the server (not after 60 s): the request was aborted.
                await srv.closed[0].wait()
                policy = web.host_api.http
                assert policy is not None and policy.in_flight == 0


async def test_requests_past_the_concurrency_limit_wait_their_turn(tmp_path: Path) -> None:
    release = anyio.Event()
    active = 0
    most = 0

    async def held(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await release.wait()
        active -= 1
        await answer(stream, 204)

    async with loopback(held) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant], concurrency=2)
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                result: list[Any] = []

                async def run() -> None:
                    result.append(await _call(web, "many", url=srv.url(), n=6))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    policy = web.host_api.http
                    assert policy is not None
                    # Two at the server, four queued on the host: then let them all go. (A
                    # condition polled under the deadline: the queue has no event to wait on.)
                    while not (active == 2 and policy._slots.statistics().tasks_waiting == 4):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    release.set()
    assert result == [[204] * 6]
    assert most == 2


async def test_requests_past_the_rate_are_refused_at_once(tmp_path: Path, server: Loopback) -> None:
    # Burst 3, refilled at one request per 100 s: the fourth in a row is over the rate.
    rt, plugin = await _runtime(tmp_path, [server.grant], rate=0.01, burst=3)
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            out = await _call(web, "in_sequence", url=server.url(), n=5)
    assert out[:3] == [200, 200, 200]
    assert out[3:] == [["QuotaExceeded", "http-rate"]] * 2
    assert len(server.seen) == 3


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Host": "evil.example"}, "headers[0]"),
        ({"Transfer-Encoding": "chunked"}, "headers[0]"),
        ({"Content-Length": "0"}, "headers[0]"),
        ({"X-A": "b\r\nX-Injected: 1"}, "headers[0]"),
        ({"Bad Name": "x"}, "headers[0]"),
    ],
)
async def test_headers_that_would_smuggle_or_reroute_are_refused(
    tmp_path: Path, server: Loopback, headers: dict[str, str], field: str
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(InvalidParams) as info:
                await _call(web, "fetch", url=server.url(), headers=headers)
    assert info.value.field == field
    assert server.seen == []


async def test_a_method_outside_the_standard_ones_is_refused(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            for method in ("CONNECT", "TRACE", "GET /x HTTP/1.1\r\nHost: a"):
                with pytest.raises(InvalidParams):
                    await _call(web, "fetch", url=server.url(), method=method)
    assert server.seen == []


async def test_each_request_is_audited_with_origin_status_and_sizes_never_the_path(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            await _call(web, "fetch", url=server.url("/private?token=abc"), method="PUT", body="hi")
            entries = await rt.audit_trail.read("web")  # type: ignore[union-attr]
    hops = [e for e in entries if e.method == "http.response"]
    assert len(hops) == 1
    summary = hops[0].summary
    assert summary.startswith(f"PUT http://127.0.0.1:{server.port} status=200 out=2 in=")
    assert "private" not in summary and "abc" not in summary
    requests = [e for e in entries if e.method == "host/http.request"]
    assert requests and requests[-1].allowed and "abc" not in requests[-1].summary


async def test_without_a_grant_a_plugin_has_no_http_at_all(
    tmp_path: Path, server: Loopback
) -> None:
    rt, plugin = await _runtime(tmp_path, [])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(PermissionDenied):
                await _call(web, "fetch", url=server.url())
    assert server.seen == []


# -- TLS: certificates are checked against the name, on the address the host pinned ----------


@pytest.fixture(scope="module")
def ca() -> LoopbackCA:
    return LoopbackCA()


async def test_https_to_a_granted_ip_literal_round_trips_with_its_certificate_verified(
    tmp_path: Path, ca: LoopbackCA
) -> None:
    names: list[str | None] = []
    good = ca.server_context(tmp_path, dns=[], ips=["127.0.0.1"])
    wrong = ca.server_context(tmp_path, dns=["other.test"], ips=[])
    async with (
        tls_loopback(_json_echo, good, names) as srv,
        tls_loopback(_json_echo, wrong, names) as bad,
    ):
        grants = [f"http:127.0.0.1:{srv.port}", f"http:127.0.0.1:{bad.port}"]
        rt, plugin = await _runtime(tmp_path, grants)
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                assert web.host_api.http is not None
                web.host_api.http._verify = ca.client_context()
                out = await _call(web, "fetch", url=f"https://127.0.0.1:{srv.port}/tls")
                failed = await _call(web, "try_fetch", url=f"https://127.0.0.1:{bad.port}/")
    assert out["status"] == 200 and out["json"]["path"] == "/tls"
    assert failed["type"] == "HttpError" and failed["reason"] == "tls"
    assert bad.seen == []


@pytest.mark.parametrize(("cert_name", "ok"), [("cordon.test", True), ("evil.test", False)])
async def test_a_pinned_connection_checks_the_certificate_against_the_name_it_was_asked_for(
    tmp_path: Path, ca: LoopbackCA, cert_name: str, ok: bool
) -> None:
    # Below the address check (a name cannot reach loopback through it): the host connects
    # to the address it resolved and checked, and TLS still speaks and verifies the name.
    names: list[str | None] = []
    server_ctx = ca.server_context(tmp_path, dns=[cert_name], ips=["127.0.0.1"])
    policy = HttpPolicy("web", HttpLimits(), verify=ca.client_context())
    async with tls_loopback(_json_echo, server_ctx, names) as srv:
        target = parse_url(f"https://cordon.test:{srv.port}/pinned")
        headers = policy._hop_headers([], target, first=True, cross=False)
        with anyio.fail_after(DEADLINE):
            if ok:
                status, _, content, _ = await policy._send(
                    "GET", target, "127.0.0.1", headers, None
                )
            else:
                with pytest.raises(HttpError) as info:
                    await policy._send("GET", target, "127.0.0.1", headers, None)
    assert names == ["cordon.test"]
    if ok:
        assert status == 200 and json.loads(content)["path"] == "/pinned"
        assert srv.seen[0].headers["host"] == f"cordon.test:{srv.port}"
    else:
        assert info.value.reason == "tls" and srv.seen == []


def test_the_worker_side_imports_no_http_client() -> None:
    code = "import sys, cordon.worker; print(sorted(m for m in sys.modules if 'http' in m))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "httpx" not in out.stdout and "httpcore" not in out.stdout and "h11" not in out.stdout


async def test_lookups_given_up_on_still_count_against_the_plugin_until_their_threads_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A resolver that never answers for *.hang (a stand-in for a hostile nameserver: the
    # lookup's thread stays in the C library long after the request gave up on it).
    answer_now = threading.Event()
    started: list[str] = []
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(host)
        if host.endswith(".hang"):
            answer_now.wait(DEADLINE)
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    policy = HttpPolicy("web", HttpLimits(concurrency=2, timeout=0.2))

    def allow_all(permission: str) -> bool:
        return True  # every origin granted: this test is about the resolver

    async def get(url: str, timeout: float | None = None) -> Any:
        params = HttpParams(method="GET", url=url, timeout=timeout)
        return await policy.request(params, allows=allow_all)

    with anyio.fail_after(DEADLINE):
        for name in ("a.hang", "b.hang", "c.hang"):
            with pytest.raises(HttpTimeout):
                await get(f"https://{name}/")
        # Two threads are stuck; the third lookup never started (it waited for a slot).
        assert started == ["a.hang", "b.hang"]
        answer_now.set()
        # The next lookup waits for those threads to end, then runs; its loopback answer
        # is refused.
        with pytest.raises(PermissionDenied, match="loopback"):
            await get("https://fine.test/", timeout=DEADLINE)
        # The other stuck thread ends in its own time (the lookup above needed only one
        # slot): every count is returned once the threads are gone, none is lost.
        counter = policy._resolver
        while counter.lookups:
            # The resolver's own signal that a lookup's thread ended (as a waiting lookup
            # uses it).
            if counter._ended is None:
                counter._ended = anyio.Event()
            await counter._ended.wait()
    assert policy._resolver.lookups == 0
    assert started == ["a.hang", "b.hang", "fine.test"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"plugin": "other"}, "plugin"),
        ({"headers": [["X-A"]]}, "headers[0]"),
        ({"headers": {"X-A": "b"}}, "headers"),
        ({"content": "not base64!"}, "content"),
        ({"timeout": -1}, "timeout"),
        ({"id": "1"}, "id"),
        ({"method": 7}, "method"),
    ],
)
async def test_a_raw_request_is_checked_as_strictly_as_one_from_ctx_http(
    tmp_path: Path, server: Loopback, extra: dict[str, Any], field: str
) -> None:
    rt, plugin = await _runtime(tmp_path, [server.grant])
    params = {"method": "GET", "url": server.url(), **extra}
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(InvalidParams) as info:
                await _call(web, "raw", params=params)
    assert info.value.field is not None and info.value.field.startswith(field)
    assert server.seen == []


async def test_a_broken_server_is_a_typed_http_error_naming_what_failed(tmp_path: Path) -> None:
    async def garbage(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"NOT HTTP AT ALL\r\n\r\n")

    async with loopback(garbage) as srv:
        # A port nothing listens on: a listener opened and closed at once.
        closed = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        dead = closed.extra(anyio.abc.SocketAttribute.local_port)
        await closed.aclose()
        grants = [srv.grant, f"http:http://127.0.0.1:{dead}"]
        rt, plugin = await _runtime(tmp_path, grants)
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                broken = await _call(web, "try_fetch", url=srv.url())
                refused = await _call(web, "try_fetch", url=f"http://127.0.0.1:{dead}/")
    assert (broken["type"], broken["reason"]) == ("HttpError", "protocol")
    assert (refused["type"], refused["reason"]) == ("HttpError", "connect")
    assert refused["url"] == f"http://127.0.0.1:{dead}/"


async def test_an_http_error_the_plugin_lets_through_reaches_the_caller_typed(
    tmp_path: Path,
) -> None:
    closed = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    dead = closed.extra(anyio.abc.SocketAttribute.local_port)
    await closed.aclose()
    rt, plugin = await _runtime(tmp_path, [f"http:http://127.0.0.1:{dead}"])
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(HttpError) as info:
                await _call(web, "fetch", url=f"http://127.0.0.1:{dead}/")
    assert info.value.reason == "connect"


async def test_a_cancel_before_its_request_starts_stops_it_and_a_stale_one_stops_nothing(
    server: Loopback,
) -> None:
    policy = HttpPolicy("web", HttpLimits())

    def allow_all(permission: str) -> bool:
        return True

    async def get(rid: int) -> Any:
        params = HttpParams(method="GET", url=server.url(f"/{rid}"), id=rid)
        return await policy.request(params, allows=allow_all)

    with anyio.fail_after(DEADLINE):
        assert (await get(10))["status"] == 200
        # The worker gave up on request 11 while it still waited in the host's queue.
        assert policy.cancel(b'{"id": 11}')
        with pytest.raises(CallCancelled):
            await get(11)
        # A cancel for an id at or below the highest started one is for a request that has
        # ended: remembered nowhere, it cannot cancel a later request reusing the number.
        assert policy.cancel(b'{"id": 5}')
        assert (await get(5))["status"] == 200
        assert not policy.cancel(b'{"id": "x"}')
    assert [s.path for s in server.seen] == ["/10", "/5"]
