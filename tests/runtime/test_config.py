"""Tests of wiremesh.runtime.config: the wiremesh.toml loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wiremesh.errors import ConfigError
from wiremesh.runtime.config import (
    MeshConfig,
    config_for_target,
    config_from_text,
    default_config,
    load_config,
    locate,
)

FULL = """\
[mesh]
name = "ipaas"
data_dir = "state"
host = "0.0.0.0"
default_timeout = 2.5
drain_grace = 0
max_message_bytes = 1048576
balancer = "least_outstanding"
python_path = [".", "src"]

[registry]
backend = "embedded"
port = 7400
heartbeat_interval = 0.25
ttl = 1

[tls]
enabled = true
ca = "pki/ca.pem"
cert = "pki/node.pem"
key = "pki/node-key.pem"

[restart]
initial_backoff = 1
max_backoff = 8
reset_after = 60

[services.connectors]
target = "examples.ipaas.connectors:Connectors"
replicas = 2
balancer = "round_robin"
env = { LOG_LEVEL = "debug" }

[services.billing]
target = "billing:Billing"
"""


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    return caught.value.message


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    config = config_from_text("", root=tmp_path)

    assert config.mesh.name == tmp_path.name
    assert config.mesh.host == "127.0.0.1"
    assert config.mesh.default_timeout == 10.0
    assert config.mesh.drain_grace == 10.0
    assert config.mesh.max_message_bytes == 4 * 1024 * 1024
    assert config.mesh.balancer == "round_robin"
    assert config.registry.backend == "embedded"
    assert (config.registry.port, config.registry.heartbeat_interval) == (0, 0.5)
    assert config.registry.ttl == 1.5
    assert config.tls.enabled is False
    assert (config.restart.initial_backoff, config.restart.max_backoff) == (0.5, 30.0)
    assert config.restart.reset_after == 30.0
    assert config.services == {}
    assert config.root == tmp_path
    assert config.source is None
    assert config.data_path == tmp_path / ".wiremesh"
    assert config.python_paths() == [tmp_path]


def test_full_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "wiremesh.toml"
    path.write_text(FULL, encoding="utf-8")

    config = load_config(path)

    assert config.source == path
    assert config.root == tmp_path
    assert config.mesh.name == "ipaas"
    assert config.mesh.host == "0.0.0.0"
    assert config.mesh.default_timeout == 2.5
    assert config.mesh.drain_grace == 0.0
    assert config.mesh.max_message_bytes == 1048576
    assert config.mesh.balancer == "least_outstanding"
    assert config.registry.port == 7400
    assert config.registry.ttl == 1.0
    assert config.tls.enabled is True
    assert config.restart.reset_after == 60.0
    assert list(config.services) == ["connectors", "billing"]
    connectors = config.services["connectors"]
    assert connectors.target == "examples.ipaas.connectors:Connectors"
    assert connectors.replicas == 2
    assert connectors.balancer == "round_robin"
    assert connectors.env == {"LOG_LEVEL": "debug"}
    billing = config.services["billing"]
    assert (billing.replicas, billing.balancer, billing.env) == (1, None, {})


def test_relative_paths_resolve_against_config_folder_and_data_dir(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "wiremesh.toml").write_text(FULL, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load_config("project/wiremesh.toml")
    finally:
        os.chdir(cwd)

    assert config.root == project
    assert config.source == project / "wiremesh.toml"
    assert config.data_path == project / "state"
    assert config.tls_paths() == (
        project / "state" / "pki" / "ca.pem",
        project / "state" / "pki" / "node.pem",
        project / "state" / "pki" / "node-key.pem",
    )
    assert config.python_paths() == [project, project / "src"]


def test_absolute_and_parent_paths(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    text = (
        f'[mesh]\ndata_dir = "{elsewhere}"\npython_path = ["../lib"]\n[tls]\nca = "/etc/ca.pem"\n'
    )

    config = config_from_text(text, root=tmp_path / "project")

    assert config.data_path == elsewhere
    assert config.python_paths() == [tmp_path / "lib"]
    assert config.tls_paths()[0] == Path("/etc/ca.pem")
    assert config.tls_paths()[1] == elsewhere / "certs" / "node.pem"


def test_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    text = FULL.replace("replicas = 2", 'replicas = "two"')
    assert text.splitlines()[29] == 'replicas = "two"'

    assert error_of(text, tmp_path) == (
        "wiremesh.toml:30: services.connectors.replicas: "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_load_config_errors_name_the_path_given(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[registry]\nport = 70000\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    assert caught.value.message == (
        f"{path}:2: registry.port: Input should be less than or equal to 65535"
    )


def test_unknown_setting(tmp_path: Path) -> None:
    text = '[mesh]\nname = "x"\ncolour = "red"\n'
    assert error_of(text, tmp_path) == "wiremesh.toml:3: mesh.colour: unknown setting"


def test_unknown_setting_suggests_a_close_name(tmp_path: Path) -> None:
    text = '[services.a]\ntarget = "m:C"\nreplica = 3\n'
    assert error_of(text, tmp_path) == (
        "wiremesh.toml:3: services.a.replica: unknown setting (did you mean 'replicas'?)"
    )


@pytest.mark.parametrize("key", ["root", "source"])
def test_loader_owned_fields_are_not_settings(key: str, tmp_path: Path) -> None:
    text = f'{key} = "/"\n[mesh]\nname = "x"\n'
    assert error_of(text, tmp_path) == f"wiremesh.toml:1: {key}: unknown setting"


def test_invalid_toml_reports_tomllib_line(tmp_path: Path) -> None:
    text = '[mesh]\nname = "x"\n\nhost = = "y"\n'
    message = error_of(text, tmp_path)
    assert message.startswith("wiremesh.toml:4: invalid TOML: ")
    assert "(at line 4, column" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message == f"no such configuration file: {path}"


def test_unreadable_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "wiremesh.toml"
    binary.write_bytes(b'[mesh]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert caught.value.message == f"{binary}:2: the file is not valid UTF-8"


def test_missing_target_points_at_service_header(tmp_path: Path) -> None:
    text = '[mesh]\nname = "x"\n\n[services.worker]\nreplicas = 3\n'
    assert error_of(text, tmp_path) == (
        "wiremesh.toml:4: services.worker.target: required setting is missing"
    )


@pytest.mark.parametrize("name", ["Connectors", "1st", "has space", "a" * 64, "_x", "é"])
def test_bad_service_name(name: str, tmp_path: Path) -> None:
    text = f'[mesh]\nhost = "::1"\n\n[services."{name}"]\ntarget = "m:C"\n'
    message = error_of(text, tmp_path)
    assert message.startswith("wiremesh.toml:4: services.")
    assert "invalid service name" in message
    assert "lowercase letter" in message


@pytest.mark.parametrize(
    "target", ["connectors", "mod:", ":Cls", "a..b:C", "a.b:C.D", "a-b:C", "a:b:C", "class:C"]
)
def test_bad_target(target: str, tmp_path: Path) -> None:
    text = f'[services.a]\nreplicas = 1\ntarget = "{target}"\n'
    assert error_of(text, tmp_path) == (
        "wiremesh.toml:3: services.a.target: target must look like "
        f"'module.path:ClassName', got \"{target}\""
    )


def test_ttl_must_exceed_heartbeat_interval(tmp_path: Path) -> None:
    text = "[registry]\nheartbeat_interval = 1.0\nttl = 1.0\n"
    assert error_of(text, tmp_path) == (
        "wiremesh.toml:3: registry.ttl: ttl (1.0) must be greater than heartbeat_interval (1.0)"
    )
    # With ttl left at its default, the error points at the [registry] header.
    assert error_of("\n[registry]\nheartbeat_interval = 2\n", tmp_path).startswith(
        "wiremesh.toml:2: registry.ttl: ttl (1.5) must be greater"
    )


def test_max_backoff_below_initial_backoff(tmp_path: Path) -> None:
    text = "[restart]\nmax_backoff = 1\ninitial_backoff = 2\n"
    assert error_of(text, tmp_path) == (
        "wiremesh.toml:2: restart.max_backoff: "
        "max_backoff (1.0) must not be less than initial_backoff (2.0)"
    )


def test_range_and_choice_errors(tmp_path: Path) -> None:
    text = (
        "[mesh]\n"
        "default_timeout = 0\n"
        "drain_grace = -1\n"
        'balancer = "random"\n'
        "[registry]\n"
        'backend = "etcd"\n'
    )
    assert error_of(text, tmp_path).splitlines() == [
        "wiremesh.toml:2: mesh.default_timeout: Input should be greater than 0",
        "wiremesh.toml:3: mesh.drain_grace: Input should be greater than or equal to 0",
        "wiremesh.toml:4: mesh.balancer: Input should be 'round_robin' or 'least_outstanding'",
        "wiremesh.toml:6: registry.backend: Input should be 'embedded' or 'redis'",
    ]


def test_all_errors_are_reported_in_line_order(tmp_path: Path) -> None:
    text = (
        "services.b.target = 3\n"  # 1
        "[mesh]\n"  # 2
        "python_path = [\n"  # 3
        '  ".",\n'  # 4
        "  7,\n"  # 5
        "]\n"  # 6
        "colour = 1\n"  # 7
        "[services.a]\n"  # 8
        'target = "m:C"\n'  # 9
        "env = { LOG = 3 }\n"  # 10
        "[tls]\n"  # 11
        "enabled = 2\n"  # 12
    )
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path, source_name="mesh.toml")

    lines = caught.value.message.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "mesh.toml:1",
        "mesh.toml:5",
        "mesh.toml:7",
        "mesh.toml:10",
        "mesh.toml:12",
    ]
    assert (
        lines[1] == "mesh.toml:5: mesh.python_path[1]: expected a path (a string), got an integer"
    )
    assert lines[3] == "mesh.toml:10: services.a.env.LOG: Input should be a valid string"
    assert [e["line"] for e in caught.value.details["errors"]] == [1, 5, 7, 10, 12]


def test_table_expected(tmp_path: Path) -> None:
    assert error_of('mesh = "x"\n', tmp_path) == (
        "wiremesh.toml:1: mesh: expected a table, got a string"
    )


def test_locate() -> None:
    text = (
        "# comment [fake]\n"  # 1
        "title = '''\n"  # 2
        "[not.a.header]\n"  # 3
        "x = 1\n"  # 4
        "'''\n"  # 5
        '[services."my svc"]  # header\n'  # 6
        'target = "m:C"\n'  # 7
        'env = { A = "1", "B.C" = "2" }\n'  # 8
        "[mesh]\n"  # 9
        "python_path = [\n"  # 10
        '  "a",  # first\n'  # 11
        '  "b",\n'  # 12
        "]\n"  # 13
        "registry.port = 5\n"  # 14
        "[[jobs]]\n"  # 15
        "name = 'x'\n"  # 16
    )
    assert locate(text, ("title",)) == 2
    assert locate(text, ("not",)) is None
    assert locate(text, ("x",)) is None
    assert locate(text, ("services",)) == 6
    assert locate(text, ("services", "my svc")) == 6
    assert locate(text, ("services", "my svc", "target")) == 7
    assert locate(text, ("services", "my svc", "replicas")) == 6
    assert locate(text, ("services", "my svc", "env", "B.C")) == 8
    assert locate(text, ("services", "my svc", "env", "Z")) == 8
    assert locate(text, ("mesh", "python_path")) == 10
    assert locate(text, ("mesh", "python_path", 1)) == 12
    assert locate(text, ("mesh", "registry", "port")) == 14
    assert locate(text, ("registry", "port")) is None
    assert locate(text, ("jobs", "name")) == 16
    assert locate(text, ()) is None


def test_config_for_target(tmp_path: Path) -> None:
    config = config_for_target("examples.shop.orders:Orders", root=tmp_path, replicas=3)

    assert isinstance(config, MeshConfig)
    assert list(config.services) == ["orders"]
    assert config.services["orders"].target == "examples.shop.orders:Orders"
    assert config.services["orders"].replicas == 3
    assert config.mesh.name == tmp_path.name
    assert config.root == tmp_path

    named = config_for_target("m:Orders", root=tmp_path, name="shop-orders")
    assert list(named.services) == ["shop-orders"]

    with pytest.raises(ConfigError, match=r"^services\.x\.target: target must look like"):
        config_for_target("not-a-target", root=tmp_path, name="x")
    with pytest.raises(ConfigError, match=r"^services\.x\.replicas: Input should be greater"):
        config_for_target("m:C", root=tmp_path, replicas=0, name="x")


def test_default_config(tmp_path: Path) -> None:
    config = default_config(tmp_path / "a" / ".." / "b")

    assert config.root == tmp_path / "b"
    assert config.mesh.name == "b"
    assert config.services == {}
    assert config.data_path == tmp_path / "b" / ".wiremesh"
