"""TLS and mutual TLS for the server's ports, from Triton's flag names.

gRPC takes Triton's ``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``, ``--grpc-server-cert``,
``--grpc-server-key`` and ``--grpc-root-cert``. Triton's HTTP endpoint has no TLS of its
own; the ``--http-*`` flags here have the same shape and, where a file is not named,
take the gRPC one, so one certificate can serve both ports.

Files are read and checked when the server starts: a missing file, a key that does not
match its certificate or a mutual setting without a CA ends the start with the flag named
(exit 2), before any model loads, instead of in a handshake failure seen only by clients.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from warpserve.server.argtypes import boolean


class TlsConfigError(ValueError):
    """TLS flags that cannot work together, or files that cannot be used."""


@dataclass(frozen=True)
class TlsSettings:
    """What one port needs to speak TLS: PEM files, read at start."""

    port_flag: str  # "--grpc" or "--http": the flags' prefix, for messages
    cert_path: Path
    key_path: Path
    cert_chain: bytes
    private_key: bytes
    root_certs: bytes | None  # CA bundle that signs client certificates
    mutual: bool  # clients must present a certificate signed by root_certs


PORTS = {"grpc": "the gRPC port", "http": "the HTTP port"}


def add_arguments(parser: argparse.ArgumentParser, ports: tuple[str, ...] = ("grpc",)) -> None:
    """Triton's gRPC TLS flags, and for "http" the same shape with --http-."""
    for port in ports:
        _add_port_arguments(parser, port, PORTS[port])


def _add_port_arguments(parser: argparse.ArgumentParser, port: str, where: str) -> None:
    fallback = "" if port == "grpc" else " (default: the --grpc- one)"
    switches = {
        "use-ssl": f"serve TLS on {where} with --{port}-server-cert and --{port}-server-key",
        "use-ssl-mutual": f"mutual TLS on {where} (implies --{port}-use-ssl): clients must "
        f"present a certificate signed by a CA in --{port}-root-cert",
    }
    for name, text in switches.items():
        parser.add_argument(
            f"--{port}-{name}",
            type=boolean,
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help=text,
        )
    files = {
        "server-cert": f"the server's certificate chain for {where}{fallback}",
        "server-key": f"the private key of --{port}-server-cert{fallback}",
        "root-cert": "CA certificates that sign client certificates, for mutual TLS on "
        f"{where}{fallback}",
    }
    for name, text in files.items():
        parser.add_argument(f"--{port}-{name}", type=Path, default=None, metavar="PEM", help=text)


def from_args(args: argparse.Namespace, port: str) -> TlsSettings | None:
    """The settings for ``port`` ("grpc" or "http"); None when it serves plaintext.

    Raises TlsConfigError naming the flag at fault.
    """
    mutual = bool(getattr(args, f"{port}_use_ssl_mutual"))
    if not (getattr(args, f"{port}_use_ssl") or mutual):
        return None
    prefix = f"--{port}"

    def path(kind: str) -> tuple[str, Path | None]:
        own = getattr(args, f"{port}_{kind}")
        if own is None and port != "grpc":
            return f"--grpc-{kind.replace('_', '-')}", getattr(args, f"grpc_{kind}")
        return f"{prefix}-{kind.replace('_', '-')}", own

    cert_flag, cert = path("server_cert")
    key_flag, key = path("server_key")
    root_flag, root = path("root_cert")
    for flag, value in ((cert_flag, cert), (key_flag, key)):
        if value is None:
            raise TlsConfigError(f"{prefix}-use-ssl needs {flag}: name a PEM file")
    assert cert is not None and key is not None
    if mutual and root is None:
        raise TlsConfigError(
            f"{prefix}-use-ssl-mutual needs {root_flag}: the PEM file of the CA that signs "
            "the clients' certificates"
        )
    return load(prefix, (cert_flag, cert), (key_flag, key), (root_flag, root), mutual)


def load(
    prefix: str,
    cert: tuple[str, Path],
    key: tuple[str, Path],
    root: tuple[str, Path | None],
    mutual: bool,
) -> TlsSettings:
    """Read the PEM files and check that the key belongs to the certificate."""
    settings = TlsSettings(
        port_flag=prefix,
        cert_path=cert[1],
        key_path=key[1],
        cert_chain=_read(*cert),
        private_key=_read(*key),
        root_certs=None if root[1] is None else _read(root[0], root[1]),
        mutual=mutual,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert[1], key[1])
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"{cert[0]} {cert[1]} and {key[0]} {key[1]} do not make a certificate and its "
            f"private key ({exc.reason or exc}); check that both are PEM and belong together"
        ) from None
    if root[1] is not None:
        try:
            context.load_verify_locations(cafile=str(root[1]))
        except ssl.SSLError as exc:
            raise TlsConfigError(
                f"{root[0]} {root[1]} holds no usable CA certificate ({exc.reason or exc})"
            ) from None
    return settings


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def grpc_server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """What ``add_secure_port`` takes. Without mutual TLS a root bundle is not sent to
    gRPC: it would make gRPC ask clients for certificates it then does not require."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.root_certs if tls.mutual else None,
        require_client_auth=tls.mutual,
    )


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server-side context for HTTPS (aiohttp's ``ssl_context``, asyncio's ``ssl=``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_path, tls.key_path)
    if tls.mutual:
        assert tls.root_certs is not None
        context.load_verify_locations(cadata=tls.root_certs.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
