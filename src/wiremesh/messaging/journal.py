"""The embedded broker's disk: one SQLite file in WAL mode, written with group commit.

Writes (publishes, settles, dead letters) run in transactions on a single writer thread,
with group commit: a write that finds the disk idle starts a commit at once, and every write
asked for while that commit is under way waits for the next one, which starts as soon as it
is on disk. So many small writes cost one fsync, and none waits for a loop turn or a timer
when the disk is idle. ``synchronous=FULL``: a write whose future has resolved survives a
power cut.

A write nothing waits for, and whose loss in a crash costs only a message delivered
again (deleting an acknowledged message), is deferred (:meth:`Journal.defer`): it rides
along with the next commit, or has one of its own after at most ``DEFER_SECONDS``, so
that it neither costs an fsync of its own nor holds up the commit a publish waits for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import Any, TypeVar

from wiremesh.messaging.base import DeadLetter, Envelope, Kind
from wiremesh.proto import broker_pb2 as pb
from wiremesh.runtime.private import private_sqlite

__all__ = ["Journal", "QueueRecord", "Stored", "envelope_from_proto", "envelope_to_proto"]

log = logging.getLogger("wiremesh.broker")

T = TypeVar("T")

#: longest a deferred write waits for a commit to ride along with
DEFER_SECONDS = 0.05

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


def envelope_to_proto(e: Envelope) -> pb.Envelope:
    return pb.Envelope(
        id=e.id,
        kind=e.kind,
        topic=e.topic,
        body=e.body,
        codec=e.codec,
        headers=e.headers,
        attempt=e.attempt,
    )


def envelope_from_proto(m: pb.Envelope) -> Envelope:
    kind: Kind = "command" if m.kind == "command" else "event"
    h = m.headers  # (a protobuf map, copied key by key into a plain dict)
    headers = {k: h[k] for k in h}
    return Envelope(m.id, kind, m.topic, m.body, m.codec, headers, m.attempt or 1)


class Stored:
    """One copy of a message on one queue: its :class:`Envelope`, or the protobuf form it
    came in (``wire``), from which the envelope is made only when asked for."""

    __slots__ = ("_envelope", "not_before", "queue", "seq", "tag", "wire")

    def __init__(
        self,
        seq: int,
        queue: str,
        envelope: Envelope | None,
        not_before: float = 0.0,
        *,
        wire: pb.Envelope | None = None,
    ) -> None:
        assert envelope is not None or wire is not None
        self.seq = seq
        self.queue = queue
        self._envelope = envelope
        self.not_before = not_before
        #: set while a consumer holds it
        self.tag = 0
        #: its protobuf form, kept to send it again without building it again
        self.wire = wire

    def __repr__(self) -> str:
        return f"Stored(seq={self.seq}, queue={self.queue!r}, not_before={self.not_before})"

    @property
    def envelope(self) -> Envelope:
        envelope = self._envelope
        if envelope is None:
            assert self.wire is not None
            envelope = self._envelope = envelope_from_proto(self.wire)
        return envelope

    @envelope.setter
    def envelope(self, envelope: Envelope) -> None:
        self._envelope = envelope

    def to_wire(self) -> pb.Envelope:
        """Its protobuf form: the one it came in while that is still what it is."""
        envelope, wire = self._envelope, self.wire
        if envelope is not None and (wire is None or wire.attempt != envelope.attempt):
            wire = self.wire = envelope_to_proto(envelope)
        assert wire is not None
        return wire

    def row(self) -> tuple[Any, ...]:
        e, m = self._envelope, self.wire
        if e is None and m is not None:  # as it came: no envelope needed
            kind = "command" if m.kind == "command" else "event"
            headers = headers_json(m.headers)
            attempt = m.attempt or 1
            return (self.seq, self.queue, m.id, kind, m.topic, m.body, m.codec, headers, attempt)
        e = self.envelope
        headers = headers_json(e.headers)
        return (self.seq, self.queue, e.id, e.kind, e.topic, e.body, e.codec, headers, e.attempt)


def headers_json(headers: Mapping[str, str]) -> str:
    """``json.dumps(dict(headers))``, in a third of the time for the usual string values."""
    try:
        items = [f"{_quote(k)}: {_quote(v)}" for k, v in headers.items()]
    except TypeError:  # not strings: the general way
        return json.dumps(dict(headers))
    return "{" + ", ".join(items) + "}"


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
        self._deferred: list[Callable[[sqlite3.Connection], Any]] = []
        #: set once the deferred writes may wait no longer
        self._deferred_due = False
        self._defer_timer: asyncio.TimerHandle | None = None
        #: the commit under way, if any
        self._committing: asyncio.Future[list[Any]] | None = None
        self.next_seq = 1

    def load(self) -> tuple[list[QueueRecord], list[Stored]]:
        """Open the file; drop broadcast queues (their nodes are gone); return the queues
        and every stored message, oldest first."""
        private_sqlite(self.path)  # its -wal and -shm files take its mode: 0600
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
        self._start(loop)
        return future

    def defer(self, write: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``write`` in a later commit (within ``DEFER_SECONDS``), telling no one;
        a write that fails is logged."""
        self._deferred.append(write)
        if self._defer_timer is None:
            loop = asyncio.get_running_loop()
            self._defer_timer = loop.call_later(DEFER_SECONDS, self._defer_due)

    def _defer_due(self) -> None:
        self._defer_timer = None
        if self._deferred:
            self._deferred_due = True
            self._start(asyncio.get_running_loop())

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a commit of everything waiting now, unless one is under way: what comes
        meanwhile waits for the next, which starts as soon as this one is on disk."""
        if self._committing is not None or not (self._pending or self._deferred_due):
            return
        self._deferred_due = False
        batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any] | None]]
        batch = [(write, None) for write in self._deferred]
        batch += self._pending
        self._deferred, self._pending = [], []
        committing = self._committing = loop.run_in_executor(self._executor, self._commit, batch)
        committing.add_done_callback(lambda done: self._committed(loop, batch, done))

    def _committed(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: Sequence[tuple[Any, asyncio.Future[Any] | None]],
        done: asyncio.Future[list[Any]],
    ) -> None:
        self._committing = None
        # (cancelled: the loop is closing under it)
        exc = asyncio.CancelledError() if done.cancelled() else done.exception()
        if exc is not None:  # a disk error: every write of the batch failed
            log.error("broker storage write failed: %s", exc)
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, done.result(), strict=True):
                if future is not None and not future.done():
                    future.set_result(result)
        self._start(loop)

    def _commit(
        self, batch: Sequence[tuple[Callable[[sqlite3.Connection], Any], Any]]
    ) -> list[Any]:
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
        if self._defer_timer is not None:
            self._defer_timer.cancel()
            self._defer_timer = None
        if self._deferred:
            self._deferred_due = True
            self._start(asyncio.get_running_loop())
        while self._committing is not None:  # (each commit starts the next, if any waits)
            await asyncio.wait([self._committing])
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
        """The clause picking ``ids`` (all when None), with its one parameter: a JSON array,
        as a client may name more ids than SQLite takes parameters (a failing read would
        fail every write committed with it)."""
        if ids is None:
            return "", []
        return " WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(list(ids))]

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
