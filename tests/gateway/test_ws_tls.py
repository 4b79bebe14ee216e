"""wss:// with the configured certificate (a development one from ``wiremesh certs``)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import websockets

from tests.gateway.ws_mesh import ROOMY, Chat
from wiremesh.gateway.server import Gateway
from wiremesh.testing import TestMesh, gateway_settings
from wiremesh.transport.certs import create_dev_ca


async def test_wss_with_the_configured_certificate(tmp_path: Path) -> None:
    certs = create_dev_ca(tmp_path / "certs")
    async with TestMesh(Chat, data_dir=tmp_path) as mesh:
        gateway = Gateway(
            gateway_settings(tls=True, limits=ROOMY),
            registry_address=mesh.registry.address,
            root=tmp_path,
            data_dir=tmp_path,
            tls=(certs.node_cert, certs.node_key),
        )
        await gateway.start()
        try:
            await gateway.wait_for_streams()
            assert gateway.ws_url.startswith("wss://")
            trusted = ssl.create_default_context(cafile=str(certs.ca))
            protocols = ["wiremesh.v1", f"bearer.{mesh.token('ada')}"]
            url = f"{gateway.ws_url}/ws/chat"
            async with websockets.connect(url, subprotocols=protocols, ssl=trusted) as ws:  # type: ignore[arg-type]
                await ws.send(b"over tls")
                assert await ws.recv() == b"over tls"
            # the page's origin is https://, and the probe is served over TLS too
            async with httpx.AsyncClient(verify=trusted) as http:
                response = await http.get(f"{gateway.url}/healthz")
                assert response.status_code == 200
            # a client that does not trust the certificate cannot connect
            with pytest.raises(ssl.SSLCertVerificationError):
                async with websockets.connect(
                    url, subprotocols=protocols, ssl=ssl.create_default_context()
                ):  # type: ignore[arg-type]
                    pass
            # plain ws:// to a TLS port is not a WebSocket
            with pytest.raises((websockets.InvalidMessage, OSError, websockets.InvalidStatus)):
                async with websockets.connect(
                    url.replace("wss://", "ws://"), subprotocols=protocols
                ):  # type: ignore[arg-type]
                    pass
        finally:
            await gateway.stop(0.5)
