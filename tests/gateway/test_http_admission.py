"""The HTTP door's decisions with no sockets: admission (deadline, rate, concurrency,
size), problem bodies for every status of the table, and bearer tokens."""

from __future__ import annotations

import time

import pytest

from wiremesh.errors import (
    STATUS_TABLE,
    InternalError,
    InvalidPayload,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceError,
    Status,
    Unauthenticated,
    Unavailable,
    error_class_for,
    rebuild,
)
from wiremesh.gateway.admission import Admission, BadHeader
from wiremesh.gateway.auth import TokenVerifier, mint_token
from wiremesh.gateway.http_auth import BearerCheck
from wiremesh.gateway.problem import CONTENT_TYPE, bad_request, method_not_allowed, problem_for
from wiremesh.gateway.settings import AuthSettings, SocketServiceSettings

SECRET = "a-secret-of-thirty-two-bytes-or-more!"


def admission(**overrides: float) -> Admission:
    settings: dict[str, float] = {
        "rate": 2.0,
        "burst": 3,
        "concurrency": 2,
        "max_body": 100,
        "default_timeout": 10.0,
        "max_timeout": 30.0,
    }
    settings.update(overrides)
    return Admission(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- deadline


def test_the_deadline_header_defaults_and_is_capped() -> None:
    rules = admission()
    assert rules.deadline(None) == 10.0
    assert rules.deadline("2.5") == 2.5
    assert rules.deadline(" 1 ") == 1.0
    assert rules.deadline("600") == 30.0
    assert admission(default_timeout=60.0).deadline(None) == 30.0  # the cap holds for both


@pytest.mark.parametrize("value", ["soon", "", "-1", "0", "inf", "nan", "1e999", "0x10"])
def test_a_bad_deadline_header_is_refused(value: str) -> None:
    with pytest.raises(BadHeader, match="Wiremesh-Timeout"):
        admission().deadline(value)


# --------------------------------------------------------------------------- rate


def test_each_principal_has_its_own_bucket() -> None:
    rules = admission()
    for _ in range(3):
        rules.rate("alice", now=0.0)
    with pytest.raises(RateLimited) as refused:
        rules.rate("alice", now=0.0)
    assert refused.value.details == {"retry_after": 1}
    rules.rate("bob", now=0.0)
    rules.rate("alice", now=0.5)  # half a second at 2/s: one token back
    with pytest.raises(RateLimited):
        rules.rate("alice", now=0.5)


def test_retry_after_is_the_whole_seconds_until_a_token() -> None:
    rules = admission(rate=0.1, burst=1)
    rules.rate("alice", now=0.0)
    with pytest.raises(RateLimited) as refused:
        rules.rate("alice", now=2.0)
    assert refused.value.details == {"retry_after": 8}


def test_the_bucket_table_forgets_the_least_recent_principal() -> None:
    rules = Admission(
        rate=1.0,
        burst=1,
        concurrency=1,
        max_body=1,
        default_timeout=1,
        max_timeout=1,
        max_principals=2,
    )
    rules.rate("a", now=0.0)
    rules.rate("b", now=0.0)
    rules.rate("c", now=0.0)  # "a" is forgotten: it starts again with a full bucket
    rules.rate("a", now=0.0)
    with pytest.raises(RateLimited):
        rules.rate("c", now=0.0)


# -------------------------------------------------------------- concurrency, size


def test_concurrency_places_are_taken_and_given_back() -> None:
    rules = admission()
    rules.enter()
    rules.enter()
    with pytest.raises(Unavailable) as busy:
        rules.enter()
    assert busy.value.details == {"retry_after": 1}
    rules.leave()
    rules.enter()
    assert rules.in_flight == 2


def test_each_principal_holds_at_most_its_own_places() -> None:
    rules = Admission(
        rate=1.0,
        burst=1,
        concurrency=8,
        concurrency_per_principal=2,
        max_body=1,
        default_timeout=1,
        max_timeout=1,
    )
    rules.begin("mallory")
    rules.begin("mallory")
    with pytest.raises(RateLimited) as refused:
        rules.begin("mallory")
    assert refused.value.details == {"retry_after": 1}
    rules.begin("alice")  # another principal's places are its own
    rules.end("mallory")
    rules.begin("mallory")
    assert (rules.in_flight_of("mallory"), rules.in_flight_of("alice")) == (2, 1)
    for who in ("mallory", "mallory", "alice"):
        rules.end(who)
    assert rules.in_flight_of("mallory") == 0
    assert admission().concurrency_per_principal == 2  # by default: the door's own limit


def test_body_size() -> None:
    rules = admission()
    rules.body_size(100)
    with pytest.raises(PayloadTooLarge, match="100 bytes"):
        rules.body_size(101)


# ----------------------------------------------------------------------- problems


@pytest.mark.parametrize("status", list(STATUS_TABLE), ids=lambda s: s.value)
def test_every_status_has_its_problem_from_the_one_table(status: Status) -> None:
    error = error_class_for(None, status)("what went wrong")
    problem = problem_for(error, "/rpc/shop/quote")
    body = problem.body()
    assert problem.status == body["status"] == STATUS_TABLE[status].http_status
    assert body["type"] == f"urn:wiremesh:problem:{status.value}"
    assert body["title"] and body["instance"] == "/rpc/shop/quote"
    assert dict(problem.headers())[b"content-type"] == CONTENT_TYPE.encode()
    if status is Status.INTERNAL:
        assert "what went wrong" not in problem.encode().decode()
        assert body["error"] == "wiremesh.errors.InternalError"
    else:
        assert body["detail"] == "what went wrong"
        assert body["error"] == f"wiremesh.errors.{type(error).__name__}"


def test_an_invalid_payload_lists_its_fields() -> None:
    fields = [{"field": "qty", "message": "Input should be greater than 0"}]
    error = rebuild(
        "wiremesh.errors.InvalidPayload",
        Status.INVALID_PAYLOAD,
        "qty: Input should be greater than 0",
        node="shop-1",
        details={"errors": fields},
    )
    body = problem_for(error).body()
    assert body["status"] == 422
    assert body["errors"] == fields
    assert body["node"] == "shop-1"
    assert "details" not in body


def test_a_remote_service_error_keeps_its_type_and_details() -> None:
    error = rebuild(
        "shop.errors.OutOfStock", Status.FAILED_PRECONDITION, "no A-1", details={"sku": "A-1"}
    )
    assert isinstance(error, ServiceError)
    body = problem_for(error).body()
    assert (body["status"], body["error"], body["details"]) == (
        409,
        "shop.errors.OutOfStock",
        {"sku": "A-1"},
    )


def test_a_handler_crash_hides_its_type_and_message() -> None:
    error = rebuild("KeyError", Status.INTERNAL, "'password'", node="shop-1")
    body = problem_for(error).body()
    assert body["error"] == "wiremesh.errors.InternalError"
    assert "password" not in str(body) and "KeyError" not in str(body)


def test_retry_after_travels_as_a_header() -> None:
    limited = problem_for(RateLimited("slow down", details={"retry_after": 7}))
    assert dict(limited.headers())[b"retry-after"] == b"7"
    assert "details" not in limited.body()
    assert b"retry-after" not in dict(problem_for(InvalidPayload("x")).headers())


def test_http_only_problems() -> None:
    assert bad_request("not JSON").body()["type"] == "urn:wiremesh:problem:http-400"
    wrong = method_not_allowed("POST")
    assert wrong.status == 405 and dict(wrong.headers())[b"allow"] == b"POST"


# -------------------------------------------------------------------- bearer tokens


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_bearer_token_is_checked_then_remembered_until_it_expires() -> None:
    clock = Clock()
    check = BearerCheck(TokenVerifier(AuthSettings(secret=SECRET)), clock=clock)
    token = mint_token(SECRET, subject="ada", ttl=60, now=clock.now)
    assert check(f"Bearer {token}", "shop") == "ada"
    assert check(f"bearer  {token} ", "shop") == "ada"
    clock.now += 120
    with pytest.raises(Unauthenticated, match="expired"):
        check(f"Bearer {token}", "shop")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic YWRhOng=", "Bearer not-a-jwt"])
def test_no_token_or_a_bad_one_is_unauthenticated(header: str | None) -> None:
    check = BearerCheck(TokenVerifier(AuthSettings(secret=SECRET)))
    with pytest.raises(Unauthenticated):
        check(header, "shop")


def test_the_service_rules_apply() -> None:
    rules = {"vault": SocketServiceSettings(scopes=["vault:read"], roles=["admin", "ops"])}
    check = BearerCheck(TokenVerifier(AuthSettings(secret=SECRET)), rules)
    plain = f"Bearer {mint_token(SECRET, subject='ada')}"
    assert check(plain, "shop") == "ada"
    with pytest.raises(PermissionDenied, match="vault:read"):
        check(plain, "vault")
    good = mint_token(SECRET, subject="ada", scopes=["vault:read"], roles=["ops"])
    assert check(f"Bearer {good}", "vault") == "ada"


def test_internal_error_class_is_the_one_of_the_table() -> None:
    assert error_class_for(None, Status.INTERNAL) is InternalError
