"""Deadlines: absolute points on the monotonic clock (``time.monotonic()``).

A call's deadline is fixed once, where the call starts; every nested call made while
handling it gets ``min(own timeout, what remains)``. On the wire a deadline travels as the
standard gRPC timeout (``grpc-timeout``), so a foreign client's deadline is honoured too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in time on :func:`time.monotonic`'s clock. No method reads a clock: the
    caller passes ``now`` (``time.monotonic()``, or the event loop's ``loop.time()``,
    the same clock)."""

    at: float

    @classmethod
    def after(cls, seconds: float, *, now: float) -> Deadline:
        return cls(now + seconds)

    def remaining(self, *, now: float) -> float:
        """Seconds left; negative once passed."""
        return self.at - now

    def expired(self, *, now: float) -> bool:
        return self.remaining(now=now) <= 0

    def capped(self, seconds: float | None, *, now: float) -> Deadline:
        """The earlier of this deadline and ``seconds`` from now (a nested call's deadline)."""
        if seconds is None:
            return self
        other = Deadline.after(seconds, now=now)
        return other if other.at < self.at else self
