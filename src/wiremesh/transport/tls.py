"""gRPC credentials for mutual TLS, from the PEM files ``wiremesh certs init`` writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from wiremesh.errors import ConfigError

__all__ = ["TlsFiles", "open_channel"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS {what} {path}: {exc.strerror or exc} "
            "(create development certificates with 'wiremesh certs init')"
        ) from None


@dataclass(frozen=True)
class TlsFiles:
    """The CA that signs every certificate in the mesh, and this process's own pair."""

    ca: Path
    cert: Path
    key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate, require one signed by the CA."""
        return grpc.ssl_server_credentials(
            [(_read(self.key, "key"), _read(self.cert, "certificate"))],
            root_certificates=_read(self.ca, "CA certificate"),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side: trust only the CA, present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate"),
            private_key=_read(self.key, "key"),
            certificate_chain=_read(self.cert, "certificate"),
        )


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address``: TLS with ``credentials``, plaintext without."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)
