"""TLS settings from Triton's flags: what is refused at start, and the HTTPS context."""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path

import pytest

from tests.certs import Pki, make_pki
from warpserve.server import tls
from warpserve.server.cli import main as warpserve_main
from warpserve.server.tools import tls_client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _parse(*argv: str, ports: tuple[str, ...] = ("grpc",)) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tls.add_arguments(parser, ports)
    return parser.parse_args(argv)


def _files(pki: Pki, port: str = "grpc") -> list[str]:
    return [
        f"--{port}-server-cert",
        str(pki.server_cert),
        f"--{port}-server-key",
        str(pki.server_key),
        f"--{port}-root-cert",
        str(pki.ca),
    ]


def test_plaintext_unless_asked(pki: Pki) -> None:
    assert tls.from_args(_parse(*_files(pki)), "grpc") is None
    assert tls.from_args(_parse("--grpc-use-ssl=false", *_files(pki)), "grpc") is None


def test_use_ssl_reads_the_files(pki: Pki) -> None:
    settings = tls.from_args(_parse("--grpc-use-ssl", *_files(pki)), "grpc")
    assert settings is not None and not settings.mutual
    assert settings.cert_chain == pki.server_cert.read_bytes()


def test_mutual_implies_use_ssl(pki: Pki) -> None:
    settings = tls.from_args(_parse("--grpc-use-ssl-mutual=true", *_files(pki)), "grpc")
    assert settings is not None and settings.mutual
    assert settings.root_certs == pki.ca.read_bytes()


def test_missing_key_names_the_flag(pki: Pki) -> None:
    args = _parse("--grpc-use-ssl", "--grpc-server-cert", str(pki.server_cert))
    with pytest.raises(tls.TlsConfigError, match="--grpc-server-key"):
        tls.from_args(args, "grpc")


def test_mutual_without_a_ca_names_the_flag(pki: Pki) -> None:
    flags = _files(pki)[:4]
    with pytest.raises(tls.TlsConfigError, match="--grpc-root-cert"):
        tls.from_args(_parse("--grpc-use-ssl-mutual", *flags), "grpc")


def test_a_key_of_another_certificate_is_refused(pki: Pki) -> None:
    args = _parse(
        "--grpc-use-ssl",
        "--grpc-server-cert",
        str(pki.server_cert),
        "--grpc-server-key",
        str(pki.client_key),
    )
    with pytest.raises(tls.TlsConfigError, match="do not make a certificate and its private key"):
        tls.from_args(args, "grpc")


def test_an_unreadable_file_is_named(pki: Pki, tmp_path: Path) -> None:
    args = _parse("--grpc-use-ssl", *_files(pki))
    args.grpc_server_cert = tmp_path / "missing.pem"
    with pytest.raises(tls.TlsConfigError, match=r"--grpc-server-cert .*missing\.pem"):
        tls.from_args(args, "grpc")


def test_a_root_cert_that_is_not_a_certificate_is_refused(pki: Pki) -> None:
    args = _parse("--grpc-use-ssl-mutual", *_files(pki))
    args.grpc_root_cert = pki.server_key
    with pytest.raises(tls.TlsConfigError, match="--grpc-root-cert"):
        tls.from_args(args, "grpc")


def test_http_flags_fall_back_to_the_grpc_files(pki: Pki) -> None:
    args = _parse("--http-use-ssl-mutual", *_files(pki), ports=("grpc", "http"))
    settings = tls.from_args(args, "http")
    assert settings is not None and settings.mutual and settings.port_flag == "--http"
    assert settings.cert_path == pki.server_cert


def test_serve_refuses_bad_tls_flags_before_loading(
    pki: Pki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["serve", "--model-repository", str(tmp_path), "--grpc-use-ssl"]
    assert warpserve_main(argv) == 2
    assert "--grpc-use-ssl needs --grpc-server-cert" in capsys.readouterr().err


# --- the HTTPS context, through a real handshake --------------------------------------------


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data
    finally:
        server.close()


def _client(
    pki: Pki, ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _server_context(pki: Pki, mutual: bool) -> ssl.SSLContext:
    flag = "--grpc-use-ssl-mutual" if mutual else "--grpc-use-ssl"
    settings = tls.from_args(_parse(flag, *_files(pki)), "grpc")
    assert settings is not None
    return tls.ssl_context(settings)


def test_https_context_serves_a_client_that_trusts_the_ca(pki: Pki) -> None:
    assert asyncio.run(_handshake(_server_context(pki, False), _client(pki, pki.ca))) == b"ok"


def test_https_context_is_refused_by_a_client_of_another_ca(pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_handshake(_server_context(pki, False), _client(pki, pki.other_ca)))


def test_mutual_https_context(pki: Pki) -> None:
    server = _server_context(pki, True)
    good = _client(pki, pki.ca, pki.client_cert, pki.client_key)
    assert asyncio.run(_handshake(server, good)) == b"ok"
    stranger = _client(pki, pki.ca, pki.stranger_cert, pki.stranger_key)
    for refused in (_client(pki, pki.ca), stranger):
        assert _outcome(server, refused) == "refused"


def _outcome(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """TLS 1.3 completes the client's side of the handshake before the server checks the
    client's certificate, so a refusal shows on the first read: an alert, a reset, or
    an end of stream with no data."""
    try:
        data = asyncio.run(_handshake(server, client))
    except (ssl.SSLError, ConnectionError):
        return "refused"
    return "served" if data == b"ok" else "refused"


def test_client_key_without_chain_is_refused(pki: Pki) -> None:
    args = argparse.Namespace(
        ssl=False, root_certificates=None, private_key=pki.client_key, certificate_chain=None
    )
    with pytest.raises(tls_client.ClientTlsError, match="--private-key needs --certificate-chain"):
        tls_client.channel_credentials(args)


def test_client_plaintext_unless_asked() -> None:
    args = argparse.Namespace(
        ssl=False, root_certificates=None, private_key=None, certificate_chain=None
    )
    assert tls_client.channel_credentials(args) is None
