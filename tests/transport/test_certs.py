"""The development CA: files, modes, certificate contents and real mutual TLS over gRPC."""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import re
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wiremesh.errors import ConfigError
from wiremesh.transport.certs import CertPaths, create_dev_ca, issue_certificate, load_pem

CALL_TIMEOUT = 5.0


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
