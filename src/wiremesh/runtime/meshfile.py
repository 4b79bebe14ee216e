"""``.wiremesh/mesh.json``: how the CLI and clients find the mesh running in a folder.

``wiremesh run`` writes it when the registry is up and removes it on exit; a stale file
(its supervisor no longer runs) is ignored. It is readable by its owner only (mode 0600,
in a data folder of mode 0700): it holds the mesh's join secret, which admits a process
to the embedded registry (see :mod:`wiremesh.registry.embedded`), and may hold the
broker's password.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wiremesh.core.defaults import CALL_TIMEOUT, MAX_MESSAGE_BYTES
from wiremesh.errors import ConfigError, Unavailable
from wiremesh.runtime.private import private_folder
from wiremesh.transport.tls import TlsFiles

__all__ = ["MESH_FILE", "MeshFile", "join_secret_of"]

MESH_FILE = "mesh.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class MeshFile:
    registry: str
    pid: int
    name: str = "mesh"
    started_at: float = 0.0
    default_timeout: float = CALL_TIMEOUT
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: absolute paths of the CA and the client pair, when TLS is on
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: the broker's url: ``embedded://host:port`` (hosted by the supervisor) or ``amqp://…``
    broker: str | None = None
    #: ``[broker] quorum_queues``: how the amqp queues are declared
    quorum_queues: bool = False
    #: the browser gateway's URL, once it serves
    gateway: str | None = None
    #: what a process sends to join the embedded registry (``wm-join`` metadata on
    #: Lease); None when none is asked: TLS is on (a client certificate admits) or the
    #: registry is Redis's
    join_secret: str | None = None

    @property
    def running(self) -> bool:
        """Whether the supervisor that wrote this file still runs."""
        return _alive(self.pid)

    def client_tls(self) -> TlsFiles | None:
        if self.tls_ca and self.tls_cert and self.tls_key:
            return TlsFiles(Path(self.tls_ca), Path(self.tls_cert), Path(self.tls_key))
        return None

    def write(self, data_dir: Path) -> Path:
        """Write it, readable by its owner only: it holds the join secret, and ``broker``
        may carry a password."""
        private_folder(data_dir)
        path = data_dir / MESH_FILE
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> MeshFile:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None

    @classmethod
    def find(cls, folder: Path) -> MeshFile:
        """The live mesh of ``folder`` (its ``wiremesh.toml`` says where the data is)."""
        data_dir = folder / ".wiremesh"
        config = folder / "wiremesh.toml"
        if config.is_file():
            from wiremesh.runtime.config import load_config

            data_dir = load_config(config).data_path
        path = data_dir / MESH_FILE
        if not path.is_file():
            raise Unavailable(
                f"no mesh is running in {folder.resolve()} (start one there with 'wiremesh run')"
            )
        mesh = cls.read(path)
        if not mesh.running:
            raise Unavailable(
                f"the mesh in {folder.resolve()} is not running any more "
                f"(its supervisor, pid {mesh.pid}, is gone); start it with 'wiremesh run'"
            )
        return mesh


def join_secret_of(registry: str, data_dir: Path) -> str | None:
    """The join secret of the mesh whose registry is at ``registry``, when the mesh running
    on ``data_dir`` is that one; else None (a registry named by its address alone admits
    only a process that can read its mesh file, or one with a client certificate)."""
    try:
        mesh = MeshFile.read(data_dir / MESH_FILE)
    except ConfigError:
        return None
    return mesh.join_secret if mesh.running and mesh.registry == registry else None
