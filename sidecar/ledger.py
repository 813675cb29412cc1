"""The durable usage ledger: SQLite (WAL) in METERING_STATE_DIR, an emptyDir that outlives container restarts.

One writer thread owns the write connection and runs jobs in transactions; ingest jobs that arrive
together share one commit (group commit), so durability does not cost one fsync per request. Each job
runs in its own savepoint, so one refused request never takes another's events with it.

Tables:
  usage      the open hours: quantity per (dimension, hour, tag set)
  event_ids  event ids already counted (a repeated event_id is counted once)
  records    one row per (dimension, hour) once sealed: the frozen MeterUsage request and its state
             (sealed, sent, rejected, carried)
  meta       the pod id and other small facts
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sidecar.allocations import HOUR, MAX_QUANTITY, Event, EventError

T = TypeVar("T")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    dimension TEXT NOT NULL, hour INTEGER NOT NULL, tags TEXT NOT NULL, quantity INTEGER NOT NULL,
    PRIMARY KEY (dimension, hour, tags)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY, hour INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    dimension TEXT NOT NULL, hour INTEGER NOT NULL, state TEXT NOT NULL, quantity INTEGER NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT, metering_record_id TEXT, sealed_at REAL NOT NULL, sent_at REAL, note TEXT,
    PRIMARY KEY (dimension, hour));
CREATE INDEX IF NOT EXISTS records_by_state ON records (state, hour);
"""


class LedgerError(EventError):
    """A request the ledger refused as a whole (nothing of it was stored), e.g. an hour's overflow."""


@dataclass(frozen=True)
class Ingested:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class Record:
    dimension: str
    hour: int
    state: str
    quantity: int
    body: str
    attempts: int
    next_attempt: float
    last_error: str | None
    metering_record_id: str | None
    sealed_at: float
    sent_at: float | None
    note: str | None

    @property
    def request(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we acknowledge it (NORMAL would survive a crash, not a power cut).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write = connect(path)
        self._write.executescript(SCHEMA)
        self._read = connect(path)
        self._read_lock = threading.Lock()
        self._cache = _OpenHours()  # the writer thread's own
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Future[Any] | _OnLoop] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        self._thread.start()
        self.pod_id = self.submit(_pod_id).result()

    # --- the writer thread -----------------------------------------------------------------------

    def _writer(self) -> None:
        conn = self._write
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < 512:  # group commit: everything that queued up while we were busy
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            results: list[_Result] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                group: list[tuple[_Ingest, Future[Any] | _OnLoop]] = []
                for fn, future in batch:
                    if isinstance(fn, _Ingest):
                        group.append((fn, future))
                        continue
                    results += self._run_ingests(conn, group, opens=not results)
                    group = []
                    self._cache.clear()  # any other job may change usage or records behind the cache
                    results.append(self._run_one(conn, fn, future))
                results += self._run_ingests(conn, group, opens=not results)
                conn.execute("COMMIT")
            except Exception as exc:  # the commit itself failed: nothing of the batch is stored
                self._cache.clear()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(future, None, exc) for _, future in batch]
            _deliver(results)
            if stop:
                return

    def _run_one(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any], future: Future[Any] | _OnLoop
    ) -> _Result:
        """One job in its own savepoint: if it raises, nothing it wrote stays, and the others' work does."""
        conn.execute("SAVEPOINT job")
        try:
            value = fn(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self._cache.clear()  # an ingest that failed to write may have counted its totals in
            return (future, None, exc)
        conn.execute("RELEASE job")
        return (future, value, None)

    def _run_ingests(
        self, conn: sqlite3.Connection, group: list[tuple[_Ingest, Future[Any] | _OnLoop]], opens: bool
    ) -> list[_Result]:
        """Ingest jobs that queued up together: decided one by one, in order, as if each ran alone, but
        written together (ingest_many). A job refused by the rules (LedgerError) leaves no trace. Should
        the shared write itself fail, the jobs run again one by one, each in its own savepoint, so that
        one job's failure is not the others'. A group that opens the transaction (`opens`: the usual
        case) needs no savepoint of its own to undo its write: the transaction is begun again instead."""
        if not group:
            return []
        if not opens:
            conn.execute("SAVEPOINT jobs")
        try:
            outcomes = _ingest_many(conn, [job for job, _ in group], self._cache)
        except Exception as exc:
            self._cache.clear()  # it counted the group's totals in
            if opens:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("ROLLBACK TO jobs")
                conn.execute("RELEASE jobs")
            if len(group) == 1:
                return [(group[0][1], None, exc)]
            return [self._run_one(conn, job, future) for job, future in group]
        if not opens:
            conn.execute("RELEASE jobs")
        return [(future, value, error) for (_, future), (value, error) in zip(group, outcomes, strict=True)]

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run `fn(conn)` in a transaction on the writer thread; the future resolves once committed."""
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)
        self._write.close()
        self._read.close()

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, tuple(params)).fetchall()

    # --- ingest ----------------------------------------------------------------------------------

    def ingest(self, events: list[Event], hour: int) -> Future[Ingested]:
        return self.submit(_Ingest(events, hour, self._cache))

    def ingest_async(self, events: list[Event], hour: int) -> asyncio.Future[Ingested]:
        """ingest for the running event loop: the writer settles all of a commit's requests with one
        call_soon_threadsafe (asyncio.wrap_future would wake the loop once per request: a tenth of a
        single event's cost under 16 connections, bench/results.md)."""
        target: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        self._jobs.put((_Ingest(events, hour, self._cache), _OnLoop(target)))
        return target

    # --- reads -----------------------------------------------------------------------------------

    def records(self, states: Iterable[str] | None = None) -> list[Record]:
        sql = "SELECT * FROM records"
        params: tuple[str, ...] = ()
        if states is not None:
            params = tuple(states)
            sql += f" WHERE state IN ({','.join('?' * len(params))})"
        return [Record(*row) for row in self.read(sql + " ORDER BY hour, dimension", params)]

    def open_usage(self) -> list[tuple[str, int, str, int]]:
        return [
            tuple(row)
            for row in self.read("SELECT dimension, hour, tags, quantity FROM usage ORDER BY hour, dimension")
        ]


def _pod_id(conn: sqlite3.Connection) -> str:
    """This pod's identity for deterministic client tokens: it lives as long as the emptyDir does."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'pod_id'").fetchone()
    if row:
        return str(row[0])
    value = str(uuid.uuid4())
    conn.execute("INSERT INTO meta (key, value) VALUES ('pod_id', ?)", (value,))
    return value


def target_hour(conn: sqlite3.Connection, dimension: str, hour: int) -> int:
    """Usage for an hour that is already sealed rolls forward into the next open hour (AWS allows it)."""
    row = conn.execute("SELECT MAX(hour) FROM records WHERE dimension = ?", (dimension,)).fetchone()
    last_sealed = row[0] if row and row[0] is not None else None
    return hour if last_sealed is None or last_sealed < hour else last_sealed + HOUR


class _OnLoop:
    """Where a job submitted from an event loop gets its answer: an asyncio future of that loop."""

    __slots__ = ("target",)

    def __init__(self, target: asyncio.Future[Any]) -> None:
        self.target = target


_Result = tuple[Future[Any] | _OnLoop, Any, BaseException | None]


def _deliver(results: list[_Result]) -> None:
    """A commit's answers: concurrent futures at once, and each event loop's in one wake-up."""
    on_loops: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
    for result in results:
        future, value, error = result
        if isinstance(future, _OnLoop):
            on_loops.setdefault(future.target.get_loop(), []).append(result)
        elif error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    for loop, settled in on_loops.items():
        # A closed loop raises RuntimeError: nobody awaits these any more (what was stored stays).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


def _settle(results: list[_Result]) -> None:
    """On the event loop's thread."""
    for on_loop, value, error in results:
        assert isinstance(on_loop, _OnLoop)
        if on_loop.target.cancelled():  # the client went away; the ledger's work stands
            continue
        if error is None:
            on_loop.target.set_result(value)
        else:
            on_loop.target.set_exception(error)


class _OpenHours:
    """What the writer thread knows about the open hours, so that an ingest job does not ask SQLite again:
    each hour's total, (dimension, hour) -> quantity (else the overflow check sums the hour's rows, one per
    tag set, in every job), and where usage for an hour goes, (dimension, hour) -> target_hour. Only ingest
    jobs keep it right (they change usage, never records); any other job, and any failed commit, empties it.
    """

    def __init__(self) -> None:
        self.totals: dict[tuple[str, int], int] = {}
        self.targets: dict[tuple[str, int], int] = {}

    def clear(self) -> None:
        self.totals.clear()
        self.targets.clear()


class _Ingest:
    """An ingest job. The writer tells these from other jobs: only they keep its cache right."""

    def __init__(self, events: list[Event], hour: int, cache: _OpenHours) -> None:
        self.events = events
        self.hour = hour
        self.cache = cache

    def __call__(self, conn: sqlite3.Connection) -> Ingested:
        return _ingest(conn, self.events, self.hour, self.cache)


def _ingest(conn: sqlite3.Connection, events: list[Event], hour: int, cache: _OpenHours) -> Ingested:
    [(result, error)] = _ingest_many(conn, [_Ingest(events, hour, cache)], cache)
    if error is not None:
        raise error
    assert result is not None
    return result


def _ingest_many(
    conn: sqlite3.Connection, jobs: list[_Ingest], cache: _OpenHours
) -> list[tuple[Ingested | None, LedgerError | None]]:
    """The ingest rules, for jobs in the order they came: each job's events are counted once (an event_id
    already stored, or earlier in the same or an earlier job, is a duplicate), moved to the hour they
    belong to, and checked against AWS's per-record limit; a job that breaks the limit is refused whole.
    Reads happen as the jobs are decided; all writes come at the end, in one statement (and one for new
    event ids). If a write fails, the caller undoes it: a savepoint, or the whole transaction when these
    jobs are all it holds. The cache's totals then include the jobs: the caller empties it."""
    known = _known_event_ids(conn, {e.event_id for job in jobs for e in job.events if e.event_id is not None})
    new_ids: dict[str, int] = {}
    adds: dict[tuple[str, int], dict[str, int]] = {}  # (dimension, hour) -> tag set -> quantity
    outcomes: list[tuple[Ingested | None, LedgerError | None]] = []
    if len(cache.totals) > 1024 or len(cache.targets) > 1024:
        cache.clear()  # hours long closed; the meter's next job would empty it anyway
    for job in jobs:
        fresh: dict[str, int] = {}
        sums: dict[tuple[str, str], int] = {}
        duplicates = 0
        for event in job.events:
            event_id = event.event_id
            if event_id is not None:
                if event_id in known or event_id in new_ids or event_id in fresh:
                    duplicates += 1
                    continue
                fresh[event_id] = job.hour
            key = (event.dimension, event.tags)
            sums[key] = sums.get(key, 0) + event.quantity
        try:
            hours, totals = _plan(conn, sums, job.hour, cache)
        except LedgerError as err:
            outcomes.append((None, err))
            continue
        # Accepted: what later jobs of the group see (the caller empties the cache if the write fails).
        cache.totals.update(totals)
        new_ids.update(fresh)
        for (dimension, tags), quantity in sums.items():
            rows = adds.setdefault((dimension, hours[dimension]), {})
            rows[tags] = rows.get(tags, 0) + quantity
        outcomes.append((Ingested(len(job.events) - duplicates, duplicates), None))
    if new_ids:
        conn.executemany("INSERT INTO event_ids (event_id, hour) VALUES (?, ?)", new_ids.items())
    if adds:
        add_usage_rows(
            conn,
            [
                (dimension, hour, tags, q)
                for (dimension, hour), rows in adds.items()
                for tags, q in rows.items()
            ],
        )
    return outcomes


def _known_event_ids(conn: sqlite3.Connection, event_ids: set[str]) -> set[str]:
    known: set[str] = set()
    ids = list(event_ids)
    for start in range(0, len(ids), 500):  # well under SQLite's limit of bound parameters
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound
        sql = f"SELECT event_id FROM event_ids WHERE event_id IN ({marks})"  # noqa: S608
        known.update(row[0] for row in conn.execute(sql, chunk))
    return known


def _plan(
    conn: sqlite3.Connection, sums: dict[tuple[str, str], int], hour: int, cache: _OpenHours
) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
    """Where each dimension's usage goes (dimension -> hour) and the hours' totals after it; raises
    LedgerError if a total would pass AWS's per-record limit. Reads only."""
    hours: dict[str, int] = {}
    added: dict[str, int] = {}
    for (dimension, _), quantity in sums.items():
        if dimension not in hours:
            target = cache.targets.get((dimension, hour))
            if target is None:  # records only change in other jobs: this answer holds until they run
                target = cache.targets[(dimension, hour)] = target_hour(conn, dimension, hour)
            hours[dimension] = target
        added[dimension] = added.get(dimension, 0) + quantity
    totals: dict[tuple[str, int], int] = {}
    for dimension, at in hours.items():
        before = cache.totals.get((dimension, at))
        if before is None:  # not in the cache: no earlier job of this group touched it, so SQLite knows
            (before,) = conn.execute(
                "SELECT COALESCE(SUM(quantity), 0) FROM usage WHERE dimension = ? AND hour = ?",
                (dimension, at),
            ).fetchone()
        if before + added[dimension] > MAX_QUANTITY:
            # AWS takes at most 2,147,483,647 per record (§2.1); refuse rather than lose or split the hour.
            raise LedgerError("quantity", f"the hour's total for {dimension!r} would exceed {MAX_QUANTITY}")
        totals[(dimension, at)] = before + added[dimension]
    return hours, totals


ADD_USAGE = (
    "INSERT INTO usage (dimension, hour, tags, quantity) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dimension, hour, tags) DO UPDATE SET quantity = quantity + excluded.quantity"
)


def add_usage(conn: sqlite3.Connection, dimension: str, hour: int, tags: str, quantity: int) -> None:
    conn.execute(ADD_USAGE, (dimension, hour, tags, quantity))


# All of a commit's rows in one statement: SQLite walks the JSON array itself. Each statement hands the GIL
# back and forth between the writer and the event loop (the loop holds it while it runs Python, so each
# hand-back waits for the loop's next pause): a commit's statements are its latency.
ADD_USAGE_ROWS = (
    "INSERT INTO usage (dimension, hour, tags, quantity) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]') FROM json_each(?) "
    "WHERE true "  # SQLite's rule: an upsert after INSERT ... SELECT needs a WHERE clause
    "ON CONFLICT (dimension, hour, tags) DO UPDATE SET quantity = quantity + excluded.quantity"
)


def add_usage_rows(conn: sqlite3.Connection, rows: list[tuple[str, int, str, int]]) -> None:
    """add_usage for many (dimension, hour, tags, quantity); no two rows may share a key."""
    if len(rows) == 1:  # one statement either way; this one skips the JSON
        conn.execute(ADD_USAGE, rows[0])
        return
    text = json.dumps(rows)
    if "\\u0000" in text or "\\ud" in text:
        # A NUL or a surrogate: their round trip through SQLite's JSON is not assured (tag keys from
        # allocations.tag_key never have them), so these go row by row, bound as they are.
        conn.executemany(ADD_USAGE, rows)
    else:
        conn.execute(ADD_USAGE_ROWS, (text,))
