"""What happens to a durable message after its handler ran: the delivery policy.

No I/O: the consumer (:mod:`wiremesh.messaging.consumer`) asks, the broker backend carries
the answer out. The rules:

* a message that does not decode or validate is dead at once, with the reason: it would
  fail the same way on every attempt, and a retry loop would only delay the messages
  behind it;
* a handler that raises :class:`~wiremesh.errors.InvalidPayload` says the same: dead now;
* any other failure is retried after an exponential backoff with full jitter
  (``initial * 2 ** (attempt - 1)``, capped at ``maximum``, drawn uniformly between half of
  ``initial`` and that ceiling) until ``attempts`` deliveries have failed; then the message
  is dead, with the last failure as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wiremesh.core.defaults import ATTEMPTS, RETRY_INITIAL_BACKOFF, RETRY_MAX_BACKOFF
from wiremesh.core.retry import Draws
from wiremesh.errors import InvalidPayload

__all__ = ["DeadLetter", "Delivery", "DeliveryPolicy", "Outcome", "Retry", "retry_delay"]

#: which nodes handle a durable message: one node of the service (``pool``), every node of
#: it (``broadcast``), or one node of the whole mesh (``singleton``)
Delivery = Literal["pool", "broadcast", "singleton"]

#: a reason longer than this is cut (a dead letter keeps the start of the traceback text)
MAX_REASON = 2000


@dataclass(frozen=True, slots=True)
class Retry:
    """Deliver the message again after ``delay`` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the message to the dead letters."""

    reason: str


Outcome = Retry | DeadLetter


def retry_delay(attempt: int, initial: float, maximum: float, draw: float) -> float:
    """The wait before delivery ``attempt + 1`` after delivery ``attempt`` (1-based) failed;
    ``draw`` is a uniform number in ``[0, 1)``."""
    ceiling = min(maximum, initial * 2.0 ** min(max(attempt - 1, 0), 64))
    low = min(initial / 2, ceiling)
    return low + draw * max(0.0, ceiling - low)


def reason_of(error: BaseException) -> str:
    """The text a dead letter or a retry keeps about ``error``."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retries of failed handlers: ``attempts`` deliveries at most (>= 1), backoff from
    ``initial`` seconds doubling up to ``maximum``."""

    attempts: int = ATTEMPTS
    initial: float = RETRY_INITIAL_BACKOFF
    maximum: float = RETRY_MAX_BACKOFF

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 < initial <= maximum")

    def undecodable(self, error: InvalidPayload) -> DeadLetter:
        """The message did not decode or validate: dead at once."""
        return DeadLetter(f"invalid payload: {error.message}")

    def after_failure(self, attempt: int, error: BaseException, rng: Draws) -> Outcome:
        """What to do after delivery ``attempt`` (1-based) raised ``error``; ``rng`` gives the
        backoff's jitter."""
        if isinstance(error, InvalidPayload):
            return DeadLetter(f"invalid payload: {error.message}")
        reason = reason_of(error)
        if attempt >= self.attempts:
            return DeadLetter(f"failed {attempt} time(s); last: {reason}")
        return Retry(retry_delay(attempt, self.initial, self.maximum, rng.random()), reason)
