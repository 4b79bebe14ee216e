"""A whole mesh with mutual TLS: ``wiremesh certs init``, then ``[tls] enabled = true``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.fixtures.meshes import WIREMESH, RunningMesh, mesh_client, serving_nodes, write_mesh

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def wiremesh_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WIREMESH, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@dataclass
class TlsMesh:
    folder: Path
    certs: Path
    addresses: list[str]
    registry: str


async def _addresses(folder: Path) -> tuple[list[str], str]:
    client = await mesh_client(folder)
    try:
        nodes = await serving_nodes(client, "echo", 2)
        return [n.address for n in nodes], client.registry.address
    finally:
        await client.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMesh]:
    folder = tmp_path_factory.mktemp("tls-mesh")
    certs = folder / ".wiremesh" / "certs"
    made = wiremesh_cli("certs", "init", "--dir", str(certs), cwd=folder)
    assert made.returncode == 0, made.stderr
    write_mesh(
        folder, {"echo": {"target": "svc_echo:Echo", "replicas": 2}}, extra="[tls]\nenabled = true"
    )
    with RunningMesh(folder):
        addresses, registry = asyncio.run(_addresses(folder))
        yield TlsMesh(folder, certs, addresses, registry)


def health_check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse:
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    response: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=5)
    return response


def test_certs_init_writes_the_ca_node_and_client_files(mesh: TlsMesh) -> None:
    for name in ("ca.pem", "ca-key.pem", "node.pem", "node-key.pem", "client.pem"):
        assert (mesh.certs / name).is_file()
    assert oct((mesh.certs / "node-key.pem").stat().st_mode & 0o777) == "0o600"


def test_the_mesh_file_points_the_cli_at_the_client_certificate(mesh: TlsMesh) -> None:
    described = json.loads((mesh.folder / ".wiremesh" / "mesh.json").read_text())
    assert described["tls_ca"] == str(mesh.certs / "ca.pem")
    assert described["tls_cert"] == str(mesh.certs / "client.pem")
    assert described["tls_key"] == str(mesh.certs / "client-key.pem")


def test_wiremesh_call_works_over_mutual_tls(mesh: TlsMesh) -> None:
    done = wiremesh_cli("call", "echo.echo", '{"over": "tls"}', cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"over": "tls"}
    listed = wiremesh_cli("nodes", "--json", cwd=mesh.folder)
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(line)["address"] for line in listed.stdout.splitlines()) == sorted(
        mesh.addresses
    )


def test_a_channel_with_the_client_certificate_is_served(mesh: TlsMesh) -> None:
    # the control for the two refusals below: same CA, plus a client certificate
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(mesh.certs / "ca.pem").read_bytes(),
        private_key=(mesh.certs / "client-key.pem").read_bytes(),
        certificate_chain=(mesh.certs / "client.pem").read_bytes(),
    )
    for address in mesh.addresses:
        with grpc.secure_channel(address, credentials) as channel:
            assert health_check(channel).status == health_pb2.HealthCheckResponse.SERVING


def test_a_channel_without_a_client_certificate_is_refused(mesh: TlsMesh) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(mesh.certs / "ca.pem").read_bytes()
    )
    for address in [*mesh.addresses, mesh.registry]:
        with grpc.secure_channel(address, credentials) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                health_check(channel)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_an_insecure_channel_is_refused(mesh: TlsMesh) -> None:
    for address in [*mesh.addresses, mesh.registry]:
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                health_check(channel)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_tls_without_certificates_stops_the_run_with_a_hint(tmp_path: Path) -> None:
    write_mesh(tmp_path, {"echo": "svc_echo:Echo"}, extra="[tls]\nenabled = true")
    done = subprocess.run(
        [WIREMESH, "run", "--plain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
        env=os.environ,
    )
    assert done.returncode == 2
    assert "wiremesh certs init" in done.stderr
    assert str(tmp_path / ".wiremesh" / "certs") in done.stderr
    assert "started (pid" not in done.stdout
