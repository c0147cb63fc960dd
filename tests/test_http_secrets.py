"""Secrets a plugin uses but never sees: ``ctx.secret("NAME")`` is a reference; the host
puts the value into a header only on requests to the secret's hosts. Real strict workers,
real loopback servers; the value is looked for in every byte anything else received."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from structlog.testing import capture_logs

from cordon.protocol import InvalidParams, PermissionDenied
from cordon.runtime import ConfigError, PluginHandle, Runtime
from cordon.runtime._hostapi._secrets import load_secrets
from cordon.runtime._settings._config import parse_config
from cordon.runtime._settings._http_keys import SecretSpec

from .conftest import base_config
from .http_loopback import Loopback, Seen, answer, loopback, make_plugin

pytestmark = pytest.mark.anyio

DEADLINE = 20.0
#: The secret's value, and the variable the operator keeps it in.
VALUE = "s3cr3t-Value-9f2c71d4"
VAR = "CORDON_TEST_HTTP_TOKEN"


async def _echo(seen: Seen, stream: anyio.abc.SocketStream) -> None:
    """Echo every request header back, in a header and in the body (a hostile or merely
    debug-happy server reflecting the credential)."""
    if seen.path.startswith("/leak"):
        # Redirect with the credential in the URL: away from the grant, or to itself.
        where = "http://127.0.0.2:1" if seen.path == "/leak-away" else ""
        token = seen.headers.get("authorization", "")
        await answer(stream, 302, headers=[("Location", f"{where}/landed?t={token}")])
        return
    if seen.path == "/encoded":
        # The credential reflected the ways a debug endpoint might spell it.
        spelled = _spellings(seen.headers.get("authorization", "").encode())
        await answer(stream, 200, json.dumps(spelled).encode(), headers=[])
        return
    if seen.path == "/bounce":
        await answer(stream, 307, headers=[("Location", f"{seen.headers['x-next']}/landed")])
        return
    auth = seen.headers.get("authorization", "")
    await answer(
        stream,
        200,
        json.dumps({"headers": seen.headers, "body": seen.body.decode()}).encode(),
        headers=[("Content-Type", "application/json"), ("X-Echo-Auth", auth)],
    )


def _spellings(text: bytes) -> dict[str, str]:
    """``text`` encoded as reflecting servers do, at every byte alignment base64 has."""
    out = {"hex": text.hex(), "HEX": text.hex().upper()}
    for lead in (b"", b"x", b"xy", b"Basic "):
        out[f"b64 {lead!r}"] = base64.b64encode(lead + text + b"!").decode()
        out[f"b64url {lead!r}"] = base64.urlsafe_b64encode(lead + text).decode()
    out["percent"] = urllib.parse.quote(text, safe="")
    out["percent lower"] = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), out["percent"])
    return out


def _decodes_to_nothing_secret(value: str, spelled: dict[str, str]) -> None:
    """No reflected spelling, decoded back, still holds the value."""
    for how, text in spelled.items():
        if how.startswith("b64"):
            for cut in range(4):
                chunk = text[cut:]
                chunk = chunk[: len(chunk) - len(chunk) % 4]
                with contextlib.suppress(ValueError):
                    for decode in (base64.b64decode, base64.urlsafe_b64decode):
                        assert value.encode() not in decode(chunk), how
        elif how.lower() == "hex":
            assert value.encode().hex() not in text.lower(), how
        else:
            assert value not in urllib.parse.unquote(text), how


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Loopback, Loopback]]:
    """``own``: the secret's host; ``other``: granted to the plugin, but not the secret's."""
    async with loopback(_echo) as own, loopback(_echo) as other:
        yield own, other


def _config(tmp_path: Path, own: Loopback, other: Loopback) -> dict[str, Any]:
    config = base_config(tmp_path)
    config["plugins"] = {
        "web": {
            "grant": ["log", own.grant, other.grant],
            "secrets": {"TOKEN": {"env": VAR, "hosts": [f"http://127.0.0.1:{own.port}"]}},
        },
        "neighbour": {"grant": [own.grant]},
    }
    return config


def _plugins(tmp_path: Path, own: Loopback, other: Loopback) -> tuple[Path, Path]:
    web = make_plugin(tmp_path / "plugins", "web", ["log", own.grant, other.grant])
    neighbour = make_plugin(tmp_path / "plugins", "neighbour", [own.grant])
    return web, neighbour


async def _call(handle: PluginHandle, tool: str, **args: Any) -> Any:
    return await handle.call(tool, args, timeout=10)


def _nowhere(value: str, *places: object) -> None:
    for place in places:
        assert value not in repr(place), f"the secret's value leaked into {place!r}"[:300]


async def test_the_secret_reaches_its_host_and_the_plugin_sees_only_its_placeholder(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    web_dir, _ = _plugins(tmp_path, own, other)
    with anyio.fail_after(DEADLINE), capture_logs() as logs:
        async with Runtime(_config(tmp_path, own, other)) as rt:
            web = await rt.load(web_dir)
            out = await _call(
                web,
                "fetch",
                url=own.url("/api"),
                method="POST",
                body="token=<secret TOKEN>",
                secret="TOKEN",
                secret_header="Authorization",
                secret_prefix="Bearer ",
            )
            shown = await _call(web, "show_secret", name="TOKEN")
            audit = await rt.audit_trail.read("web")  # type: ignore[union-attr]
    # The server got the value, in the header and only there (the body is not substituted).
    assert own.seen[0].headers["authorization"] == f"Bearer {VALUE}"
    assert own.seen[0].body == b"token=<secret TOKEN>"
    # What came back to the plugin (an echo of it) carries the placeholder, never the value.
    assert ["x-echo-auth", "Bearer <secret TOKEN>"] in out["headers"]
    assert out["json"]["headers"]["authorization"] == "Bearer <secret TOKEN>"
    assert shown == {
        "str": "<secret TOKEN>",
        "repr": "<secret TOKEN>",
        "format": "<secret TOKEN>",
        "name": "TOKEN",
    }
    _nowhere(VALUE, out, shown, logs, audit)


async def test_a_secret_on_a_request_to_another_host_is_refused_and_nothing_is_sent(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    web_dir, _ = _plugins(tmp_path, own, other)
    with anyio.fail_after(DEADLINE), capture_logs() as logs:
        async with Runtime(_config(tmp_path, own, other)) as rt:
            web = await rt.load(web_dir)
            with pytest.raises(PermissionDenied) as info:
                await _call(web, "secret_in_error", name="TOKEN", url=other.url("/steal"))
            # The same origin on another port is another origin.
            with pytest.raises(PermissionDenied):
                await _call(
                    web, "secret_in_error", name="TOKEN", url=f"http://127.0.0.1:{own.port + 1}/"
                )
            audit = await rt.audit_trail.read("web")  # type: ignore[union-attr]
    assert other.seen == []
    assert "TOKEN" in info.value.message and str(other.port) in info.value.message
    assert info.value.permission == "secrets.TOKEN"
    _nowhere(VALUE, info.value.message, info.value.fields(), logs, audit)


async def test_a_redirect_to_another_origin_drops_the_secret_bearing_header(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    web_dir, _ = _plugins(tmp_path, own, other)
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, own, other)) as rt:
            web = await rt.load(web_dir)
            out = await _call(
                web,
                "fetch",
                url=own.url("/bounce"),
                headers={"X-Next": other.url("").rstrip("/"), "Cookie": "session=plugin-own"},
                secret="TOKEN",
                secret_header="Authorization",
            )
    assert out["status"] == 200 and out["url"] == other.url("/landed")
    # The secret's host saw it; the other origin saw neither the secret nor the cookie.
    assert own.seen[0].headers["authorization"] == VALUE
    landed = other.seen[0]
    assert "authorization" not in landed.headers and "cookie" not in landed.headers
    assert VALUE.encode() not in landed.raw


async def test_a_plugin_cannot_use_a_secret_configured_for_another_plugin(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    _, neighbour_dir = _plugins(tmp_path, own, other)
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, own, other)) as rt:
            neighbour = await rt.load(neighbour_dir)
            # The same name, to the very host web's TOKEN may go to: still not neighbour's.
            with pytest.raises(PermissionDenied, match="not configured for plugin 'neighbour'"):
                await _call(neighbour, "secret_in_error", name="TOKEN", url=own.url("/"))
    assert own.seen == []


async def test_a_missing_variable_fails_the_load_naming_plugin_secret_and_variable(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.delenv(VAR, raising=False)
    web_dir, _ = _plugins(tmp_path, own, other)
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, own, other)) as rt:
            with pytest.raises(ConfigError) as info:
                await rt.load(web_dir)
    (problem,) = info.value.problems
    assert problem["path"] == "plugins.web.secrets.TOKEN.env"
    message = problem["message"]
    assert "'web'" in message and "'TOKEN'" in message
    assert VAR in message and "not set" in message


@pytest.mark.parametrize(
    "value", ["", "k7Qz", "two\nlines-token", " padded-token ", "caf\u00e9-token", "tab\there1"]
)
def test_a_secret_value_unusable_in_a_header_is_refused_without_showing_it(value: str) -> None:
    spec = SecretSpec(env=VAR, hosts=("api.example.com",))
    with pytest.raises(ConfigError) as info:
        load_secrets("web", {"TOKEN": spec}, environ={VAR: value})
    assert VAR in str(info.value)
    if value.strip():
        assert value.strip() not in str(info.value)


def test_the_secrets_table_is_checked_at_config_time() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "defaults": {"secrets": {"A": {"env": "X", "hosts": ["a.example"]}}},
                "plugins": {
                    "web": {
                        "secrets": {
                            "B": {"env": "not a var", "hosts": ["a.example"]},
                            "C": {"env": "X", "hosts": ["a.example/path"]},
                            "D": {"env": "X", "hosts": []},
                            "E F": {"env": "X", "hosts": ["a.example"]},
                        }
                    }
                },
            }
        )
    paths = {p["path"] for p in info.value.problems}
    assert paths == {
        "defaults.secrets",
        "plugins.web.secrets.B.env",
        "plugins.web.secrets.C.hosts[0]",
        "plugins.web.secrets.D.hosts",
        'plugins.web.secrets."E F"',
    }


def test_a_secret_reference_holds_nothing_but_its_name() -> None:
    from cordon.worker._http import SecretRef, secret_ref

    ref = secret_ref("TOKEN")
    assert isinstance(ref, SecretRef)
    assert str(ref) == repr(ref) == f"{ref}" == "<secret TOKEN>"
    assert ref.__slots__ == ("name",)
    with pytest.raises(AttributeError):
        ref.name = "OTHER"
    with pytest.raises(InvalidParams):
        secret_ref("<secret X>")


def test_plugin_info_and_config_check_show_grants_and_secret_names_never_values(
    tmp_path: Path,
) -> None:
    make_plugin(tmp_path / "plugins", "web", ["http:api.github.com"])
    config = tmp_path / "cordon.toml"
    config.write_text(
        '[runtime]\nplugin-dirs = ["plugins"]\nstate-dir = "state"\n'
        '[plugins.web]\ngrant = ["http:api.github.com", "http:http://10.0.0.5:8080"]\n'
        f'[plugins.web.secrets.GH]\nenv = "{VAR}"\nhosts = ["api.github.com"]\n'
    )
    cordon = str(Path(sys.executable).with_name("cordon"))
    env = {**os.environ, VAR: VALUE}
    run = functools.partial(
        subprocess.run, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    info = run([cordon, "plugin", "info", "web", "--json", "--config", str(config)])
    text = run([cordon, "plugin", "info", "web", "--config", str(config)])
    check = run([cordon, "config", "check", str(config)])
    assert info.returncode == text.returncode == check.returncode == 0, info.stderr
    row = json.loads(info.stdout)
    # Only what the manifest requested and the operator granted is effective.
    assert row["http"] == ["http:api.github.com: requests to https://api.github.com:443"]
    assert row["secrets"] == [
        {"name": "GH", "env": VAR, "set": True, "hosts": ["https://api.github.com:443"]}
    ]
    assert f"GH from ${VAR} (set) -> https://api.github.com:443" in text.stdout
    assert "internal address, 10.0.0.5" in check.stdout
    assert f"plugins.web.secrets.GH: secret from ${VAR} (set)" in check.stdout
    for out in (info, text, check):
        assert VALUE not in out.stdout + out.stderr


async def test_a_credential_a_server_puts_in_a_redirect_url_reaches_neither_result_nor_error(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    web_dir, _ = _plugins(tmp_path, own, other)
    secret = {"secret": "TOKEN", "secret_header": "Authorization"}
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, own, other)) as rt:
            web = await rt.load(web_dir)
            landed = await _call(web, "fetch", url=own.url("/leak-here"), **secret)
            with pytest.raises(PermissionDenied) as info:
                await _call(web, "fetch", url=own.url("/leak-away"), **secret)
    assert landed["url"] == own.url("/landed?t=<secret TOKEN>")
    assert "127.0.0.2" in info.value.message
    _nowhere(VALUE, landed, info.value.message, info.value.fields())


async def test_a_server_reflecting_the_credential_encoded_hands_back_only_the_placeholder(
    tmp_path: Path, servers: tuple[Loopback, Loopback], monkeypatch: pytest.MonkeyPatch
) -> None:
    own, other = servers
    monkeypatch.setenv(VAR, VALUE)
    web_dir, _ = _plugins(tmp_path, own, other)
    secret = {"secret": "TOKEN", "secret_header": "Authorization", "secret_prefix": "Bearer "}
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, own, other)) as rt:
            web = await rt.load(web_dir)
            out = await _call(web, "fetch", url=own.url("/encoded"), **secret)
    # The control: the server really did reflect the value in every spelling.
    sent = own.seen[0].headers["authorization"].encode()
    assert VALUE.encode() in sent
    spelled = _spellings(sent)
    assert len(spelled) == 12
    # What the plugin got back: each spelling cut where the value was, nothing of it left.
    got = out["json"]
    assert sorted(got) == sorted(spelled)
    _decodes_to_nothing_secret(VALUE, got)
    assert all("<secret TOKEN>" in text for text in got.values()), got


@pytest.mark.parametrize("value", [VALUE, "a+b/c=d e%f~g", "\x21" * 8, "~" * 40])
def test_every_alignment_of_an_encoded_value_is_masked(value: str) -> None:
    store = load_secrets(
        "web", {"T": SecretSpec(env=VAR, hosts=("api.example.com",))}, environ={VAR: value}
    )
    spelled = _spellings(f"Bearer {value}".encode())
    scrubbed = {how: store.scrub(text) for how, text in spelled.items()}
    as_bytes = {how: store.scrub_bytes(text.encode()).decode() for how, text in spelled.items()}
    assert scrubbed == as_bytes
    _decodes_to_nothing_secret(value, scrubbed)
    # Text that does not hold the value is left as it was.
    assert store.scrub(base64.b64encode(b"Bearer something-else").decode()).isascii()
    assert "<secret" not in store.scrub(base64.b64encode(b"Bearer something-else").decode())
