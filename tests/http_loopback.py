"""A tiny HTTP/1.1 server on a loopback port for the ``ctx.http`` tests, and a plugin made
for each test with the grants it needs (ports are only known once a server listens).

The server reads a request's head and its ``Content-Length`` body, records it (with the raw
bytes, so a test can say a value never arrived in any form) and hands it to the test's
handler, which writes whatever it likes: a plain answer, a redirect, an endless body, or
nothing at all. One request per connection; the client closes after each.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

PLUGIN_TEMPLATE = Path(__file__).resolve().parent / "hostapi_plugins" / "http_client"
#: Bounds on what the test server reads: the requests are the host's, all small.
MAX_HEAD = 64 * 1024
#: No wait in a handler may outlast this (a bug must fail the test, not hang it).
HANDLER_DEADLINE = 20.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw: bytes


Handler = Callable[[Seen, anyio.abc.SocketStream], Awaitable[None]]


@dataclass
class Loopback:
    port: int
    seen: list[Seen] = field(default_factory=list)
    #: Set each time a connection's handler is over (the peer closed, or it answered).
    closed: list[anyio.Event] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def grant(self) -> str:
        return f"http:http://127.0.0.1:{self.port}"


async def answer(
    stream: anyio.abc.SocketStream,
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
) -> None:
    lines = [f"HTTP/1.1 {status} X"]
    hdrs = list(headers or [])
    if not any(k.lower() == "content-length" for k, _ in hdrs):
        hdrs.append(("Content-Length", str(len(body))))
    hdrs.append(("Connection", "close"))
    lines += [f"{k}: {v}" for k, v in hdrs]
    await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


async def _read_request(stream: anyio.abc.SocketStream) -> Seen | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
        buf += chunk
        if len(buf) > MAX_HEAD:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = first.split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    need = int(headers.get("content-length", "0"))
    while len(rest) < need:
        try:
            rest += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    return Seen(method, path, headers, rest[:need], buf[: len(head) + 4] + rest[:need])


@asynccontextmanager
async def loopback(handler: Handler) -> AsyncIterator[Loopback]:
    """A server on 127.0.0.1 (a free port) calling ``handler`` per request; stopped (every
    connection closed) when the block ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = Loopback(port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        done = anyio.Event()
        server.closed.append(done)
        try:
            async with stream:
                with anyio.fail_after(HANDLER_DEADLINE):
                    seen = await _read_request(stream)
                    if seen is None:
                        return
                    server.seen.append(seen)
                    try:
                        await handler(seen, stream)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
        finally:
            done.set()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def make_plugin(root: Path, plugin_id: str, permissions: list[str]) -> Path:
    """A copy of the ``http_client`` test plugin under ``root`` with this id, requesting
    ``permissions`` (grants name ports chosen at run time)."""
    dest = root / plugin_id
    shutil.copytree(PLUGIN_TEMPLATE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (dest / "plugin.toml").read_text()
    listed = ", ".join(f'"{p}"' for p in permissions)
    manifest = manifest.replace('id = "http_client"', f'id = "{plugin_id}"')
    manifest = manifest.replace("permissions = []", f"permissions = [{listed}]")
    (dest / "plugin.toml").write_text(manifest)
    return dest


class LoopbackCA:
    """A throwaway certificate authority (Ed25519 would do, but ssl wants what OpenSSL's
    default verification takes: EC P-256) issuing server certificates for the TLS tests."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cordon test CA")])
        self.cert = (
            self._builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            # What a real CA's certificate carries, and Python 3.13's default context checks
            # (VERIFY_X509_STRICT): key usage, and key identifiers linking the chain.
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: Any, issuer: Any, public_key: Any) -> Any:
        import datetime

        now = datetime.datetime.now(datetime.UTC)
        return (
            self._x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(self._x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def client_context(self) -> ssl.SSLContext:
        from cryptography.hazmat.primitives.serialization import Encoding

        ctx = ssl.create_default_context(cadata=self.cert.public_bytes(Encoding.PEM).decode())
        return ctx

    def server_context(self, tmp: Path, *, dns: list[str], ips: list[str]) -> ssl.SSLContext:
        """A server context whose certificate names ``dns`` and ``ips``."""
        import ipaddress

        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        x509 = self._x509
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        names: list[Any] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        subject = x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, "server")])
        cert = (
            self._builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, self._hashes.SHA256())
        )
        pem = tmp / f"server-{len(list(tmp.glob('server-*')))}.pem"
        pem.write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            + cert.public_bytes(Encoding.PEM)
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pem)
        return ctx


@asynccontextmanager
async def tls_loopback(
    handler: Handler, context: ssl.SSLContext, server_names: list[str | None]
) -> AsyncIterator[Loopback]:
    """:func:`loopback` over TLS; ``server_names`` collects the SNI each client sent."""
    from anyio.streams.tls import TLSListener

    def sni(_sock: Any, name: str | None, _ctx: Any) -> None:
        server_names.append(name)

    context.sni_callback = sni
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = Loopback(port)

    async def serve(stream: Any) -> None:
        async with stream:
            with anyio.fail_after(HANDLER_DEADLINE):
                seen = await _read_request(stream)
                if seen is None:
                    return
                server.seen.append(seen)
                try:
                    await handler(seen, stream)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

    async def guarded(stream: Any) -> None:
        try:
            await serve(stream)
        except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass  # a client that refused our certificate hangs up mid-handshake

    tls = TLSListener(listener, context, standard_compatible=False)
    async with tls, anyio.create_task_group() as tg:
        tg.start_soon(tls.serve, guarded)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
