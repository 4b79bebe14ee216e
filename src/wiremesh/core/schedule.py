"""When timers tick, and which ticks a node runs: no I/O, no event loop.

A :class:`Schedule` answers "the first tick after this time" and "the last tick before
it": :class:`Every` ticks at whole multiples of its period since the Unix epoch (so every
node of a mesh, reading its own clock, names the same ticks), :class:`Cron` at the times a
five-field cron expression matches in its time zone (through a daylight saving change as
cron does: a time the clock jumps over runs at the jump, 02:30 at 03:00; a time with a
fixed hour that the clock shows twice runs once).

A timer that runs once per mesh gets each tick from the broker, one copy from every node
that was up when the tick was planned (see :mod:`wiremesh.messaging.timers`). A
:class:`TickLedger` on the node that consumes them decides which copy runs: the first of
each tick; the copies after it are dropped, and so is a tick overtaken by a later one that
is already due (the later one runs instead, so a slow handler never builds a backlog).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from wiremesh.errors import ConfigError

__all__ = [
    "MIN_PERIOD",
    "TICK_PREFIX",
    "Cron",
    "Every",
    "Schedule",
    "TickLedger",
    "TickVerdict",
    "tick_from_text",
    "tick_text",
]

#: the command name of a timer's ticks is this before the method's name
#: (``<service>.tick:<method>``; no command a service declares can start with it)
TICK_PREFIX = "tick:"
#: the shortest period of an ``@timer`` (seconds)
MIN_PERIOD = 1.0


class Schedule(Protocol):
    """The ticks of one timer."""

    def after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (Unix seconds)."""

    def before(self, moment: float) -> float | None:
        """The last tick strictly before ``moment``; None when there is none."""

    def local(self, tick: float) -> datetime:
        """``tick`` as an aware datetime in the schedule's time zone."""

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Every:
    """A tick at every whole multiple of ``period`` seconds since the epoch (UTC)."""

    period: float

    def __post_init__(self) -> None:
        period = self.period
        if isinstance(period, bool) or not isinstance(period, int | float):
            raise ConfigError(f"@timer: every is a number of seconds, not {period!r}")
        if not math.isfinite(period) or period < MIN_PERIOD:
            raise ConfigError(
                f"@timer: every must be {MIN_PERIOD:g} second or more, not {period!r}"
            )

    @classmethod
    def of(cls, every: float | timedelta) -> Every:
        return cls(every.total_seconds() if isinstance(every, timedelta) else every)

    def after(self, moment: float) -> float:
        return (math.floor(moment / self.period) + 1) * self.period

    def before(self, moment: float) -> float | None:
        return (math.ceil(moment / self.period) - 1) * self.period

    def local(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, UTC)

    def describe(self) -> str:
        return f"every {self.period:g}s"


class Cron:
    """The times a five-field cron expression (minute, hour, day of month, month, day
    of week; ``*/5``, ``1-5``, ``MON``, ``L``, as :mod:`cronsim` reads them) matches,
    on the wall clock of ``tz`` (an IANA name such as ``Europe/Berlin``; UTC by
    default)."""

    __slots__ = ("expression", "tz", "zone")

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        if not isinstance(expression, str):
            raise ConfigError(f"@cron: the expression is a string, not {expression!r}")
        try:
            self.zone: tzinfo = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(
                f"@cron: unknown time zone {tz!r} (an IANA name such as 'Europe/Berlin')"
            ) from None
        try:
            if len(expression.split()) != 5:
                raise CronSimError("five fields: minute, hour, day of month, month, day of week")
            CronSim(expression, datetime.now(self.zone))
        except CronSimError as exc:
            raise ConfigError(f"@cron: bad expression {expression!r}: {exc}") from None
        self.expression = expression
        self.tz = tz

    def after(self, moment: float) -> float:
        start = datetime.fromtimestamp(moment, self.zone)
        return next(CronSim(self.expression, start)).timestamp()

    def before(self, moment: float) -> float | None:
        start = datetime.fromtimestamp(moment, self.zone)
        found = next(CronSim(self.expression, start, reverse=True), None)
        return None if found is None else found.timestamp()

    def local(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, self.zone)

    def describe(self) -> str:
        return f"cron {self.expression!r} ({self.tz})"


def tick_text(schedule: Schedule, tick: float) -> str:
    """How a tick travels (the ``wm-tick`` header): ISO 8601 with its UTC offset."""
    return schedule.local(tick).isoformat()


def tick_from_text(text: str | None) -> datetime | None:
    """The tick a ``wm-tick`` header names; None when it is missing or not an aware time."""
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


#: what a :class:`TickLedger` says of one copy of a tick
TickVerdict = Literal["run", "duplicate", "overtaken"]


class TickLedger:
    """Which copies of a timer's ticks one node runs.

    ``verdict(tick, attempt, now)``: ``"run"`` for the first copy of a tick;
    ``"duplicate"`` for another copy of a tick that ran, or that failed and waits for its
    retry (the retry itself, ``attempt > 1``, runs); ``"overtaken"`` for a first copy of
    a tick older than one that ran (a late copy: the ticks run in order), or when a later
    tick of the schedule is already due and was planned by this node (``planned_from``:
    the first tick it planned), so its copy is on the way. Then ``ran(tick)`` once it
    succeeded (or was given up; or when another node says it ran, see
    :mod:`wiremesh.messaging.timers`), ``retrying(tick)`` when it failed and comes back.
    Remembers the last ``keep`` ticks.
    """

    def __init__(self, schedule: Schedule, *, keep: int = 256) -> None:
        self.schedule = schedule
        self.keep = keep
        #: the first tick this node planned (None: none yet)
        self.planned_from: float | None = None
        #: tick -> "ran" or "retrying", oldest first
        self._seen: OrderedDict[float, str] = OrderedDict()
        #: the newest tick known to have run
        self.newest_ran: float | None = None

    def verdict(self, tick: float, attempt: int, now: float) -> TickVerdict:
        state = self._seen.get(tick)
        if state == "ran" or (state == "retrying" and attempt <= 1):
            return "duplicate"
        if attempt <= 1 and self.newest_ran is not None and tick < self.newest_ran:
            return "overtaken"
        planned = self.planned_from
        if planned is not None:
            latest = self.schedule.before(now + 1e-6)
            if latest is not None and tick < latest and latest >= planned:
                return "overtaken"
        return "run"

    def ran(self, tick: float) -> None:
        self._remember(tick, "ran")
        if self.newest_ran is None or tick > self.newest_ran:
            self.newest_ran = tick

    def retrying(self, tick: float) -> None:
        self._remember(tick, "retrying")

    def _remember(self, tick: float, state: str) -> None:
        seen = self._seen
        seen[tick] = state
        seen.move_to_end(tick)
        while len(seen) > self.keep:
            seen.popitem(last=False)
