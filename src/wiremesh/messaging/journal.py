"""The embedded broker's disk: one SQLite file in WAL mode, written with group commit.

Every write the broker asks for during one loop turn (publishes, settles, dead letters) is
run in one transaction on a single writer thread; the next batch gathers while that one is
committed, so many small writes cost one fsync. ``synchronous=FULL``: a write whose future
has resolved survives a power cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from wiremesh.messaging.base import DeadLetter, Envelope, Kind

__all__ = ["Journal", "QueueRecord", "Stored"]

log = logging.getLogger("wiremesh.broker")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    handler TEXT NOT NULL,
    kind TEXT NOT NULL,
    patterns TEXT NOT NULL,
    delivery TEXT NOT NULL,
    transient INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    codec TEXT NOT NULL,
    headers TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    not_before REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (queue);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    codec TEXT NOT NULL,
    headers TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    reason TEXT NOT NULL,
    died_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_id ON dead (id);
"""

_ROW = "seq, queue, id, kind, topic, body, codec, headers, attempt"


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A queue as the broker keeps it: what it is bound to and who consumes it."""

    name: str
    service: str
    handler: str
    kind: Kind
    patterns: tuple[str, ...]
    delivery: str
    #: a broadcast queue lives only while its node consumes it
    transient: bool


@dataclass(slots=True)
class Stored:
    """One copy of a message on one queue."""

    seq: int
    queue: str
    envelope: Envelope
    not_before: float = 0.0
    #: set while a consumer holds it
    tag: int = field(default=0, compare=False)
    #: its protobuf form, kept to send it again without building it again
    wire: Any = field(default=None, compare=False, repr=False)

    def row(self) -> tuple[Any, ...]:
        e = self.envelope
        headers = json.dumps(dict(e.headers))
        return (self.seq, self.queue, e.id, e.kind, e.topic, e.body, e.codec, headers, e.attempt)


def _stored(row: Sequence[Any], not_before: float = 0.0) -> Stored:
    seq, queue, mid, kind, topic, body, codec, headers, attempt = row[:9]
    envelope = Envelope(mid, kind, topic, bytes(body), codec, json.loads(headers), attempt)
    return Stored(seq, queue, envelope, not_before)


class Journal:
    """The broker's SQLite file. :meth:`load` once, then :meth:`submit` writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wiremesh-broker-disk")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.next_seq = 1

    def load(self) -> tuple[list[QueueRecord], list[Stored]]:
        """Open the file; drop broadcast queues (their nodes are gone); return the queues
        and every stored message, oldest first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        db.execute("DELETE FROM messages WHERE queue IN (SELECT name FROM queues WHERE transient)")
        db.execute("DELETE FROM queues WHERE transient")
        db.execute("COMMIT")
        queues = [
            QueueRecord(n, s, h, k, tuple(json.loads(p)), d, bool(t))
            for n, s, h, k, p, d, t in db.execute("SELECT * FROM queues")
        ]
        messages = [
            _stored(row, row[9])
            for row in db.execute(f"SELECT {_ROW}, not_before FROM messages ORDER BY seq")
        ]
        top = db.execute(
            "SELECT max(m), max(d) FROM (SELECT max(seq) m, 0 d FROM messages "
            "UNION ALL SELECT 0, max(seq) FROM dead)"
        ).fetchone()
        self.next_seq = max(top[0] or 0, top[1] or 0) + 1
        self._db = db
        return queues, messages

    def new_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    # ------------------------------------------------------------------ writing

    def submit(self, write: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``write`` in the next group commit; the future resolves once it is on disk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="wiremesh-broker-commit")
        return future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(self._executor, self._commit, batch)
            except Exception as exc:  # a disk error: every write of the batch failed
                log.error("broker storage write failed: %s", exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _commit(self, batch: list[tuple[Callable[[sqlite3.Connection], Any], Any]]) -> list[Any]:
        db = self._db
        assert db is not None, "Journal.load() first"
        db.execute("BEGIN")
        try:
            results = [write(db) for write, _ in batch]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return results

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ the writes

    @staticmethod
    def insert(copies: Sequence[Stored]) -> Callable[[sqlite3.Connection], None]:
        rows = [(*c.row(), c.not_before) for c in copies]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                f"INSERT INTO messages ({_ROW}, not_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        return write

    @staticmethod
    def delete(seqs: Iterable[int]) -> Callable[[sqlite3.Connection], object]:
        rows = [(s,) for s in seqs]
        return lambda db: db.executemany("DELETE FROM messages WHERE seq = ?", rows)

    @staticmethod
    def delay(copy: Stored) -> Callable[[sqlite3.Connection], object]:
        row = (copy.envelope.attempt, copy.not_before, copy.seq)
        return lambda db: db.execute(
            "UPDATE messages SET attempt = ?, not_before = ? WHERE seq = ?", row
        )

    @staticmethod
    def bury(copy: Stored, reason: str, died_at: float) -> Callable[[sqlite3.Connection], None]:
        row = (*copy.row(), reason, died_at)

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM messages WHERE seq = ?", (copy.seq,))
            db.execute(
                f"INSERT INTO dead ({_ROW}, reason, died_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        return write

    @staticmethod
    def save_queue(record: QueueRecord) -> Callable[[sqlite3.Connection], object]:
        row = (
            record.name,
            record.service,
            record.handler,
            record.kind,
            json.dumps(list(record.patterns)),
            record.delivery,
            int(record.transient),
        )
        return lambda db: db.execute(
            "INSERT OR REPLACE INTO queues VALUES (?, ?, ?, ?, ?, ?, ?)", row
        )

    @staticmethod
    def drop_queue(name: str) -> Callable[[sqlite3.Connection], None]:
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM messages WHERE queue = ?", (name,))
            db.execute("DELETE FROM queues WHERE name = ?", (name,))

        return write

    # ------------------------------------------------------------------ dead letters

    @staticmethod
    def _where(ids: Sequence[str] | None) -> tuple[str, list[str]]:
        if ids is None:
            return "", []
        return f" WHERE id IN ({', '.join('?' * len(ids))})", list(ids)

    @classmethod
    def list_dead(
        cls, limit: int, ids: Sequence[str] | None
    ) -> Callable[[sqlite3.Connection], list[DeadLetter]]:
        where, args = cls._where(ids)

        def read(db: sqlite3.Connection) -> list[DeadLetter]:
            rows = db.execute(
                f"SELECT {_ROW}, reason, died_at FROM dead{where} ORDER BY seq LIMIT ?",
                [*args, limit],
            ).fetchall()
            return [DeadLetter(_stored(r).envelope, r[9], r[1], r[10]) for r in rows]

        return read

    @classmethod
    def take_dead(
        cls, ids: Sequence[str] | None, queues: set[str], new_seq: Callable[[], int]
    ) -> Callable[[sqlite3.Connection], list[Stored]]:
        """Move dead letters back onto their queues (the ones that still exist), with
        their attempt reset; returns the new copies."""
        where, args = cls._where(ids)

        def move(db: sqlite3.Connection) -> list[Stored]:
            rows = db.execute(f"SELECT {_ROW} FROM dead{where} ORDER BY seq", args).fetchall()
            back = []
            for row in rows:
                if row[1] not in queues:
                    continue
                old = _stored(row)
                copy = Stored(new_seq(), old.queue, replace(old.envelope, attempt=1))
                db.execute("DELETE FROM dead WHERE seq = ?", (old.seq,))
                db.execute(
                    f"INSERT INTO messages ({_ROW}, not_before) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    copy.row(),
                )
                back.append(copy)
            return back

        return move

    @classmethod
    def purge_dead(cls, ids: Sequence[str] | None) -> Callable[[sqlite3.Connection], int]:
        where, args = cls._where(ids)
        return lambda db: db.execute(f"DELETE FROM dead{where}", args).rowcount
