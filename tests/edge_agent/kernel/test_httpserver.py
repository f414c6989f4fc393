"""The web server both programs share: a body over the limit is refused before it is read
(declared or streamed), and with a certificate it serves HTTPS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from edge_agent.kernel.httpserver import GRACEFUL_SHUTDOWN_S, WebServer
from tests.conftest import free_port

LIMIT = 1000
CHUNK = 256
RESPONSE_WAIT_S = 10.0
GRACE_S = 0.5  # what this file's servers wait for requests under way when stopping


def echo_app() -> FastAPI:
    """Answers with the length of the body it read; a pass-through middleware as the real
    apps have, so a cut-off body unwinds through one."""
    app = FastAPI()

    @app.middleware("http")
    async def pass_through(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    @app.post("/echo")
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    return app


def self_signed_certificate(folder: Path, name: str = "page") -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost; the certificate is its own
    CA, so a client may verify the server with it as `cafile`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def serving(scenario: Callable[[WebServer], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        server = WebServer(echo_app(), "127.0.0.1", free_port(), max_body_bytes=LIMIT, **options)
        await server.start()
        try:
            return await scenario(server)
        finally:
            await server.stop()

    return asyncio.run(main())


async def post_headers(server: WebServer, extra: str
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    await writer.drain()
    return reader, writer


def test_a_declared_body_over_the_limit_is_refused_after_the_headers_alone() -> None:
    async def scenario(server: WebServer) -> bytes:
        reader, writer = await post_headers(server, f"Content-Length: {300 * 1024 * 1024}\r\n")
        try:  # not one byte of the 300 MiB is sent
            return await asyncio.wait_for(reader.read(), RESPONSE_WAIT_S)
        finally:
            writer.close()

    response = serving(scenario)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"connection: close" in response.lower()
    assert b"at most 1000 bytes per request" in response


async def stream_until_answered(server: WebServer) -> tuple[bytes, int]:
    """Send a chunked body until the server answers: (its answer, bytes sent)."""
    reader, writer = await post_headers(server, "Transfer-Encoding: chunked\r\n")
    answer = asyncio.create_task(reader.read())
    sent = 0
    try:
        while not answer.done() and sent < 100 * LIMIT:
            writer.write(f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n")
            await writer.drain()
            sent += CHUNK
            await asyncio.wait({answer}, timeout=0.05)  # the server's turn to read it
    except ConnectionError:
        pass  # the server closed after answering; the answer is waiting to be read
    response = await asyncio.wait_for(answer, RESPONSE_WAIT_S)
    writer.close()
    return response, sent


def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    response, sent = serving(stream_until_answered)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent <= LIMIT + 2 * CHUNK, f"{sent} bytes went in before the server refused"


def test_a_body_within_the_limit_is_read_whole() -> None:
    async def scenario(server: WebServer) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            async def chunks() -> Any:
                for _ in range(3):
                    yield b"y" * 300

            return [await http.post("/echo", content=b"z" * LIMIT),
                    await http.post("/echo", content=chunks())]

    fixed, streamed = serving(scenario)
    assert (fixed.status_code, fixed.text) == (200, str(LIMIT))
    assert (streamed.status_code, streamed.text) == (200, "900")


def test_a_path_with_its_own_limit_reads_a_larger_body_up_to_that_limit() -> None:
    """An upload path that bounds its body itself: more than the server's limit gets through
    to the app, and the server still cuts a body off at the path's own limit."""
    async def scenario(server: WebServer) -> tuple[httpx.Response, bytes, int]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            larger = await http.post("/echo", content=b"z" * (3 * LIMIT))
        return (larger, *await stream_until_answered(server))

    larger, over, sent = serving(scenario, body_limits={"/echo": 4 * LIMIT})
    assert (larger.status_code, larger.text) == (200, str(3 * LIMIT))
    assert over.startswith(b"HTTP/1.1 413") and f"at most {4 * LIMIT} bytes".encode() in over
    assert sent <= 4 * LIMIT + 2 * CHUNK, f"{sent} bytes went in before the server refused"


def test_with_a_certificate_the_server_speaks_https(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path)

    async def scenario(server: WebServer) -> tuple[str, httpx.Response]:
        trusted = ssl.create_default_context(cafile=str(cert_file))
        async with httpx.AsyncClient(base_url=server.url, verify=trusted) as http:
            return server.url, await http.post("/echo", content=b"hello")

    url, response = serving(scenario, tls_cert_file=cert_file, tls_key_file=key_file)
    assert url.startswith("https://127.0.0.1:")
    assert (response.status_code, response.text) == (200, "5")


def test_an_unusable_certificate_stops_the_start_with_what_to_set(tmp_path: Path) -> None:
    cert_file, _ = self_signed_certificate(tmp_path)
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text("not a key")

    async def start() -> None:
        server = WebServer(echo_app(), "127.0.0.1", free_port(), setting="ui.port",
                           tls_cert_file=cert_file, tls_key_file=wrong_key)
        await server.start()

    with pytest.raises(OSError, match=r"cannot use the certificate .*page\.crt with the key "
                                      r".*wrong\.key.*set ui\.tls_cert_file and ui\.tls_key_file"):
        asyncio.run(start())


def test_stopping_is_not_held_up_by_a_client_that_never_finishes_its_request() -> None:
    async def scenario() -> float:
        server = WebServer(echo_app(), "127.0.0.1", free_port(), max_body_bytes=LIMIT,
                           graceful_shutdown_s=GRACE_S)
        await server.start()
        # Declares 500 bytes, sends 10, and stays: the handler waits for the rest.
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n"
                     + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.2)  # the request is under way (nothing to wait on: it never ends)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(GRACE_S + RESPONSE_WAIT_S):
            await server.stop()
        writer.close()
        return loop.time() - started

    assert asyncio.run(scenario()) < GRACE_S + RESPONSE_WAIT_S


def test_stopping_waits_for_requests_under_way_5_s_unless_told_otherwise() -> None:
    assert WebServer(echo_app(), "127.0.0.1", free_port())._server.config \
        .timeout_graceful_shutdown == GRACEFUL_SHUTDOWN_S == 5.0
