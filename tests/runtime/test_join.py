"""``wiremesh run`` on many hosts: supervisors that join one mesh through Redis.

Two supervisors on this machine stand for two hosts: each runs in a folder of its own
(its own data_dir) with the same wiremesh.toml, and starts only its part of the mesh.
Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) are the machine's; each test names
a mesh of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tests.fixtures.meshes import (
    FIXTURES,
    RunningMesh,
    eventually,
    mesh_client,
    serving,
    serving_nodes,
    supervising,
)
from wiremesh.cli import app
from wiremesh.client import MeshClient
from wiremesh.errors import ConfigError
from wiremesh.runtime.config import (
    MeshConfig,
    config_from_text,
    load_config,
)
from wiremesh.runtime.placement import parse_replicas, place
from wiremesh.runtime.supervisor import ProcessState, Supervisor

#: the password in the registry's URL: the machine's Redis takes any password for
#: ``default``, so the URL works, and it must show nowhere a local user can read it
REDIS_SECRET = "s3cret-" + secrets.token_hex(8)
REDIS_URL = f"redis://default:{REDIS_SECRET}@127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def mesh_name() -> Iterator[str]:
    """A mesh name of this test's own; its keys are removed from Redis afterwards."""
    name = f"join-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        keys = list(client.scan_iter(match=f"wm:{{{name}}}:*"))
        if keys:
            client.delete(*keys)
        client.srem("wiremesh:meshes", name)
    finally:
        client.close()


def write_join_mesh(folder: Path, name: str, extra: str = "", *, url: str = REDIS_URL) -> Path:
    """``folder/wiremesh.toml``: the same file on every host of the mesh ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""\
[mesh]
name = "{name}"
drain_grace = 2
default_timeout = 5
python_path = ["{FIXTURES}", "{folder.parent}"]

[registry]
backend = "redis"
url = "{url}"
heartbeat_interval = 0.5
ttl = 2.0

[broker]
url = "{AMQP_URL}"

[restart]
initial_backoff = 0.2
max_backoff = 1

[gateway]
enabled = false

[services.echo]
target = "svc_echo:Echo"

[services.multi]
target = "svc_multi:Multi"

[hosts.a]
services = ["echo"]
replicas = {{ echo = 2 }}
"""
    path = folder / "wiremesh.toml"
    path.write_text(text + extra)
    return path


def node_pids(client: MeshClient, service: str) -> dict[str, int]:
    return {n.node_id: n.pid for n in serving(client, service)}


# ------------------------------------------------------------------------- two hosts


async def test_two_hosts_join_one_mesh_call_each_other_and_drain_apart(
    tmp_path: Path, mesh_name: str
) -> None:
    write_join_mesh(tmp_path / "a", mesh_name)
    write_join_mesh(tmp_path / "b", mesh_name)
    # host a runs its table ([hosts.a]: echo, 2 nodes); host b names its part itself
    with (
        RunningMesh(tmp_path / "a", "--host", "a") as a,
        RunningMesh(tmp_path / "b", "--services", "multi", "--replicas", "multi=2") as b,
    ):
        client_a = await mesh_client(tmp_path / "a")
        client_b = await mesh_client(tmp_path / "b")
        try:
            # each host sees the other's nodes, and only its own supervisor started them
            echo = await serving_nodes(client_b, "echo", 2, timeout=20)
            multi = await serving_nodes(client_a, "multi", 2, timeout=20)
            assert {n.node_id for n in echo} == set(a.node_pids())
            assert {n.node_id for n in multi} == set(b.node_pids())
            assert f"mesh {mesh_name}: host a runs echo (2 nodes)" in a.output
            assert f"mesh {mesh_name}: this host runs multi (2 nodes)" in b.output
            # a call from one host's client reaches the other host's service
            assert await client_a.call("multi.whoami") in {n.node_id for n in multi}
            reply = await client_b.call("echo.whoami")
            assert (reply["node"], reply["pid"]) in {(n.node_id, n.pid) for n in echo}

            # what the CLI of a host needs is in its mesh.json, for its owner only; what
            # is shown has no password
            described = json.loads((tmp_path / "a" / ".wiremesh" / "mesh.json").read_text())
            assert (described["registry"], described["name"]) == (REDIS_URL, mesh_name)
            assert (tmp_path / "a" / ".wiremesh" / "mesh.json").stat().st_mode & 0o777 == 0o600
            assert "registry at redis://default:***@127.0.0.1:6379/0" in a.output
            assert REDIS_SECRET not in a.output + b.output

            # host a drains (Ctrl-C); host b's nodes serve on, untouched
            before = node_pids(client_b, "multi")
            a.send(signal.SIGINT)
            failures: list[BaseException] = []
            answered = 0
            while a.process is not None and a.process.poll() is None:
                try:
                    await client_b.call("multi.whoami", timeout=2)
                    answered += 1
                except Exception as exc:  # every failure is the finding
                    failures.append(exc)
                await asyncio.sleep(0.02)
            assert await a.exit_code() == 0
            assert not failures, failures
            assert answered > 0
            await eventually(lambda: not serving(client_b, "echo"), 10, "host a's nodes to go")
            assert node_pids(client_b, "multi") == before
            assert await client_b.call("multi.whoami") in before
            assert b.process is not None and b.process.poll() is None
            assert not b.matches(r"exited with|restart in|unresponsive"), b.output
            assert not (tmp_path / "a" / ".wiremesh" / "mesh.json").exists()
        finally:
            await client_a.close()
            await client_b.close()


# ------------------------------------------------------------------------- no secret shown


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


async def test_no_child_shows_a_password_or_a_secret_in_its_arguments_or_environment(
    tmp_path: Path, mesh_name: str
) -> None:
    gateway_secret = "gw-" + secrets.token_hex(16)
    write_join_mesh(
        tmp_path / "a",
        mesh_name,
        f'\n[gateway.auth]\nsecret = "{gateway_secret}"\n',
    )
    config = tmp_path / "a" / "wiremesh.toml"
    config.write_text(config.read_text().replace("enabled = false", "enabled = true\nport = 0"))
    with RunningMesh(tmp_path / "a", "--services", "echo") as a:
        await a.line(r"^echo-\w+: serving at ", timeout=20)
        await a.line(r"^gateway-\w+: serving at ", timeout=20)
        children = a.node_pids()
        assert len(children) == 2, a.output  # one node, one gateway
        secrets_shown = [REDIS_SECRET.encode(), b"guest:guest", gateway_secret.encode()]
        for node_id, pid in children.items():
            command = _read(f"/proc/{pid}/cmdline")
            # the launch came on the standard input: the last argument is "-"
            assert command.split(b"\0")[-2:] == [b"-", b""], (node_id, command)
            environment = _read(f"/proc/{pid}/environ")
            assert command and environment, f"{node_id} (pid {pid}) is gone"
            for secret in secrets_shown:
                assert secret not in command, (node_id, command)
                assert secret not in environment, (node_id, secret)
        supervisor = _read(f"/proc/{a.pid}/cmdline")
        assert all(secret not in supervisor for secret in secrets_shown)
        a.send(signal.SIGTERM)
        assert await a.exit_code() == 0


# ------------------------------------------------------------------------- stores

STORES = '''\
"""Services of the store tests: each opens its store when it starts."""

import sqlalchemy as sa

from wiremesh import Context, Service, rpc

tables = sa.MetaData()
notes = sa.Table("notes", tables, sa.Column("id", sa.Integer, primary_key=True))


class Ledger(Service):
    name = "ledger"

    async def on_start(self) -> None:
        await self.store.create_all(tables)


class Journal(Service):
    name = "journal"

    async def on_start(self) -> None:
        await self.store.create_all(tables)

    @rpc
    async def add(self, ctx: Context) -> int:
        async with self.store.transaction() as tx:
            await tx.execute(notes.insert())
            rows = await tx.execute(sa.select(sa.func.count()).select_from(notes))
            return int(rows.scalar_one())
'''


async def test_a_service_with_no_store_url_cannot_open_its_store_on_a_redis_registry(
    tmp_path: Path, mesh_name: str
) -> None:
    """A service that opens its store needs a url (or a SQLite file named on purpose);
    a stateless one needs none."""
    module = f"svc_stores_{secrets.token_hex(3)}"
    (tmp_path / f"{module}.py").write_text(STORES)
    journal = tmp_path / "journal.db"
    config = write_join_mesh(
        tmp_path / "a",
        mesh_name,
        f'\n[services.ledger]\ntarget = "{module}:Ledger"\n'
        f'\n[services.journal]\ntarget = "{module}:Journal"\n'
        f'store = "sqlite+aiosqlite:///{journal}"\n',
    )
    async with supervising(config) as (supervisor, lines):
        ledger = next(s for s in supervisor.slots if s.service == "ledger")
        await eventually(lambda: ledger.state is ProcessState.FAILED, 20, "ledger to fail")
        assert any("services.ledger.store: ledger has no store url" in line for line in lines), (
            lines
        )
        assert ledger.restarts == 0
        others = [s for s in supervisor.slots if s.service != "ledger"]
        await eventually(
            lambda: all(s.state is ProcessState.SERVING for s in others), 20, "the others"
        )
        client = await mesh_client(tmp_path / "a")
        try:
            assert await client.call("journal.add") == 1
            assert await client.call("echo.echo", "stateless") == "stateless"
        finally:
            await client.close()
    assert journal.is_file()
    assert not (tmp_path / "a" / ".wiremesh" / "data" / "ledger" / "store.db").exists()


# ------------------------------------------------------------------------- configuration

REDIS_REGISTRY = '[registry]\nbackend = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
AMQP = f'[broker]\nurl = "{AMQP_URL}"\n'
NAMED = '[mesh]\nname = "shop"\n'
ECHO = '[services.echo]\ntarget = "svc_echo:Echo"\n'


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            REDIS_REGISTRY + AMQP,
            "wiremesh.toml: mesh.name: required with a Redis registry: every host must name "
            "the same mesh",
        ),
        (
            NAMED + REDIS_REGISTRY,
            "wiremesh.toml: broker.url: the embedded broker lives on one machine",
        ),
        (
            NAMED + REDIS_REGISTRY + '[broker]\nurl = "embedded"\n',
            "wiremesh.toml:7: broker.url: the embedded broker lives on one machine",
        ),
        (
            NAMED + AMQP + ECHO + '[hosts.app-1]\nservices = ["echo", "billing"]\n',
            "wiremesh.toml:8: hosts.app-1.services[1]: no service 'billing' in [services] "
            "(services: echo)",
        ),
        (
            NAMED + ECHO + '[hosts.app-1]\nservices = ["echo"]\nreplicas = { multi = 2 }\n',
            "wiremesh.toml:7: hosts.app-1.replicas.multi: 'multi' does not run on this host",
        ),
        (
            '[registry]\nbackend = "redis"\n',
            'wiremesh.toml:1: registry.url: backend = "redis" needs the url of the Redis',
        ),
        (
            NAMED + AMQP + REDIS_REGISTRY + "port = 7400\n",
            "wiremesh.toml:8: registry.port: a Redis registry has no port of its own",
        ),
        (
            '[registry]\nurl = "redis://127.0.0.1:6379/0"\n',
            "wiremesh.toml:2: registry.url: only a Redis registry has a url",
        ),
        (
            '[registry]\nbackend = "redis"\nurl = "http://app:pw@127.0.0.1/"\n',
            'wiremesh.toml:3: registry.url: registry url must be a Redis url, "redis://',
        ),
    ],
    ids=[
        "name-missing",
        "embedded-broker-by-default",
        "embedded-broker-written",
        "host-names-unknown-service",
        "host-replicas-of-a-service-not-there",
        "url-missing",
        "port-with-redis",
        "url-with-embedded",
        "url-not-redis",
    ],
)
def test_a_redis_mesh_refuses_what_does_not_span_hosts(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = error_of(text, tmp_path)
    assert expected in message
    assert ":pw@" not in message  # a refused url is shown without its password


def test_a_redis_mesh_reports_every_problem_at_once(tmp_path: Path) -> None:
    lines = error_of(REDIS_REGISTRY, tmp_path).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["mesh.name", "broker.url"]


def test_the_timings_are_the_same_on_both_registries_unless_written(tmp_path: Path) -> None:
    redis_mesh = config_from_text(NAMED + AMQP + REDIS_REGISTRY, root=tmp_path)
    assert (redis_mesh.registry.heartbeat_interval, redis_mesh.registry.ttl) == (0.5, 1.5)
    loopback = config_from_text("", root=tmp_path)
    assert (loopback.registry.heartbeat_interval, loopback.registry.ttl) == (0.5, 1.5)
    written = config_from_text(
        NAMED + AMQP + REDIS_REGISTRY + "heartbeat_interval = 1\nttl = 5\n", root=tmp_path
    )
    assert (written.registry.heartbeat_interval, written.registry.ttl) == (1.0, 5.0)
    advertised = config_from_text('[mesh]\nadvertise = "10.0.0.5"\n', root=tmp_path)
    assert advertised.mesh.advertise == "10.0.0.5"


# ------------------------------------------------------------------------- placement

HOSTS = (
    NAMED
    + AMQP
    + REDIS_REGISTRY
    + ECHO
    + '[services.multi]\ntarget = "svc_multi:Multi"\nreplicas = 2\n'
    + '[hosts.app-1]\nservices = ["echo", "multi"]\nreplicas = { echo = 3 }\ngateway = false\n'
    + '[hosts."edge.example.com"]\nservices = []\ngateway = true\n'
)


def test_a_host_runs_its_table_the_command_line_over_it(tmp_path: Path) -> None:
    config = config_from_text(HOSTS, root=tmp_path)
    # the table named like this machine, by its hostname or the hostname's first label
    assert place(config, hostname="app-1.example.com").replicas == {"echo": 3, "multi": 2}
    assert place(config, hostname="app-1").host == "app-1"
    assert place(config, hostname="edge.example.com").replicas == {}
    assert place(config, hostname="edge.example.com").gateway is True
    # no table for this machine: every service, the gateway as [gateway] says
    anywhere = place(config, hostname="db-7")
    assert (anywhere.replicas, anywhere.gateway, anywhere.host) == (
        {"echo": 1, "multi": 2},
        None,
        None,
    )
    # --host picks a table; --services and --replicas override what it says
    assert place(config, hostname="db-7", host="app-1").gateway is False
    chosen = place(
        config,
        host="app-1",
        services=["multi"],
        replicas=parse_replicas(["multi=5"]),
        gateway=True,
    )
    assert (chosen.replicas, chosen.gateway) == ({"multi": 5}, True)
    assert place(config, replicas={"echo": 4}, hostname="app-1").replicas == {
        "echo": 4,
        "multi": 2,
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"host": "app-9"}, "--host app-9: no [hosts.app-9] table (host tables: app-1, "),
        ({"services": ["echo", "nope"]}, "--services: no service 'nope' in [services]"),
        ({"replicas": {"nope": 2}}, "--replicas nope=2: no service 'nope' in [services]"),
        (
            {"services": ["echo"], "replicas": {"multi": 2}},
            "--replicas multi=2: 'multi' does not run on this host (it runs echo)",
        ),
    ],
    ids=["unknown-host", "unknown-service", "replicas-unknown", "replicas-not-here"],
)
def test_placement_errors_name_the_option(
    tmp_path: Path, options: dict[str, object], expected: str
) -> None:
    config = config_from_text(HOSTS, root=tmp_path)
    with pytest.raises(ConfigError) as caught:
        place(config, hostname="db-7", **options)  # type: ignore[arg-type]
    assert expected in str(caught.value)


@pytest.mark.parametrize("value", ["orders", "orders=", "=3", "orders=0", "orders=three"])
def test_a_replicas_option_is_service_equals_count(value: str) -> None:
    with pytest.raises(ConfigError, match="expected SERVICE=N"):
        parse_replicas([value])


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ((), "mesh.name: required with a Redis registry"),
        (("--host", "app-9"), "--host app-9: no [hosts.app-9] table"),
        (("--replicas", "3"), "--replicas '3': expected SERVICE=N"),
    ],
    ids=["bad-file", "unknown-host", "bare-replicas-with-a-file"],
)
def test_run_refuses_a_bad_mesh_or_option_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: tuple[str, ...], expected: str
) -> None:
    text = HOSTS if arguments else REDIS_REGISTRY + AMQP + ECHO
    (tmp_path / "wiremesh.toml").write_text(
        text.replace("[mesh]\n", f'[mesh]\npython_path = ["{FIXTURES}"]\n')
    )
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["run", "--plain", *arguments])
    assert done.exit_code == 2, done.output
    assert expected in " ".join(done.output.split())
    assert not (tmp_path / ".wiremesh" / "mesh.json").exists()


def test_the_file_of_a_redis_mesh_loads_with_its_hosts(tmp_path: Path) -> None:
    path = tmp_path / "wiremesh.toml"
    path.write_text(HOSTS)
    config = load_config(path)
    assert config.registry.redis and config.mesh.name == "shop"
    assert config.hosts["edge.example.com"].gateway is True
    assert config.hosts["app-1"].replicas == {"echo": 3}
    assert os.path.samefile(config.root, tmp_path)
    # what the supervisor hands its gateway: the configuration as JSON, validated again
    again = MeshConfig.model_validate_json(config.model_dump_json())
    assert again.registry == config.registry and again.hosts == config.hosts


def test_a_host_imports_only_the_services_it_runs(tmp_path: Path) -> None:
    """Another host's code need not be installed here."""
    text = (
        f'[mesh]\nname = "shop"\npython_path = ["{FIXTURES}"]\n'
        + AMQP
        + REDIS_REGISTRY
        + ECHO
        + '[services.elsewhere]\ntarget = "svc_not_installed_here:Elsewhere"\n'
    )
    config = config_from_text(text, root=tmp_path)
    Supervisor(config, placement=place(config, services=["echo"])).check()
    with pytest.raises(ConfigError, match="svc_not_installed_here"):
        Supervisor(config, placement=place(config)).check()
