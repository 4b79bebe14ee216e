"""Whether the HTTP door takes a request: rates, concurrency, sizes, deadlines. No I/O.

The door asks, in order:

1. :meth:`Admission.rate`: one token from the principal's bucket, or ``RateLimited``
   with the seconds until the next token (``Retry-After``);
2. :meth:`Admission.begin`: one of the principal's ``concurrency_per_principal``
   places, held from before its body is read until the answer, or ``RateLimited``
   (``Retry-After: 1``); :meth:`Admission.end` gives it back. One principal's slow
   bodies or slow calls take its own places, never the others';
3. :meth:`Admission.body_size`: ``PayloadTooLarge`` for a declared or counted size over
   the limit, while the body is read;
4. :meth:`Admission.enter`: once the body is read, one of the gateway's ``concurrency``
   places, or ``Unavailable`` (the gateway is busy: 503 with ``Retry-After: 1``);
   :meth:`Admission.leave` gives it back. A body that does not come never holds one;
5. :meth:`Admission.deadline`: the call's timeout from the ``Wiremesh-Timeout`` header
   (seconds, ``> 0``), the default when absent, capped by the configured maximum.

Every method takes the time as a number (monotonic seconds), so tests drive it with plain
values.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from wiremesh.core.bucket import TokenBucket
from wiremesh.errors import InvalidPayload, PayloadTooLarge, RateLimited, Unavailable

__all__ = ["Admission", "BadHeader"]


class BadHeader(InvalidPayload):
    """A request header does not hold what it must (HTTP 400, not 422: not the payload)."""


class Admission:
    """The HTTP door's limits: per-principal token buckets (at most ``max_principals``
    of them, the least recently used forgotten first), counts of requests in flight (in
    the gateway, and of each principal), the largest body and the deadline rules.
    ``concurrency_per_principal`` defaults to ``concurrency`` (no cap of its own)."""

    __slots__ = (
        "_buckets",
        "_of_principal",
        "burst",
        "concurrency",
        "concurrency_per_principal",
        "default_timeout",
        "in_flight",
        "max_body",
        "max_principals",
        "max_timeout",
        "rate_per_second",
    )

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        concurrency: int,
        max_body: int,
        default_timeout: float,
        max_timeout: float,
        max_principals: int = 10_000,
        concurrency_per_principal: int | None = None,
    ) -> None:
        self.rate_per_second = rate
        self.burst = burst
        self.concurrency = concurrency
        self.concurrency_per_principal = concurrency_per_principal or concurrency
        self.max_body = max_body
        self.default_timeout = min(default_timeout, max_timeout)
        self.max_timeout = max_timeout
        self.max_principals = max_principals
        self.in_flight = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: requests in flight per principal (only principals with one or more)
        self._of_principal: dict[str, int] = {}

    def deadline(self, header: str | None) -> float:
        """The call's timeout in seconds for a ``Wiremesh-Timeout`` header value (``None``:
        absent). Raises :class:`BadHeader` for a value that is not a positive number."""
        if header is None:
            return self.default_timeout
        try:
            seconds = float(header)
        except ValueError:
            raise BadHeader(
                f"Wiremesh-Timeout must be a number of seconds, not {header[:40]!r}"
            ) from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise BadHeader(f"Wiremesh-Timeout must be a positive number of seconds, not {header}")
        return min(seconds, self.max_timeout)

    def rate(self, principal: str, now: float) -> None:
        """Spend one request of ``principal``'s rate, or raise :class:`RateLimited` whose
        ``details["retry_after"]`` is the whole seconds until a token is back."""
        buckets = self._buckets
        bucket = buckets.get(principal)
        if bucket is None:
            bucket = buckets[principal] = TokenBucket(self.rate_per_second, self.burst, now)
            if len(buckets) > self.max_principals:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(principal)
        if not bucket.take(now):
            wait = (1.0 - bucket.tokens(now)) / self.rate_per_second
            raise RateLimited(
                f"more than {self.rate_per_second:g} requests per second "
                f"(burst {self.burst}) from this principal",
                details={"retry_after": max(1, math.ceil(wait))},
            )

    def begin(self, principal: str) -> None:
        """Take one of ``principal``'s places, or raise :class:`RateLimited` (retry in a
        second) when it has ``concurrency_per_principal`` requests in flight already."""
        held = self._of_principal.get(principal, 0)
        if held >= self.concurrency_per_principal:
            raise RateLimited(
                f"{self.concurrency_per_principal} requests of this principal are in "
                "flight already",
                details={"retry_after": 1},
            )
        self._of_principal[principal] = held + 1

    def end(self, principal: str) -> None:
        """Give back the place :meth:`begin` took."""
        held = self._of_principal[principal] - 1
        if held:
            self._of_principal[principal] = held
        else:
            del self._of_principal[principal]

    def in_flight_of(self, principal: str) -> int:
        """How many requests of ``principal`` are in flight."""
        return self._of_principal.get(principal, 0)

    def enter(self) -> None:
        """Take one place among the requests in flight, or raise :class:`Unavailable`."""
        if self.in_flight >= self.concurrency:
            raise Unavailable(
                f"the gateway is handling {self.concurrency} HTTP requests already",
                details={"retry_after": 1},
            )
        self.in_flight += 1

    def leave(self) -> None:
        """Give back the place :meth:`enter` took."""
        self.in_flight -= 1

    def body_size(self, size: int) -> None:
        """Raise :class:`PayloadTooLarge` when a body of ``size`` bytes is over the limit."""
        if size > self.max_body:
            raise PayloadTooLarge(
                f"the body has more than {self.max_body} bytes, the most this gateway takes"
            )
