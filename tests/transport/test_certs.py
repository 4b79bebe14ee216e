"""The development CA: files, modes, certificate contents and real mutual TLS over gRPC."""

from __future__ import annotations

import datetime
import doctest
import importlib
import ipaddress
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wiremesh.errors import ConfigError
from wiremesh.transport import certs
from wiremesh.transport.certs import (
    CertPaths,
    create_dev_ca,
    host_certificate_name,
    issue_certificate,
    issue_host_certificate,
    load_pem,
)
from wiremesh.transport.tls import TlsFiles

CALL_TIMEOUT = 5.0
WIREMESH = str(Path(sys.executable).with_name("wiremesh"))


def wiremesh_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WIREMESH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _common_name(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


# -- files -----------------------------------------------------------------------------------


def test_creates_all_files_with_modes(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "certs"
    paths = create_dev_ca(directory)

    assert paths == CertPaths(
        ca=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        node_cert=directory / "node.pem",
        node_key=directory / "node-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    assert _mode(directory) == 0o700
    for key in (paths.ca_key, paths.node_key, paths.client_key):
        assert _mode(key) == 0o600
        data = key.read_bytes()
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8
    for cert in (paths.ca, paths.node_cert, paths.client_cert):
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert _mode(cert) & 0o022 == 0
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in paths.all())


def test_keys_are_p256(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    for cert_path in (paths.ca, paths.node_cert, paths.client_cert):
        key = _cert(cert_path).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP256R1)


def test_ca_certificate(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs", days=30)
    ca = _cert(paths.ca)

    assert _common_name(ca) == "wiremesh development CA"
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)  # self-signed
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    assert basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign

    now = datetime.datetime.now(datetime.UTC)
    assert ca.not_valid_before_utc <= now - datetime.timedelta(minutes=4)
    assert ca.not_valid_before_utc >= now - datetime.timedelta(minutes=6)
    lifetime = ca.not_valid_after_utc - now
    assert datetime.timedelta(days=29, hours=23) < lifetime <= datetime.timedelta(days=30)


def test_node_certificate(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs", hosts=("localhost", "127.0.0.1", "::1", "node-a"))
    ca = _cert(paths.ca)
    node = _cert(paths.node_cert)

    node.verify_directly_issued_by(ca)
    assert _common_name(node) == "wiremesh node"
    san = _san(node)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node-a"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _eku(node) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = node.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_client_certificate(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    client = _cert(paths.client_cert)

    client.verify_directly_issued_by(_cert(paths.ca))
    assert _common_name(client) == "wiremesh client"
    assert _eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _san(client).get_values_for_type(x509.DNSName) == ["wiremesh-client"]


def test_create_twice_needs_overwrite(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    paths = create_dev_ca(directory)
    before = {path: path.read_bytes() for path in paths.all()}

    with pytest.raises(ConfigError, match=r"already exist.*--force"):
        create_dev_ca(directory)
    assert {path: path.read_bytes() for path in paths.all()} == before  # untouched

    again = create_dev_ca(directory, overwrite=True)
    assert again == paths
    for path in paths.all():
        assert path.read_bytes() != before[path]
    for key in (paths.ca_key, paths.node_key, paths.client_key):
        assert _mode(key) == 0o600
    _cert(paths.node_cert).verify_directly_issued_by(_cert(paths.ca))
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_one_existing_file_is_enough_to_refuse(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / "client-key.pem").write_text("something precious")
    with pytest.raises(ConfigError, match=re.escape(str(directory / "client-key.pem"))):
        create_dev_ca(directory)
    assert (directory / "client-key.pem").read_text() == "something precious"


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        create_dev_ca(tmp_path / "a", hosts=())
    with pytest.raises(ConfigError):
        create_dev_ca(tmp_path / "b", days=0)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_issue_certificate(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    out_cert = tmp_path / "other" / "node-b.pem"
    out_key = tmp_path / "other" / "node-b-key.pem"

    issue_certificate(
        paths, out_cert, out_key, common_name="node-b", hosts=("node-b.internal", "10.0.0.7")
    )

    cert = _cert(out_cert)
    cert.verify_directly_issued_by(_cert(paths.ca))
    assert _common_name(cert) == "node-b"
    assert _san(cert).get_values_for_type(x509.DNSName) == ["node-b.internal"]
    assert _san(cert).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _mode(out_key) == 0o600
    assert out_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    client_only = tmp_path / "svc.pem"
    issue_certificate(paths, client_only, tmp_path / "svc-key.pem", common_name="svc", server=False)
    assert _eku(_cert(client_only)) == {ExtendedKeyUsageOID.CLIENT_AUTH}

    with pytest.raises(ConfigError):
        issue_certificate(
            paths, client_only, tmp_path / "x.pem", common_name="x", server=False, client=False
        )


def test_issue_certificate_without_ca(tmp_path: Path) -> None:
    paths = CertPaths.in_directory(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=re.escape(str(paths.ca))):
        issue_certificate(paths, tmp_path / "c.pem", tmp_path / "k.pem", common_name="x")


def test_load_pem(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    assert load_pem(paths.ca) == paths.ca.read_bytes()
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_pem(missing)


def test_missing_cryptography_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "cryptography" or name.startswith("cryptography."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # makes `import` fail
    monkeypatch.delitem(sys.modules, "wiremesh.transport.certs")
    with pytest.raises(ConfigError, match=r"pip install 'wiremesh\[tls\]'"):
        importlib.import_module("wiremesh.transport.certs")


# -- mutual TLS over gRPC --------------------------------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b"echo:" + request


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[CertPaths, int]]:
    paths = create_dev_ca(tmp_path / "certs")
    credentials = grpc.ssl_server_credentials(
        [(load_pem(paths.node_key), load_pem(paths.node_cert))],
        root_certificates=load_pem(paths.ca),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    await server.start()
    try:
        yield paths, port
    finally:
        await server.stop(None)


async def _call(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)
    try:
        # Raw bytes both ways: no serializer, no deserializer.
        echo = channel.unary_unary("/t.T/Echo", None, None)
        reply = await echo(b"ping", timeout=CALL_TIMEOUT)
        assert isinstance(reply, bytes)
        return reply
    finally:
        await channel.close(None)


async def test_mutual_tls_with_client_certificate(tls_server: tuple[CertPaths, int]) -> None:
    paths, port = tls_server
    credentials = grpc.ssl_channel_credentials(
        root_certificates=load_pem(paths.ca),
        private_key=load_pem(paths.client_key),
        certificate_chain=load_pem(paths.client_cert),
    )
    assert await _call(port, credentials) == b"echo:ping"


async def test_node_certificate_also_works_as_client(tls_server: tuple[CertPaths, int]) -> None:
    paths, port = tls_server
    credentials = grpc.ssl_channel_credentials(
        root_certificates=load_pem(paths.ca),
        private_key=load_pem(paths.node_key),
        certificate_chain=load_pem(paths.node_cert),
    )
    assert await _call(port, credentials) == b"echo:ping"


async def test_issued_certificate_works_as_client(
    tls_server: tuple[CertPaths, int], tmp_path: Path
) -> None:
    paths, port = tls_server
    cert, key = tmp_path / "extra.pem", tmp_path / "extra-key.pem"
    issue_certificate(paths, cert, key, common_name="extra", server=False)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=load_pem(paths.ca),
        private_key=load_pem(key),
        certificate_chain=load_pem(cert),
    )
    assert await _call(port, credentials) == b"echo:ping"


async def test_client_without_certificate_is_refused(tls_server: tuple[CertPaths, int]) -> None:
    paths, port = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=load_pem(paths.ca))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(port, credentials)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_from_another_ca_is_refused(
    tls_server: tuple[CertPaths, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    paths, port = tls_server
    other = create_dev_ca(tmp_path_factory.mktemp("other-ca") / "certs")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=load_pem(paths.ca),  # trusts the server ...
        private_key=load_pem(other.client_key),  # ... but presents a stranger's certificate
        certificate_chain=load_pem(other.client_cert),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(port, credentials)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- certificates for more hosts: issue_host_certificate --------------------------------------


def test_host_certificate_names_default_from_the_first_host() -> None:
    assert doctest.testmod(certs).failed == 0
    assert host_certificate_name("hostb.internal") == "node-hostb.internal"
    assert host_certificate_name("10.0.0.7") == "node-10.0.0.7"
    assert host_certificate_name("[fe80::1]") == "node-fe80--1"
    assert host_certificate_name("*.mesh.internal") == "node--.mesh.internal"


def test_issue_host_certificate_next_to_the_ca(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    issued = issue_host_certificate(paths.ca, paths.ca_key, ["hostb.internal", "10.0.0.7"])

    assert issued.cert == tmp_path / "certs" / "node-hostb.internal.pem"
    assert issued.key == tmp_path / "certs" / "node-hostb.internal-key.pem"
    assert issued.names == ("DNS:hostb.internal", "IP:10.0.0.7")
    cert = _cert(issued.cert)
    cert.verify_directly_issued_by(_cert(paths.ca))
    assert cert.not_valid_after_utc == issued.not_after
    assert _common_name(cert) == "node-hostb.internal"
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _mode(issued.key) == 0o600


def test_issue_host_certificate_refuses_to_overwrite(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    first = issue_host_certificate(paths.ca, paths.ca_key, ["hostb"])
    before = first.cert.read_bytes()

    with pytest.raises(ConfigError, match=r"already exist.*--force"):
        issue_host_certificate(paths.ca, paths.ca_key, ["hostb"])
    assert first.cert.read_bytes() == before

    again = issue_host_certificate(paths.ca, paths.ca_key, ["hostb"], overwrite=True)
    assert again.cert.read_bytes() != before


def test_issue_host_certificate_never_writes_over_the_ca(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "certs")
    ca_before = paths.ca.read_bytes()
    with pytest.raises(ConfigError, match="CA's own files"):
        issue_host_certificate(paths.ca, paths.ca_key, ["hostb"], name="ca", overwrite=True)
    for bad in ("../escape", ".hidden", "-dash", "a/b", ""):
        with pytest.raises(ConfigError, match="certificate name"):
            issue_host_certificate(paths.ca, paths.ca_key, ["hostb"], name=bad)
    with pytest.raises(ConfigError, match="at least one host"):
        issue_host_certificate(paths.ca, paths.ca_key, [])
    assert paths.ca.read_bytes() == ca_before
    assert not (tmp_path / "escape.pem").exists()


def test_issue_host_certificate_with_a_key_of_another_ca(tmp_path: Path) -> None:
    ours = create_dev_ca(tmp_path / "ours")
    theirs = create_dev_ca(tmp_path / "theirs")
    with pytest.raises(ConfigError, match="is not the key of the CA certificate"):
        issue_host_certificate(ours.ca, theirs.ca_key, ["hostb"])


# -- the command: wiremesh certs issue / certs init -------------------------------------------


def test_certs_issue_signs_a_host_certificate_with_the_existing_ca(tmp_path: Path) -> None:
    assert wiremesh_cli("certs", "init", cwd=tmp_path).returncode == 0
    folder = tmp_path / ".wiremesh" / "certs"
    ca_before = {p: p.read_bytes() for p in CertPaths.in_directory(folder).all()}

    done = wiremesh_cli(
        "certs", "issue", "--host", "hostb.internal", "--host", "10.0.0.7", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    cert_path = folder / "node-hostb.internal.pem"
    key_path = folder / "node-hostb.internal-key.pem"
    assert f"certificate: .wiremesh/certs/{cert_path.name}" in done.stdout
    assert "DNS:hostb.internal, IP:10.0.0.7" in done.stdout
    assert f"key:         .wiremesh/certs/{key_path.name} (mode 0600)" in done.stdout
    assert "signed by:   .wiremesh/certs/ca.pem" in done.stdout

    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(folder / "ca.pem"))
    assert _san(cert).get_values_for_type(x509.DNSName) == ["hostb.internal"]
    assert _san(cert).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _mode(key_path) == 0o600
    assert _private_key(key_path).public_key() == cert.public_key()
    assert {p: p.read_bytes() for p in ca_before} == ca_before  # the CA and its pairs: kept


def test_certs_issue_without_a_ca_is_a_usage_error(tmp_path: Path) -> None:
    done = wiremesh_cli("certs", "issue", "--host", "hostb", cwd=tmp_path)

    assert done.returncode == 2
    assert "no development CA" in done.stderr
    assert ".wiremesh/certs/ca.pem" in done.stderr
    assert "wiremesh certs init' first" in done.stderr
    assert not (tmp_path / ".wiremesh").exists()


def test_certs_issue_with_a_ca_elsewhere(tmp_path: Path) -> None:
    paths = create_dev_ca(tmp_path / "secure")
    out = tmp_path / "for-hostc"

    done = wiremesh_cli(
        "certs",
        "issue",
        "--host",
        "10.0.0.8",
        "--ca",
        str(paths.ca),
        "--ca-key",
        str(paths.ca_key),
        "--out",
        str(out),
        "--name",
        "node-hostc",
        "--days",
        "30",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    cert = _cert(out / "node-hostc.pem")
    cert.verify_directly_issued_by(_cert(paths.ca))
    assert _san(cert).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.8")]
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)
    assert _mode(out / "node-hostc-key.pem") == 0o600
    assert _mode(out) == 0o700

    missing_key = wiremesh_cli("certs", "issue", "--host", "x", "--ca", str(paths.ca), cwd=tmp_path)
    assert missing_key.returncode == 2
    assert ".wiremesh/certs/ca-key.pem not found" in missing_key.stderr


def test_certs_issue_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    create_dev_ca(tmp_path / ".wiremesh" / "certs")
    assert wiremesh_cli("certs", "issue", "--host", "hostb", cwd=tmp_path).returncode == 0
    cert_path = tmp_path / ".wiremesh" / "certs" / "node-hostb.pem"
    before = cert_path.read_bytes()

    again = wiremesh_cli("certs", "issue", "--host", "hostb", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exist" in again.stderr and "--force" in again.stderr
    assert cert_path.read_bytes() == before

    forced = wiremesh_cli("certs", "issue", "--host", "hostb", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert cert_path.read_bytes() != before


def test_certs_init_keeps_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    assert wiremesh_cli("certs", "init", cwd=tmp_path).returncode == 0
    paths = CertPaths.in_directory(tmp_path / ".wiremesh" / "certs")
    before = paths.ca.read_bytes()

    again = wiremesh_cli("certs", "init", cwd=tmp_path)
    assert again.returncode == 2
    assert "a development CA already exists" in again.stderr
    assert "invalidate every certificate" in again.stderr
    assert "--force" in again.stderr
    assert paths.ca.read_bytes() == before

    forced = wiremesh_cli("certs", "init", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert paths.ca.read_bytes() != before


def test_certs_issue_help_teaches() -> None:
    done = subprocess.run(
        [WIREMESH, "certs", "issue", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "wiremesh certs issue --host hostb.internal --host 10.0.0.7" in done.stdout
    assert "wiremesh certs init" in done.stdout
    for option in ("--host", "--name", "--dir", "--ca", "--ca-key", "--out", "--days"):
        assert option in done.stdout


# -- mutual TLS between hosts, with certificates from `wiremesh certs issue` ------------------


@dataclass(frozen=True)
class HostCerts:
    ca: Path
    folder: Path

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.ca, self.folder / f"{name}.pem", self.folder / f"{name}-key.pem")


@pytest.fixture(scope="module")
def host_certs(tmp_path_factory: pytest.TempPathFactory) -> HostCerts:
    """One CA and three issued pairs: host B (127.0.0.2), host C (127.0.0.3) and a pair
    issued for a name that is not the address host B is reached at."""
    folder = tmp_path_factory.mktemp("hosts")
    assert wiremesh_cli("certs", "init", cwd=folder).returncode == 0
    for hosts in (["127.0.0.2"], ["127.0.0.3"], ["hostb.internal"]):
        args = [arg for host in hosts for arg in ("--host", host)]
        done = wiremesh_cli("certs", "issue", *args, cwd=folder)
        assert done.returncode == 0, done.stderr
    certs_folder = folder / ".wiremesh" / "certs"
    return HostCerts(certs_folder / "ca.pem", certs_folder)


async def _serve_on(address: str, files: TlsFiles) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            ),
        )
    )
    port = server.add_secure_port(f"{address}:0", files.server_credentials())
    assert port > 0
    await server.start()
    return server, port


async def _call_at(address: str, port: int, files: TlsFiles) -> bytes:
    channel = grpc.aio.secure_channel(f"{address}:{port}", files.channel_credentials())
    try:
        reply = await channel.unary_unary("/t.T/Echo", None, None)(b"ping", timeout=CALL_TIMEOUT)
        assert isinstance(reply, bytes)
        return reply
    finally:
        await channel.close(None)


async def test_mutual_tls_between_hosts_with_issued_certificates(host_certs: HostCerts) -> None:
    server, port = await _serve_on("127.0.0.2", host_certs.files("node-127.0.0.2"))
    try:
        reply = await _call_at("127.0.0.2", port, host_certs.files("node-127.0.0.3"))
    finally:
        await server.stop(None)
    assert reply == b"echo:ping"


async def test_a_certificate_for_another_host_name_fails_the_call(host_certs: HostCerts) -> None:
    # Host B serves with the pair issued for hostb.internal, but is reached at 127.0.0.2:
    # the name does not match, and the caller refuses the handshake.
    server, port = await _serve_on("127.0.0.2", host_certs.files("node-hostb.internal"))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _call_at("127.0.0.2", port, host_certs.files("node-127.0.0.3"))
    finally:
        await server.stop(None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in (info.value.details() or "")
