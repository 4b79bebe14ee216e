"""TLS to the engines a mesh shares across hosts (Redis, RabbitMQ, PostgreSQL), verified
against the development CA.

Each engine runs as a private server of this module: its own free port and its own data
folder, stopped at the end; the machine's shared instances are never touched. Its
certificate comes from ``wiremesh certs issue --host 127.0.0.1`` and the clients present
``client.pem`` from ``wiremesh certs init``: these are the examples of ``docs/tls.md``.
A missing server binary skips loudly; under ``CI=true`` it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, unquote

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.fixtures.rabbitmq_node import RabbitNode, free_port, stop_group, wait_for_port
from wiremesh.errors import BrokerUnavailable
from wiremesh.messaging.backends import open_broker
from wiremesh.messaging.base import Binding, Envelope, Received
from wiremesh.messaging.store import Store

WIREMESH = str(Path(sys.executable).with_name("wiremesh"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> NoReturn:
    """Skip (loudly) when a server binary is not installed; under CI=true, fail."""
    message = f"NOT TESTED: {what} is not installed, so TLS to it is not tested here"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class DevCerts:
    """The files of ``wiremesh certs init`` plus ``certs issue --host 127.0.0.1``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    folder = tmp_path_factory.mktemp("tls-services")
    for args in (
        ("certs", "init"),
        ("certs", "issue", "--host", "127.0.0.1", "--name", "services"),
    ):
        done = subprocess.run(
            [WIREMESH, *args], cwd=folder, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
    certs = folder / ".wiremesh" / "certs"
    return DevCerts(
        ca=certs / "ca.pem",
        server_cert=certs / "services.pem",
        server_key=certs / "services-key.pem",
        client_cert=certs / "client.pem",
        client_key=certs / "client-key.pem",
    )


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_tls_port(dev_certs: DevCerts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server that speaks TLS only and requires a client certificate."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    folder = tmp_path_factory.mktemp("redis-tls")
    port = free_port()
    log = folder / "redis.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", str(dev_certs.server_cert),
                "--tls-key-file", str(dev_certs.server_key),
                "--tls-ca-cert-file", str(dev_certs.ca),
                "--tls-auth-clients", "yes",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(folder),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port(port, process, log)
        yield port
    finally:
        stop_group(process)


def rediss_url(port: int, certs: DevCerts, host: str = "127.0.0.1") -> str:
    return (
        f"rediss://{host}:{port}/0?ssl_ca_certs={quote(str(certs.ca))}"
        f"&ssl_certfile={quote(str(certs.client_cert))}"
        f"&ssl_keyfile={quote(str(certs.client_key))}"
        "&ssl_check_hostname=true"
    )


async def _ping(client: aioredis.Redis) -> Any:
    try:
        return await client.ping()
    finally:
        await client.aclose()


async def test_redis_over_tls_with_a_rediss_url(redis_tls_port: int, dev_certs: DevCerts) -> None:
    client = aioredis.Redis.from_url(rediss_url(redis_tls_port, dev_certs))
    assert await _ping(client) is True


async def test_redis_over_tls_with_keyword_arguments(
    redis_tls_port: int, dev_certs: DevCerts
) -> None:
    client = aioredis.Redis(
        host="127.0.0.1",
        port=redis_tls_port,
        ssl=True,
        ssl_ca_certs=str(dev_certs.ca),
        ssl_certfile=str(dev_certs.client_cert),
        ssl_keyfile=str(dev_certs.client_key),
        ssl_check_hostname=True,
    )
    assert await _ping(client) is True


async def test_redis_refuses_a_client_without_a_certificate(
    redis_tls_port: int, dev_certs: DevCerts
) -> None:
    url = f"rediss://127.0.0.1:{redis_tls_port}/0?ssl_ca_certs={quote(str(dev_certs.ca))}"
    with pytest.raises(RedisConnectionError):
        await _ping(aioredis.Redis.from_url(url, retry_on_error=[]))


async def test_redis_by_a_name_the_certificate_lacks_is_refused(
    redis_tls_port: int, dev_certs: DevCerts
) -> None:
    # The certificate names 127.0.0.1 only: "localhost" reaches the same server, but the
    # client cannot tell it from an impostor.
    client = aioredis.Redis.from_url(rediss_url(redis_tls_port, dev_certs, host="localhost"))
    with pytest.raises(RedisConnectionError, match="mismatch"):
        await _ping(client)


# -- RabbitMQ ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq_tls(dev_certs: DevCerts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private RabbitMQ node with a TLS listener only (peer verification on, a client
    certificate required); its own node name, ports, Erlang cookie and data folder."""
    if not RabbitNode.available():
        missing("rabbitmq-server")
    port = free_port()
    node = RabbitNode(
        tmp_path_factory.mktemp("rabbitmq-tls"),
        port=port,
        config=(
            "listeners.tcp = none\n"
            f"listeners.ssl.default = {port}\n"
            f"ssl_options.cacertfile = {dev_certs.ca}\n"
            f"ssl_options.certfile = {dev_certs.server_cert}\n"
            f"ssl_options.keyfile = {dev_certs.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        ),
    )
    try:
        node.start()
        yield port
    finally:
        node.stop()


def amqps_url(port: int, certs: DevCerts, host: str = "127.0.0.1", client: bool = True) -> str:
    url = f"amqps://guest:guest@{host}:{port}/?cafile={quote(str(certs.ca))}"
    if client:
        url += f"&certfile={quote(str(certs.client_cert))}"
        url += f"&keyfile={quote(str(certs.client_key))}"
    return url


async def test_amqp_broker_over_tls_with_an_amqps_url(
    rabbitmq_tls: int, dev_certs: DevCerts, tmp_path: Path
) -> None:
    broker = open_broker(amqps_url(rabbitmq_tls, dev_certs), data_dir=tmp_path, mesh="tls")
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(received: Received) -> None:
        await received.ack()
        got.put_nowait(received.envelope)

    try:
        await broker.start()
        binding = Binding("billing", "on_order", "event", ("orders.*",), "pool", "node-1", 16)
        await broker.consume(binding, handler)
        sent = Envelope(uuid.uuid4().hex, "event", "orders.created", b"\xa2hi", "msgpack", {})
        await broker.publish([sent], timeout=10)
        received = await asyncio.wait_for(got.get(), 10)
    finally:
        await broker.close()
    assert (received.id, received.topic, received.body) == (sent.id, sent.topic, sent.body)


@pytest.mark.parametrize(
    ("host", "client", "why"),
    [("localhost", True, "Hostname mismatch"), ("127.0.0.1", False, None)],
    ids=["by-a-name-the-certificate-lacks", "without-a-client-certificate"],
)
async def test_amqp_broker_over_tls_is_refused(
    rabbitmq_tls: int, dev_certs: DevCerts, tmp_path: Path, host: str, client: bool, why: str | None
) -> None:
    url = amqps_url(rabbitmq_tls, dev_certs, host=host, client=client)
    broker = open_broker(url, data_dir=tmp_path, mesh="tls")
    try:
        with pytest.raises(BrokerUnavailable, match=why):
            await broker.start()
    finally:
        await broker.close()


# -- PostgreSQL -------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The newest Debian-style /usr/lib/postgresql/<major>/bin, else initdb on the PATH."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()]
    if found:
        return max(found, key=lambda p: int(p.parts[-3])).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(owner: str | None) -> dict[str, Any]:
    """subprocess arguments that run a PostgreSQL binary as ``owner`` (it refuses root)."""
    if owner is None:
        return {}
    entry = pwd.getpwnam(owner)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _run(args: list[str], **options: Any) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, **options)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def postgres_tls(dev_certs: DevCerts) -> Iterator[int]:
    """A private PostgreSQL cluster that accepts TLS connections only, and only with a
    client certificate signed by the development CA (``clientcert=verify-ca``)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL (initdb)")
    owner = "postgres" if os.geteuid() == 0 else None
    try:
        run_as = _as_owner(owner)
    except KeyError:
        missing("the postgres user (PostgreSQL refuses to run as root)")
    # Not under pytest's tmp_path (mode 0700, root's): the server's user must enter it.
    folder = Path(tempfile.mkdtemp(prefix="wm-pg-tls-"))
    data = folder / "data"
    port = free_port()
    try:
        for source, name in (
            (dev_certs.ca, "ca.pem"),
            (dev_certs.server_cert, "server.pem"),
            (dev_certs.server_key, "server-key.pem"),
        ):
            shutil.copyfile(source, folder / name)
        (folder / "server-key.pem").chmod(0o600)  # PostgreSQL insists
        if run_as:
            for path in (folder, *folder.iterdir()):
                os.chown(path, run_as["user"], run_as["group"])
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        _run([*initdb, "--no-sync"], cwd=folder, **run_as)
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
            "host all all all reject\n"
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(folder),
            "ssl": "on",
            "ssl_ca_file": str(folder / "ca.pem"),
            "ssl_cert_file": str(folder / "server.pem"),
            "ssl_key_file": str(folder / "server-key.pem"),
            "fsync": "off",
        }
        options = f"-p {port} " + " ".join(f"-c {key}={value}" for key, value in settings.items())
        pg_ctl = str(bin_dir / "pg_ctl")
        log = str(folder / "server.log")
        _run([pg_ctl, "-D", str(data), "-l", log, "-w", "-t", "60", "-o", options, "start"],
             cwd=folder, **run_as)  # fmt: skip
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                 cwd=folder, **run_as)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def store_url(port: int, host: str = "127.0.0.1") -> str:
    """The store URL of the first form: the files come from PGSSLROOTCERT and friends."""
    return f"postgresql+asyncpg://postgres@{host}:{port}/postgres?ssl=verify-full"


def store_dsn_url(port: int, certs: DevCerts) -> str:
    """The store URL of the second form: a libpq URL as asyncpg's ``dsn`` parameter."""
    libpq = (
        f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full"
        f"&sslrootcert={certs.ca}&sslcert={certs.client_cert}"
        f"&sslkey={certs.client_key}"
    )
    return "postgresql+asyncpg://?dsn=" + quote(libpq, safe="")


def store_at(url: str, folder: Path) -> Store:
    return Store(url, path=folder / "unused.db", service="orders")


async def tls_of(store: Store) -> tuple[bool, str | None]:
    """Whether the store's connection is TLS, and the client certificate's subject."""
    try:
        async with store.transaction() as tx:
            row = (
                await tx.execute(
                    sa.text("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
    finally:
        await store.close()
    return row.ssl, row.client_dn


def libpq_environment(monkeypatch: pytest.MonkeyPatch, certs: DevCerts, client: bool) -> None:
    monkeypatch.setenv("PGSSLROOTCERT", str(certs.ca))
    if client:
        monkeypatch.setenv("PGSSLCERT", str(certs.client_cert))
        monkeypatch.setenv("PGSSLKEY", str(certs.client_key))
    else:
        monkeypatch.delenv("PGSSLCERT", raising=False)
        monkeypatch.delenv("PGSSLKEY", raising=False)


async def test_store_over_tls_with_ssl_in_the_url_and_the_files_in_libpq_variables(
    postgres_tls: int, dev_certs: DevCerts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libpq_environment(monkeypatch, dev_certs, client=True)
    url = store_url(postgres_tls)

    assert await tls_of(store_at(url, tmp_path)) == (True, "/CN=wiremesh client")


async def test_store_over_tls_with_a_libpq_dsn_in_the_url(
    postgres_tls: int, dev_certs: DevCerts, tmp_path: Path
) -> None:
    url = store_dsn_url(postgres_tls, dev_certs)

    assert await tls_of(store_at(url, tmp_path)) == (True, "/CN=wiremesh client")


async def test_store_by_a_name_the_certificate_lacks_is_refused(
    postgres_tls: int, dev_certs: DevCerts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libpq_environment(monkeypatch, dev_certs, client=True)
    url = store_url(postgres_tls, host="localhost")

    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await tls_of(store_at(url, tmp_path))


async def test_store_without_a_client_certificate_is_refused(
    postgres_tls: int, dev_certs: DevCerts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libpq_environment(monkeypatch, dev_certs, client=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/postgresql.crt either
    url = store_url(postgres_tls)

    with pytest.raises(sa.exc.DBAPIError, match="certificate"):
        await tls_of(store_at(url, tmp_path))


# -- the page that documents all this ---------------------------------------------------------


def test_docs_tls_md_shows_the_url_forms_tested_here() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "tls.md").read_text(encoding="utf-8")
    etc = Path("/etc/wiremesh")
    certs = DevCerts(
        ca=etc / "ca.pem",
        server_cert=etc / "services.pem",
        server_key=etc / "services-key.pem",
        client_cert=etc / "client.pem",
        client_key=etc / "client-key.pem",
    )
    assert rediss_url(6380, certs) in doc
    assert amqps_url(5671, certs) in doc
    assert store_url(5432) in doc
    assert 'store = "postgresql+asyncpg://?dsn=" + quote(libpq, safe="")' in doc
    libpq = store_dsn_url(5432, certs).partition("dsn=")[2]
    shown = doc.partition("libpq = (")[2].partition(")")[0]
    assert "".join(part.strip().strip('"') for part in shown.splitlines()) == unquote(libpq)
