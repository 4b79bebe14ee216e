"""The embedded broker's journal: group commit on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from wiremesh.messaging.journal import Journal


def insert(n: int) -> object:
    def write(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO marks VALUES (?)", (n,))
        return n

    return write


def held_until(started: threading.Event, release: threading.Event) -> object:
    """A write that says it started, then waits for ``release`` and inserts 1."""

    def write(db: sqlite3.Connection) -> int:
        started.set()
        release.wait(10)
        db.execute("INSERT INTO marks VALUES (1)")
        return 1

    return write


def fail(db: sqlite3.Connection) -> None:
    raise sqlite3.OperationalError("disk I/O error")


async def opened(path: Path) -> Journal:
    journal = Journal(path)
    await asyncio.to_thread(journal.load)
    await journal.submit(lambda db: db.execute("CREATE TABLE marks (n INTEGER)"))
    return journal


def marks(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [n for (n,) in db.execute("SELECT n FROM marks ORDER BY n")]


async def test_writes_asked_for_during_a_commit_go_together_in_the_next(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "broker.db")
    started, release = threading.Event(), threading.Event()
    held = held_until(started, release)

    try:
        first = journal.submit(held)
        # the disk was idle: that commit starts at once, with nothing else in it
        assert await asyncio.to_thread(started.wait, 10)
        second = journal.submit(insert(2))
        third = journal.submit(fail)
        await asyncio.sleep(0.05)
        assert not second.done()  # waits for the commit under way
        release.set()
        assert await first == 1
        # the two came while the first commit ran: one transaction, which failed whole
        with pytest.raises(sqlite3.OperationalError):
            await second
        with pytest.raises(sqlite3.OperationalError):
            await third
        assert await journal.submit(insert(4)) == 4  # the journal goes on
    finally:
        release.set()
        await journal.close()
    assert marks(tmp_path / "broker.db") == [1, 4]


async def test_close_waits_for_the_commit_under_way_and_writes_what_was_deferred(
    tmp_path: Path,
) -> None:
    journal = await opened(tmp_path / "broker.db")
    started, release = threading.Event(), threading.Event()
    held = held_until(started, release)

    first = journal.submit(held)
    assert await asyncio.to_thread(started.wait, 10)
    journal.defer(insert(2))
    closing = asyncio.create_task(journal.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    release.set()
    await closing
    await first
    assert marks(tmp_path / "broker.db") == [1, 2]
