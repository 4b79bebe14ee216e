"""A token bucket: the rate limit of one connection, with no I/O and no clock of its own.

The caller passes the time (any monotonic seconds) on every use, so a bucket is a few
floats and a test drives it with plain numbers::

    >>> bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    >>> [bucket.take(0.0) for _ in range(4)]
    [True, True, True, False]
    >>> bucket.take(0.5)   # half a second refills one token
    True
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many at time ``now``; False if not
        (nothing is spent then)."""
        tokens = self._tokens
        if now > self._at:
            tokens = min(self.burst, tokens + (now - self._at) * self.rate)
            self._at = now
        if tokens >= cost:
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False

    def tokens(self, now: float) -> float:
        """The tokens available at ``now`` (without spending any)."""
        return min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
