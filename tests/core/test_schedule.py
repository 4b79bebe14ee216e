"""When timers tick, and which copies of a tick a node runs (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from wiremesh.core.schedule import Cron, Every, TickLedger, tick_from_text, tick_text
from wiremesh.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def test_every_ticks_at_whole_multiples_of_its_period_since_the_epoch() -> None:
    every = Every(30)
    assert every.after(1_000_000_000.0) == 1_000_000_020.0  # 33,333,334 times 30
    assert every.after(1_000_000_020.0) == 1_000_000_050.0  # strictly after
    assert every.before(1_000_000_020.0) == 999_999_990.0  # strictly before
    assert every.before(1_000_000_021.0) == 1_000_000_020.0
    assert Every.of(timedelta(minutes=1)).after(59.5) == 60.0
    assert every.local(60.0) == datetime(1970, 1, 1, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", [0, 0.5, -3, float("nan"), float("inf"), True, "30"])
def test_every_refuses_a_period_that_is_not_a_second_or_more(bad: object) -> None:
    with pytest.raises(ConfigError, match="@timer: every"):
        Every(bad)  # type: ignore[arg-type]


def test_cron_follows_the_wall_clock_of_its_time_zone() -> None:
    daily = Cron("0 9 * * MON-FRI", tz="Europe/Berlin")
    friday_evening = at(2026, 12, 4, 18, 0)
    assert daily.after(friday_evening) == at(2026, 12, 7, 9, 0)  # Monday
    assert daily.before(friday_evening) == at(2026, 12, 4, 9, 0)
    assert daily.local(at(2026, 12, 7, 9, 0)) == datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN)
    assert Cron("*/5 * * * *").after(at(2026, 1, 1, 0, 0, tz=ZoneInfo("UTC"))) == at(
        2026, 1, 1, 0, 5, tz=ZoneInfo("UTC")
    )


def test_cron_through_daylight_saving_runs_a_missing_time_at_the_jump_and_a_doubled_once() -> None:
    nightly = Cron("30 2 * * *", tz="Europe/Berlin")
    # 29 March 2026: 02:00 becomes 03:00, so 02:30 does not exist: it runs at the jump
    spring = nightly.after(at(2026, 3, 29, 1, 0))
    assert datetime.fromtimestamp(spring, BERLIN) == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert nightly.after(spring) == at(2026, 3, 30, 2, 30)
    # 25 October 2026: 03:00 becomes 02:00 again, 02:30 happens twice and runs once
    autumn = nightly.after(at(2026, 10, 25, 0, 0))
    assert nightly.after(autumn) - autumn == 25 * 3600  # next night, an hour longer
    every_five = Cron("*/5 * * * *", tz="Europe/Berlin")
    ticks = [every_five.after(at(2026, 3, 29, 1, 50))]
    ticks.append(every_five.after(ticks[-1]))
    assert ticks[1] - ticks[0] == 300  # 01:55 then 03:00: five minutes apart, as the clock says


@pytest.mark.parametrize(
    ("expression", "tz", "words"),
    [
        ("* * * *", "UTC", "bad expression"),
        ("* * * * * *", "UTC", "bad expression"),
        ("60 * * * *", "UTC", "bad expression"),
        ("* * 31 2 *", "UTC", "bad expression"),  # never
        ("* * * * *", "Nowhere/Else", "unknown time zone"),
        ("* * * * *", "../../etc/passwd", "unknown time zone"),
    ],
)
def test_cron_refuses_a_bad_expression_or_time_zone(expression: str, tz: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Cron(expression, tz=tz)


def test_a_tick_travels_as_iso_8601_with_its_offset() -> None:
    cron = Cron("0 9 * * *", tz="Europe/Berlin")
    text = tick_text(cron, at(2026, 7, 1, 9, 0))
    assert text == "2026-07-01T09:00:00+02:00"
    assert tick_from_text(text) == datetime(2026, 7, 1, 9, 0, tzinfo=BERLIN)
    assert tick_text(Every(60), 120.0) == "1970-01-01T00:02:00+00:00"
    for bad in (None, "", "tomorrow", "2026-07-01T09:00:00"):  # (a naive time names no tick)
        assert tick_from_text(bad) is None


def test_the_ledger_runs_the_first_copy_of_a_tick_and_drops_the_others() -> None:
    ledger = TickLedger(Every(10))
    assert ledger.verdict(100.0, 1, now=100.1) == "run"
    ledger.ran(100.0)
    assert ledger.verdict(100.0, 1, now=100.2) == "duplicate"
    assert ledger.verdict(100.0, 2, now=100.2) == "duplicate"  # ran: a retry of it too
    assert ledger.verdict(110.0, 1, now=110.1) == "run"


def test_a_late_first_copy_of_a_tick_older_than_one_that_ran_is_dropped() -> None:
    ledger = TickLedger(Every(10))
    ledger.ran(120.0)  # (another node ran it: the marker it left says so)
    assert ledger.verdict(110.0, 1, now=121.0) == "overtaken"
    assert ledger.verdict(110.0, 2, now=121.0) == "run"  # a retry of an older failed one
    assert ledger.verdict(130.0, 1, now=130.1) == "run"


def test_the_ledger_lets_a_failed_tick_run_again_only_as_its_retry() -> None:
    ledger = TickLedger(Every(10))
    ledger.retrying(100.0)
    assert ledger.verdict(100.0, 1, now=100.1) == "duplicate"  # another node's copy
    assert ledger.verdict(100.0, 2, now=100.5) == "run"  # the retry
    ledger.ran(100.0)
    assert ledger.verdict(100.0, 3, now=100.6) == "duplicate"


def test_a_tick_overtaken_by_a_later_one_this_node_planned_is_dropped() -> None:
    ledger = TickLedger(Every(10))
    # nothing planned yet (the node just came back): a late tick still runs, once
    assert ledger.verdict(100.0, 1, now=135.0) == "run"
    ledger.planned_from = 140.0
    assert ledger.verdict(110.0, 1, now=139.0) == "run"  # 130 is due, but not planned here
    ledger.planned_from = 120.0
    # 130 is due and was planned by this node: its copy is on the way, so 110 gives way
    assert ledger.verdict(110.0, 1, now=131.0) == "overtaken"
    assert ledger.verdict(130.0, 1, now=131.0) == "run"


def test_the_ledger_remembers_a_bounded_number_of_ticks() -> None:
    ledger = TickLedger(Every(1), keep=3)
    for tick in (1.0, 2.0, 3.0, 4.0):
        ledger.ran(tick)
    assert ledger.verdict(1.0, 2, now=4.5) == "run"  # forgotten: even a retry of it runs
    assert ledger.verdict(2.0, 2, now=4.5) == "duplicate"
