"""Red team, ``ctx.http``: a hostile plugin in a real strict-sandboxed worker tries to make the
host talk to somewhere its grant does not name, or to hold a host resource past its bounds.

* URL-parser differentials: what the policy checks must be what the host connects to and
  sends, for every trick one parser reads differently from another (userinfo, fragments,
  mapped IPv6, zero-padded ports, empty labels, NUL). The requests go straight to
  ``host/http.request`` (the plugin's ``raw`` tool), skipping the worker's own client.
* Redirects: a granted server (or one the plugin controls) answers with every ``Location``
  trick; no hop may leave the grant, and one that stays on it is followed.
* Hostile responses: a body dripped a byte at a time under the size cap (the request's
  deadline ends it), a head with a flood of headers (a typed error), and a compression bomb
  (handed over compressed, as received: the host never inflates a body).
* Secrets: a server that echoes the credential (the host masks it by exact match) asked by
  the plugin to compress or cut its answer, so the value would pass the mask in pieces."""

from __future__ import annotations

import base64
import gzip
import json
import socket
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from cordon.protocol import CallTimeout, HttpError, PermissionDenied
from cordon.runtime import PluginHandle, Runtime
from cordon.runtime._hostapi._secrets import SecretStore

from .conftest import base_config
from .http_loopback import Loopback, Seen, answer, loopback, make_plugin

pytestmark = pytest.mark.anyio

#: Every test's whole budget: a hang must fail, not stall the suite.
DEADLINE = 20.0
#: The drip server's pace: slow enough that the request's deadline comes long before its
#: body could reach the size cap, fast enough that every read makes progress.
DRIP_EVERY = 0.05
#: The request deadline the drip test sets: the only thing that can end that response.
DRIP_TIMEOUT = 0.5
#: The secret's value (the environment variable it is read from is set per test).
SECRET_VALUE = "s3cr3t-Value-9f2c71d4"
SECRET_VAR = "CORDON_TEST_REDTEAM_TOKEN"
#: What the bomb inflates to (zeros) and the response cap below it: an inflating host
#: would trip the cap, a host that passes the bytes through does not.
BOMB_SIZE = 64 * 1024 * 1024
BOMB_CAP = "1 MiB"


async def _runtime(tmp_path: Path, grants: list[str], **http: Any) -> tuple[Runtime, Path]:
    config = base_config(tmp_path)
    section: dict[str, Any] = {"grant": grants}
    if http:
        section["http"] = {k.replace("_", "-"): v for k, v in http.items()}
    config["plugins"] = {"web": section}
    return Runtime(config), make_plugin(tmp_path / "plugins", "web", grants)


async def _raw(web: PluginHandle, url: str) -> Any:
    return await web.call("raw", {"params": {"method": "GET", "url": url}}, timeout=10)


async def _ok(seen: Seen, stream: anyio.abc.SocketStream) -> None:
    await answer(stream, 200, b"ok")


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("http://127.0.0.1:{port}#@evil.example/", "/"),  # the fragment is never the host
        ("http://127.0.0.1:{port}/?@evil.example", "/?@evil.example"),
        ("http://127.0.0.1:{port}//evil.example/x", "//evil.example/x"),  # a path, not a host
        ("HTTP://127.0.0.1:{port}/up", "/up"),  # the scheme in capitals
        ("http://127.0.0.1.:{port}/dot", "/dot"),  # one trailing dot
    ],
)
async def test_a_url_read_differently_by_other_parsers_reaches_only_the_granted_origin(
    tmp_path: Path, template: str, path: str
) -> None:
    async with loopback(_ok) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                out = await _raw(web, template.format(port=srv.port))
    assert out["status"] == 200
    # It arrived where the grant says, asking for exactly the path the policy saw.
    assert [(s.path, s.headers["host"]) for s in srv.seen] == [(path, f"127.0.0.1:{srv.port}")]


@pytest.mark.parametrize(
    "template",
    [
        "http://evil.example@127.0.0.1:{port}/",  # userinfo, either way round
        "http://127.0.0.1:{port}@evil.example/",
        "http://127.0.0.1:{port}%40evil.example/",
        "http://[::ffff:127.0.0.1]:{port}/",  # the granted address, spelled as another literal
        "http://[::ffff:7f00:1]:{port}/",
        "http://127.0.0.1:{port}:{port}/",
        "http://127.0.0.1:000000{port}/",  # a port padded past five digits
        "http://127.0.0.1:{port}\x00/",
        "http://127.0.0.1..:{port}/",
        "http://127.0.0.1\t:{port}/",
        "http://127.0.0.1%2e:{port}/",
        "http:127.0.0.1:{port}/",
        "http:/127.0.0.1:{port}/",
        "http://127.0.0.1:{port}\u3002evil.example/",  # an ideographic full stop
    ],
)
async def test_an_ambiguous_url_for_the_granted_origin_is_refused_and_nothing_is_sent(
    tmp_path: Path, template: str
) -> None:
    async with loopback(_ok) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                with pytest.raises(PermissionDenied):
                    await _raw(web, template.format(port=srv.port))
    assert srv.seen == []


#: Every ``Location`` a hostile server answers with, and what a follower must do with it.
_LOCATIONS: list[tuple[str, str]] = [
    ("//127.0.0.2:{port}/", "refused"),  # scheme-relative: another host
    ("http://127.0.0.1:{port}@127.0.0.2:{port}/", "refused"),  # credentials
    ("http://127.0.0.2:{port}#@127.0.0.1:{port}/", "refused"),
    ("http://[::ffff:127.0.0.1]:{port}/", "refused"),  # the same address, another literal
    ("https://127.0.0.1:{port}/", "refused"),  # another scheme
    ("http://127.0.0.1:{other}/", "refused"),  # another port
    ("file:///etc/passwd", "refused"),
    ("/\\127.0.0.2/", "refused"),
    ("http://127.0.0.1:{port}/a\tb", "refused"),  # urljoin would drop the tab: refused
    ("http://127.0.0.\t2:{port}/", "refused"),
    ("http://0x7f.1:{port}/landed", "/landed"),  # the grant, spelled otherwise: followed
    ("/x/../landed?q=1", "/landed?q=1"),  # dot segments resolved before the check
]


@pytest.mark.parametrize(("location", "outcome"), _LOCATIONS)
async def test_no_redirect_location_trick_leaves_the_grant_and_one_on_it_is_followed(
    tmp_path: Path, location: str, outcome: str
) -> None:
    async def redirector(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        if seen.path == "/go":
            port = stream.extra(anyio.abc.SocketAttribute.local_port)
            where = location.format(port=port, other=port + 1 if port < 65535 else port - 1)
            await answer(stream, 302, headers=[("Location", where)])
        else:
            await answer(stream, 200, b"landed")

    async with loopback(redirector) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                if outcome == "refused":
                    with pytest.raises(PermissionDenied):
                        await _raw(web, srv.url("/go"))
                else:
                    out = await _raw(web, srv.url("/go"))
                    assert out["status"] == 200
    # One request to the granted server; a refused hop sent nothing anywhere (the other
    # loopback addresses have no listener: a request there would have been a connect error).
    assert [s.path for s in srv.seen] == (["/go"] if outcome == "refused" else ["/go", outcome])


async def test_a_body_dripped_under_the_size_cap_ends_at_the_request_deadline(
    tmp_path: Path,
) -> None:
    async def drip(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:  # until the host hangs up (the loopback's own deadline bounds it)
            await stream.send(b"1\r\nz\r\n")
            await anyio.sleep(DRIP_EVERY)  # the server's pace, not synchronisation

    async with loopback(drip) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant], timeout=f"{DRIP_TIMEOUT} s")
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                seen = await web.call("try_fetch", {"url": srv.url()}, timeout=10)
                # The host hung up on the dripping server.
                await srv.closed[0].wait()
    assert seen["type"] == CallTimeout.__name__ and seen["timeout"] == DRIP_TIMEOUT


async def test_a_response_head_flooded_with_headers_is_a_typed_error(tmp_path: Path) -> None:
    async def flood(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Flood: " + b"f" * 64 + b"\r\n"
        for _ in range(20_000):  # ~1.5 MB of head, far past any sane client's limit
            await stream.send(line * 10)

    async with loopback(flood) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                seen = await web.call("try_fetch", {"url": srv.url()}, timeout=10)
    assert seen["type"] == HttpError.__name__, seen


async def test_a_compression_bomb_reaches_the_plugin_compressed_never_inflated_by_the_host(
    tmp_path: Path,
) -> None:
    bomb = gzip.compress(bytes(BOMB_SIZE), compresslevel=9)

    async def bomber(seen: Seen, stream: anyio.abc.SocketStream) -> None:
        await answer(stream, 200, bomb, headers=[("Content-Encoding", "gzip")])

    async with loopback(bomber) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant], max_response=BOMB_CAP)
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                out = await web.call(
                    "fetch",
                    {"url": srv.url(), "headers": {"Accept-Encoding": "gzip"}},
                    timeout=10,
                )
    assert srv.seen[0].headers["accept-encoding"] == "gzip"  # the plugin's ask, sent as is
    assert out["status"] == 200 and out["size"] == len(bomb) < BOMB_SIZE // 100
    assert ["content-encoding", "gzip"] in out["headers"]


async def test_without_asking_the_plugin_is_offered_only_identity_bodies(
    tmp_path: Path,
) -> None:
    async with loopback(_ok) as srv:
        rt, plugin = await _runtime(tmp_path, [srv.grant])
        with anyio.fail_after(DEADLINE):
            async with rt:
                web = await rt.load(plugin)
                await _raw(web, srv.url())
    assert srv.seen[0].headers["accept-encoding"] == "identity"


def _secret_config(tmp_path: Path, srv: Loopback) -> tuple[dict[str, Any], Path]:
    config = base_config(tmp_path)
    config["plugins"] = {
        "web": {
            "grant": [srv.grant],
            "secrets": {"TOKEN": {"env": SECRET_VAR, "hosts": [f"http://127.0.0.1:{srv.port}"]}},
        }
    }
    return config, make_plugin(tmp_path / "plugins", "web", [srv.grant])


async def _echo_reshaped(seen: Seen, stream: anyio.abc.SocketStream) -> None:
    """Echo the request's headers, honouring gzip and a byte range as a server would; under
    ``/always-gzip`` and ``/always-206`` whatever was asked."""
    body = json.dumps(seen.headers).encode()
    gzipped = "gzip" in seen.headers.get("accept-encoding", "") or seen.path == "/always-gzip"
    ranged = "range" in seen.headers or seen.path == "/always-206"
    if gzipped:
        await answer(stream, 200, gzip.compress(body), headers=[("Content-Encoding", "gzip")])
    elif ranged:
        first, _, last = (
            seen.headers.get("range", "bytes=0-9").removeprefix("bytes=").partition("-")
        )
        part = body[int(first) : int(last) + 1]
        cover = f"bytes {first}-{last}/{len(body)}"
        await answer(stream, 206, part, headers=[("Content-Range", cover)])
    else:
        await answer(stream, 200, body)


def _request(url: str, *extra: tuple[str, str]) -> dict[str, Any]:
    headers = [["Authorization", "Bearer <secret TOKEN>"], *[list(h) for h in extra]]
    return {"params": {"method": "GET", "url": url, "headers": headers}}


@pytest.mark.parametrize(
    "ask",
    [
        ("Accept-Encoding", "gzip"),
        ("Range", "bytes=30-39"),
        ("If-Range", "x"),
        ("Accept-Charset", "utf-16"),
    ],
)
async def test_a_secret_echo_cannot_be_asked_for_compressed_or_in_byte_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ask: tuple[str, str]
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET_VALUE)
    async with loopback(_echo_reshaped) as srv:
        config, plugin = _secret_config(tmp_path, srv)
        with anyio.fail_after(DEADLINE):
            async with Runtime(config) as rt:
                web = await rt.load(plugin)
                out = await web.call("raw", _request(srv.url(), ask), timeout=10)
    # The server got the secret (its host) but not the plugin's ask: the whole echo came
    # back plain, and masked.
    got = srv.seen[0].headers
    assert got["authorization"] == f"Bearer {SECRET_VALUE}"
    assert got["accept-encoding"] == "identity"
    assert not {"range", "if-range", "accept-charset"} & set(got)
    assert out["status"] == 200
    echoed = json.loads(base64.b64decode(out["content"]))
    assert echoed["authorization"] == "Bearer <secret TOKEN>"
    assert SECRET_VALUE not in repr(out)


@pytest.mark.parametrize("path", ["/always-gzip", "/always-206"])
async def test_an_answer_to_a_secret_the_host_cannot_mask_whole_is_withheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET_VALUE)
    async with loopback(_echo_reshaped) as srv:
        config, plugin = _secret_config(tmp_path, srv)
        with anyio.fail_after(DEADLINE):
            async with Runtime(config) as rt:
                web = await rt.load(plugin)
                with pytest.raises(HttpError) as info:
                    await web.call("raw", _request(srv.url(path)), timeout=10)
                # The same server's answer to a request with no secret is the plugin's as is.
                plain = await web.call(
                    "raw", {"params": {"method": "GET", "url": srv.url(path)}}, timeout=10
                )
    assert info.value.reason == "secret"
    assert SECRET_VALUE not in repr(info.value)
    assert plain["status"] in (200, 206)


@pytest.mark.parametrize("outer_first", [True, False])
def test_a_secret_whose_value_holds_another_is_masked_whole_whatever_the_order(
    outer_first: bool,
) -> None:
    inner = ("INNER", ("0123456789", ("127.0.0.1",)))
    outer = ("OUTER", ("left-0123456789-right", ("127.0.0.1",)))
    store = SecretStore("web", dict([outer, inner] if outer_first else [inner, outer]))
    echoed = "got left-0123456789-right and 0123456789"
    assert store.scrub(echoed) == "got <secret OUTER> and <secret INNER>"
    assert store.scrub_bytes(echoed.encode()) == b"got <secret OUTER> and <secret INNER>"


#: A granted name's DNS answer: a public address beside one a name may never lead to, in
#: each order and IPv6 disguise (the host must check every address, not the one it uses).
_MIXED_ANSWERS = [
    ["1.1.1.1", "127.0.0.1"],
    ["127.0.0.1", "1.1.1.1"],
    ["2606:4700:4700::1111", "::ffff:10.0.0.1"],  # IPv4-mapped private
    ["1.1.1.1", "fe80::1%lo"],  # link-local with a zone
    ["1.1.1.1", "64:ff9b::a9fe:a9fe"],  # NAT64 of the metadata address
    ["1.1.1.1", "2002:7f00:1::"],  # 6to4 of loopback
    ["1.1.1.1", "169.254.169.254"],
]


@pytest.mark.parametrize("addresses", _MIXED_ANSWERS)
async def test_a_granted_name_whose_dns_answer_holds_any_internal_address_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    """The nameserver is the attacker's (DNS rebinding); the host's resolver is replaced by
    one answering ``addresses`` for the granted name, nothing else."""
    asked: list[str] = []

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    rt, plugin = await _runtime(tmp_path, ["http:http://api.rebind.test"], timeout="2 s")
    with anyio.fail_after(DEADLINE):
        async with rt:
            web = await rt.load(plugin)
            with pytest.raises(PermissionDenied) as info:
                await _raw(web, "http://api.rebind.test/")
    assert asked == ["api.rebind.test"]
    assert "resolves to" in info.value.message
