"""A development certificate authority for mutual TLS between wiremesh nodes and clients.

:func:`create_dev_ca` writes six PEM files into one directory (created with mode ``0o700``):

``ca.pem`` / ``ca-key.pem``
    A self-signed CA ("wiremesh development CA"). Every node and client trusts ``ca.pem``;
    ``ca-key.pem`` is only needed to sign more certificates with :func:`issue_certificate`.
``node.pem`` / ``node-key.pem``
    The certificate a node serves with *and* presents when it calls other nodes (it carries
    both the serverAuth and clientAuth extended key usages). Its subjectAltName lists the
    host names and IP addresses the node is reached at.
``client.pem`` / ``client-key.pem``
    A client-only certificate (clientAuth) for tools and applications that call the mesh.

Each further host of a mesh gets its own pair from :func:`issue_host_certificate`
(``wiremesh certs issue --host NAME``), signed by the same CA: ``<name>.pem`` and
``<name>-key.pem``, valid for the names and addresses that host is reached at, for both
serverAuth and clientAuth.

A node's server is built with ``grpc.ssl_server_credentials([(node_key, node_cert)],
root_certificates=ca, require_client_auth=True)``, and a caller with
``grpc.ssl_channel_credentials(ca, client_key, client_cert)``; :func:`load_pem` reads the
files. Keys are EC P-256, unencrypted PKCS#8 and written with mode ``0o600``; certificates
are world-readable. These certificates are meant for development and private test meshes,
not as a replacement for a real PKI.

The ``cryptography`` package is an optional dependency (``pip install 'wiremesh[tls]'``);
importing this module without it raises :class:`~wiremesh.errors.ConfigError`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wiremesh.errors import ConfigError

_MISSING_CRYPTOGRAPHY = "TLS needs the 'cryptography' package: pip install 'wiremesh[tls]'"

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ConfigError(_MISSING_CRYPTOGRAPHY) from exc

__all__ = [
    "CA_COMMON_NAME",
    "CLIENT_COMMON_NAME",
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "NODE_COMMON_NAME",
    "CertPaths",
    "IssuedCertificate",
    "create_dev_ca",
    "host_certificate_name",
    "issue_certificate",
    "issue_host_certificate",
    "load_pem",
]

CA_COMMON_NAME = "wiremesh development CA"
NODE_COMMON_NAME = "wiremesh node"
CLIENT_COMMON_NAME = "wiremesh client"
CLIENT_SAN = "wiremesh-client"
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: How long every certificate is valid, in days, unless told otherwise.
DEFAULT_DAYS = 825

#: Certificates are backdated by this much, to tolerate clocks that are slightly apart.
_BACKDATE = datetime.timedelta(minutes=5)
_DIR_MODE = 0o700
_KEY_MODE = 0o600
_CERT_MODE = 0o644
#: a certificate's file stem: a plain file name, never a path or a hidden file
_FILE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class CertPaths:
    """Where the files of a development CA live."""

    ca: Path
    ca_key: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        """The standard file names inside ``directory``."""
        return cls(
            ca=directory / "ca.pem",
            ca_key=directory / "ca-key.pem",
            node_cert=directory / "node.pem",
            node_key=directory / "node-key.pem",
            client_cert=directory / "client.pem",
            client_key=directory / "client-key.pem",
        )

    def all(self) -> tuple[Path, ...]:
        """Every path, CA first."""
        return (
            self.ca,
            self.ca_key,
            self.node_cert,
            self.node_key,
            self.client_cert,
            self.client_key,
        )


def create_dev_ca(
    directory: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> CertPaths:
    """Create a development CA plus a node and a client certificate in ``directory``.

    ``hosts`` are the names and IP addresses the node certificate is valid for; ``days`` is
    the validity of every certificate. Raises :class:`ConfigError` when any of the files
    already exists and ``overwrite`` is false.
    """
    directory = Path(directory)
    _check_days(days)
    if isinstance(hosts, str):
        hosts = (hosts,)
    if not hosts:
        raise ConfigError("the node certificate needs at least one host name or IP address")
    node_names = _general_names(hosts)
    paths = CertPaths.in_directory(directory)
    if not overwrite:
        existing = [str(path) for path in paths.all() if path.exists()]
        if existing:
            raise ConfigError(
                f"certificate files already exist: {', '.join(existing)}; "
                "pass --force (overwrite=True) to replace them"
            )

    now = _now()
    ca_key = _new_key()
    ca_name = _name(CA_COMMON_NAME)
    ca_public = ca_key.public_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    node_key = _new_key()
    node_cert = _sign_leaf(
        ca_cert,
        ca_key,
        node_key,
        common_name=NODE_COMMON_NAME,
        names=node_names,
        server=True,
        client=True,
        days=days,
        now=now,
    )
    client_key = _new_key()
    client_cert = _sign_leaf(
        ca_cert,
        ca_key,
        client_key,
        common_name=CLIENT_COMMON_NAME,
        names=[x509.DNSName(CLIENT_SAN)],
        server=False,
        client=True,
        days=days,
        now=now,
    )

    _make_directory(directory)
    _write(paths.ca, _cert_pem(ca_cert), _CERT_MODE)
    _write(paths.ca_key, _key_pem(ca_key), _KEY_MODE)
    _write(paths.node_cert, _cert_pem(node_cert), _CERT_MODE)
    _write(paths.node_key, _key_pem(node_key), _KEY_MODE)
    _write(paths.client_cert, _cert_pem(client_cert), _CERT_MODE)
    _write(paths.client_key, _key_pem(client_key), _KEY_MODE)
    return paths


def issue_certificate(
    paths: CertPaths,
    out_cert: Path,
    out_key: Path,
    *,
    common_name: str,
    hosts: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
    days: int = DEFAULT_DAYS,
) -> None:
    """Sign one more certificate with the CA in ``paths`` (for another node or host).

    ``hosts`` go into the subjectAltName (IP addresses as IPAddress entries, anything else
    as DNSName); ``server`` and ``client`` choose the extended key usages. The certificate
    and its new key are written to ``out_cert`` and ``out_key``, replacing existing files.
    """
    _check_days(days)
    if not common_name:
        raise ConfigError("a certificate needs a common name")
    if not (server or client):
        raise ConfigError("a certificate must allow server use, client use or both")
    if isinstance(hosts, str):
        hosts = (hosts,)
    names = _general_names(hosts)
    ca_cert, ca_key = _load_ca(paths.ca, paths.ca_key)
    key = _new_key()
    cert = _sign_leaf(
        ca_cert,
        ca_key,
        key,
        common_name=common_name,
        names=names,
        server=server,
        client=client,
        days=days,
        now=_now(),
    )
    _write_pair(cert, key, Path(out_cert), Path(out_key))


@dataclass(frozen=True)
class IssuedCertificate:
    """What :func:`issue_host_certificate` wrote."""

    cert: Path
    key: Path
    #: the subjectAltName entries, as OpenSSL prints them (``DNS:hostb``, ``IP:10.0.0.7``)
    names: tuple[str, ...]
    not_after: datetime.datetime


def host_certificate_name(host: str) -> str:
    """The default file stem of ``host``'s certificate: ``node-`` and the host, with any
    character a file name should not carry replaced by ``-``.

    >>> host_certificate_name("hostb.internal"), host_certificate_name("fe80::1")
    ('node-hostb.internal', 'node-fe80--1')
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", host.strip().strip("[]"))
    return f"node-{cleaned.strip('.')}"


def issue_host_certificate(
    ca: Path,
    ca_key: Path,
    hosts: Sequence[str],
    *,
    out_dir: Path | None = None,
    name: str | None = None,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> IssuedCertificate:
    """Sign a certificate for one host of the mesh with the existing CA ``ca``/``ca_key``.

    The certificate is valid for every name and address in ``hosts`` (its subjectAltName)
    and for both serverAuth and clientAuth: the host's nodes serve with it and present it
    when they call nodes on other hosts. It is written to ``<out_dir>/<name>.pem`` and its
    new key to ``<out_dir>/<name>-key.pem`` (mode ``0o600``); ``out_dir`` defaults to the
    CA's folder, ``name`` to :func:`host_certificate_name` of the first host.

    Raises :class:`ConfigError` when the CA cannot be read, when ``hosts`` is empty or
    holds a bad entry, and when either file exists and ``overwrite`` is false. The CA's own
    files are never overwritten.
    """
    ca, ca_key = Path(ca), Path(ca_key)
    _check_days(days)
    if isinstance(hosts, str):
        hosts = (hosts,)
    if not hosts:
        raise ConfigError("a host certificate needs at least one host name or IP address")
    names = _general_names(hosts)
    stem = host_certificate_name(hosts[0]) if name is None else name
    if not _FILE_STEM.fullmatch(stem):
        raise ConfigError(
            f"certificate name {stem!r}: letters, digits, '.', '_' and '-' only, "
            "not starting with '.' or '-'"
        )
    folder = ca.parent if out_dir is None else Path(out_dir)
    out_cert, out_key = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    if {out_cert.resolve(), out_key.resolve()} & {ca.resolve(), ca_key.resolve()}:
        raise ConfigError(f"certificate name {stem!r} would overwrite the CA's own files")
    if not overwrite:
        existing = [str(path) for path in (out_cert, out_key) if path.exists()]
        if existing:
            raise ConfigError(
                f"certificate files already exist: {', '.join(existing)}; "
                "pass --force (overwrite=True) to replace them"
            )
    ca_cert, ca_private = _load_ca(ca, ca_key)
    key = _new_key()
    cert = _sign_leaf(
        ca_cert,
        ca_private,
        key,
        common_name=stem,
        names=names,
        server=True,
        client=True,
        days=days,
        now=_now(),
    )
    _write_pair(cert, key, out_cert, out_key)
    return IssuedCertificate(
        cert=out_cert,
        key=out_key,
        names=tuple(_describe(name) for name in names),
        not_after=cert.not_valid_after_utc,
    )


def load_pem(path: Path) -> bytes:
    """The bytes of a PEM file; :class:`ConfigError` naming ``path`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"TLS file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror or exc}") from None


# -- helpers ---------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, got {days}")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses become IPAddress entries, everything else DNSName; duplicates dropped."""
    names: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ConfigError(f"empty host name in {list(hosts)!r}")
        name: x509.GeneralName
        try:
            name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            try:
                host.encode("ascii")
            except UnicodeEncodeError:
                raise ConfigError(
                    f"host name {raw!r} is not ASCII; give its IDNA (xn--) form"
                ) from None
            name = x509.DNSName(host)
        if name not in names:
            names.append(name)
    return names


def _sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    names: Sequence[x509.GeneralName],
    server: bool,
    client: bool,
    days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    usages: list[x509.ObjectIdentifier] = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _describe(name: x509.GeneralName) -> str:
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    return f"DNS:{name.value}"


def _load_ca(ca: Path, ca_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = _load_certificate(ca)
    key = _load_ca_key(ca_key)
    if ca_cert.public_key() != key.public_key():
        raise ConfigError(f"{ca_key} is not the key of the CA certificate {ca}")
    return ca_cert, key


def _write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, out_cert: Path, out_key: Path
) -> None:
    for parent in {out_cert.parent, out_key.parent}:
        if not parent.exists():
            _make_directory(parent)
    _write(out_key, _key_pem(key), _KEY_MODE)
    _write(out_cert, _cert_pem(cert), _CERT_MODE)


def _load_certificate(path: Path) -> x509.Certificate:
    data = load_pem(path)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = load_pem(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key (wiremesh CAs use EC P-256)")
    return key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0o700; an existing one is left alone."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=_DIR_MODE, parents=True)
        os.chmod(directory, _DIR_MODE)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, atomically (temp file + rename), so
    a key is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, flags, mode)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # the umask may have removed bits; set them exactly
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if fd != -1:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
