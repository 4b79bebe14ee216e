"""TokenVerifier without a network: what it accepts, what it refuses, and its cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wiremesh.errors import ConfigError, PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import (
    TokenVerifier,
    check_access,
    dev_secret,
    find_token,
    mint_token,
    scopes_of,
)
from wiremesh.gateway.settings import AuthSettings, SocketServiceSettings

SECRET = "a test secret that is long enough for HS256"


def verifier(**auth: object) -> TokenVerifier:
    return TokenVerifier(AuthSettings.model_validate({"secret": SECRET, **auth}))


def test_a_good_token_gives_the_principal_and_claims() -> None:
    token = mint_token(SECRET, subject="ada", ttl=60, scopes=["a", "b"], claims={"team": "x"})
    identity = verifier().verify(token)
    assert identity.principal == "ada" and identity.claims["team"] == "x"
    assert scopes_of(identity.claims) == {"a", "b"}


def test_a_cached_token_still_expires() -> None:
    check = verifier()
    token = mint_token(SECRET, subject="ada", ttl=10)
    assert check.verify(token).principal == "ada"
    assert check.verify(token, now=time.time() + 5).principal == "ada"  # from the cache
    assert check.cached == 1
    with pytest.raises(Unauthenticated, match="expired"):
        check.verify(token, now=time.time() + 20)
    assert check.cached == 0  # an expired entry leaves the cache
    with pytest.raises(Unauthenticated, match="not valid yet"):
        check.verify(mint_token(SECRET, ttl=60, claims={"nbf": time.time() + 30}))


def test_the_cache_is_bounded() -> None:
    check = verifier()
    check.CACHE_SIZE = 3
    for i in range(10):
        check.verify(mint_token(SECRET, subject=f"u{i}", ttl=60))
    assert check.cached == 3


def test_no_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no key"):
        TokenVerifier(AuthSettings())
    assert TokenVerifier(AuthSettings(), dev_secret=SECRET).algorithms == ["HS256"]


def test_unreadable_key_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secret_file"):
        TokenVerifier(AuthSettings(secret_file=str(tmp_path / "missing")))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM"):
        TokenVerifier(AuthSettings(public_keys=[tmp_path / "bad.pem"]))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="JWKS"):
        TokenVerifier(AuthSettings(jwks_file=str(tmp_path / "bad.json")))


def test_carriers_in_order() -> None:
    headers = [
        (b"cookie", b"a=1; wiremesh_token=from-cookie"),
        (b"authorization", b"Bearer from-header"),
    ]
    assert (
        find_token(headers, ["wiremesh.v1", "bearer.from-protocol"], b"token=q") == "from-protocol"
    )
    assert find_token(headers, ["wiremesh.v1"], b"") == "from-header"
    assert find_token(headers[:1], [], b"") == "from-cookie"
    assert find_token(headers[:1], [], b"", cookie=False) is None
    assert find_token([], [], b"token=q") is None
    assert find_token([], [], b"x=1&token=q", query=True) == "q"
    assert find_token([(b"cookie", b"=;;bad\x7f")], [], b"") is None


def test_access_rules() -> None:
    rules = SocketServiceSettings(scopes=["r", "w"], roles=["admin", "member"])
    check_access({"scope": "r w extra", "roles": ["member"]}, rules)
    check_access({"scp": ["r", "w"], "roles": "admin"}, rules)
    check_access({}, None)
    for claims in ({"scope": "r", "roles": ["admin"]}, {"scope": "r w", "roles": ["guest"]}):
        with pytest.raises(PermissionDenied, match=r"lacks|none of"):
            check_access(claims, rules)


def test_dev_secret_is_made_once_and_private(tmp_path: Path) -> None:
    secret = dev_secret(tmp_path)
    assert secret and dev_secret(tmp_path) == secret
    path = tmp_path / "gateway" / "dev-secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert dev_secret(tmp_path / "other", create=False) is None
