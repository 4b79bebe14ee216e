"""The [gateway] tables of wiremesh.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from wiremesh.errors import ConfigError
from wiremesh.runtime.config import config_from_text


def test_defaults(tmp_path: Path) -> None:
    gateway = config_from_text("", root=tmp_path).gateway
    assert (gateway.enabled, gateway.host, gateway.port, gateway.tls) == (
        "auto",
        "127.0.0.1",
        8080,
        False,
    )
    assert gateway.limits.max_message_bytes == 65536
    assert gateway.limits.compression is False
    assert gateway.cookie_token and not gateway.query_token
    assert gateway.origins == [] and gateway.refresh_before == 30.0
    assert not gateway.auth.configured


def test_a_full_gateway_table(tmp_path: Path) -> None:
    text = """\
[gateway]
enabled = true
host = "0.0.0.0"
port = 8443
tls = true
origins = ["https://app.example"]
static = "web"

[gateway.auth]
secret_file = "secret.txt"
audience = "app"
issuer = "https://id.example"
algorithms = ["HS256"]

[gateway.limits]
max_message_bytes = 1024
connections_per_ip = 20
idle_timeout = 0

[gateway.services.chat]
scopes = ["chat:write"]
roles = ["member"]
text = true
"""
    config = config_from_text(text, root=tmp_path)
    gateway = config.gateway
    assert gateway.enabled is True and gateway.port == 8443 and gateway.tls
    assert gateway.auth.configured and gateway.auth.audience == "app"
    assert gateway.limits.connections_per_ip == 20 and gateway.limits.idle_timeout == 0
    assert gateway.services["chat"].text and gateway.services["chat"].scopes == ["chat:write"]
    cert, _ = config.gateway_tls_paths()
    assert cert == tmp_path / ".wiremesh" / "certs" / "node.pem"


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    return str(caught.value)


def test_errors_name_the_line_and_key(tmp_path: Path) -> None:
    text = "[gateway]\nport = 8080\n\n[gateway.limits]\nburst = 0\ncolour = 1\n"
    message = error_of(text, tmp_path)
    assert "wiremesh.toml:5: gateway.limits.burst:" in message
    assert "wiremesh.toml:6: gateway.limits.colour: unknown setting" in message


def test_unknown_settings_suggest_a_close_name(tmp_path: Path) -> None:
    message = error_of("[gateway.services.chat]\nscope = []\n", tmp_path)
    assert "gateway.services.chat.scope: unknown setting (did you mean 'scopes'?)" in message


def test_plain_beyond_loopback_needs_allow_plain(tmp_path: Path) -> None:
    message = error_of('[gateway]\nhost = "0.0.0.0"\n', tmp_path)
    assert "wiremesh.toml:1: gateway:" in message and "gateway.tls = true" in message
    config_from_text('[gateway]\nhost = "0.0.0.0"\nallow_plain = true\n', root=tmp_path)
    config_from_text('[gateway]\nhost = "0.0.0.0"\ntls = true\n', root=tmp_path)


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    config = config_from_text(
        '[gateway]\ntrusted_proxies = ["10.0.0.0/8", "192.0.2.1", "::1"]\n', root=tmp_path
    )
    assert config.gateway.trusted_proxies == ["10.0.0.0/8", "192.0.2.1", "::1"]
    message = error_of('[gateway]\ntrusted_proxies = ["10.0.0.0/8", "proxy"]\n', tmp_path)
    assert "gateway.trusted_proxies" in message and "'proxy' is not an IP address" in message


def test_public_url_is_an_http_url_without_its_trailing_slash(tmp_path: Path) -> None:
    assert config_from_text("", root=tmp_path).gateway.public_url == ""
    config = config_from_text(
        '[gateway]\npublic_url = "https://chat.example.com/"\n', root=tmp_path
    )
    assert config.gateway.public_url == "https://chat.example.com"
    message = error_of('[gateway]\npublic_url = "chat.example.com"\n', tmp_path)
    assert "wiremesh.toml:2: gateway.public_url" in message and "https://" in message
    message = error_of('[gateway]\npublic_url = "https://example.com/?a=1"\n', tmp_path)
    assert "no query" in message
