"""Meshes with a browser gateway for the browser tests: ``wiremesh run`` in a folder, over
``wss`` with development certificates. Test modules import it as ``tests.browser.gateways``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

from tests.fixtures.meshes import RunningMesh  # noqa: E402


@dataclass
class Gateway:
    """A mesh run by ``wiremesh run`` with its gateway over ``wss``: where it serves
    (``url``, ``https://127.0.0.1:<port>``) and the development token it printed."""

    folder: Path
    running: RunningMesh
    url: str
    token: str

    def mint(self, subject: str = "dev", ttl: float = 3600.0) -> str:
        """Another token this gateway accepts."""
        from wiremesh.gateway.auth import dev_secret, mint_token

        secret = dev_secret(self.folder / ".wiremesh")
        assert secret is not None
        return mint_token(secret, subject=subject, ttl=ttl)


def run_with_gateway(folder: Path, config: str) -> Gateway:
    """Write ``config`` as ``folder/wiremesh.toml``, make development certificates, start
    ``wiremesh run`` and wait until its gateway serves. The caller stops ``running``."""
    from wiremesh.transport.certs import create_dev_ca

    (folder / "wiremesh.toml").write_text(config)
    create_dev_ca(folder / ".wiremesh" / "certs")
    running = RunningMesh(folder).start()
    try:
        found = running.wait_for_line(r"^gateway: (https://\S+?)/#token=(\S+)$", timeout=30)
    except BaseException:
        running.stop()
        raise
    return Gateway(folder, running, found.group(1), found.group(2))
