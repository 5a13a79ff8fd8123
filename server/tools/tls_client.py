"""Client-side TLS options for ``warpserve models`` and ``warpserve bench``.

The flag names are those of tritonclient's own gRPC examples (``--ssl``,
``--root-certificates``, ``--private-key``, ``--certificate-chain``), which map one to one
onto ``tritonclient.grpc.InferenceServerClient(ssl=True, root_certificates=...,
private_key=..., certificate_chain=...)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import grpc


class ClientTlsError(ValueError):
    """TLS options that cannot be used; the message names the flag."""


def add_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``suppress``: leave the attribute unset when the flag is absent (for options that
    are accepted both before and after a subcommand)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--ssl",
        action="store_true",
        default=default(False),
        help="connect with TLS (implied by the three options below); without "
        "--root-certificates the system's CA store is trusted",
    )
    parser.add_argument(
        "--root-certificates",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="CA certificates that sign the server's certificate",
    )
    parser.add_argument(
        "--private-key",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="the client's private key, for a server with mutual TLS",
    )
    parser.add_argument(
        "--certificate-chain",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="the client's certificate, for a server with mutual TLS",
    )


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """Credentials from the parsed options; None for a plaintext channel."""
    root = getattr(args, "root_certificates", None)
    key = getattr(args, "private_key", None)
    chain = getattr(args, "certificate_chain", None)
    if not (getattr(args, "ssl", False) or root or key or chain):
        return None
    if (key is None) != (chain is None):
        given, missing = ("--private-key", "--certificate-chain")[:: 1 if key else -1]
        raise ClientTlsError(
            f"{given} needs {missing}: a client certificate is a key and its chain"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read("--root-certificates", root),
        private_key=_read("--private-key", key),
        certificate_chain=_read("--certificate-chain", chain),
    )


def _read(flag: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientTlsError(f"{flag} {path}: {exc.strerror or exc}") from None


def channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
