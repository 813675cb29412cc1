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
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Future[Any]] | None] = (
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
            results: list[tuple[Future[Any], Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, future in batch:
                    if not isinstance(fn, _Ingest):
                        self._cache.clear()  # any other job may change usage or records behind the cache
                    conn.execute("SAVEPOINT job")
                    try:
                        value = fn(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        results.append((future, None, exc))
                    else:
                        conn.execute("RELEASE job")
                        results.append((future, value, None))
                conn.execute("COMMIT")
            except Exception as exc:  # the commit itself failed: nothing of the batch is stored
                self._cache.clear()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(future, None, exc) for _, future in batch]
            for future, value, error in results:
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            if stop:
                return

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
    sums: dict[tuple[str, str], int] = {}
    duplicates = 0
    for event in events:
        if event.event_id is not None:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO event_ids (event_id, hour) VALUES (?, ?)", (event.event_id, hour)
            )
            if cursor.rowcount == 0:
                duplicates += 1
                continue
        key = (event.dimension, event.tags)
        sums[key] = sums.get(key, 0) + event.quantity
    hours: dict[str, int] = {}
    added: dict[str, int] = {}
    if len(cache.totals) > 1024 or len(cache.targets) > 1024:
        cache.clear()  # hours long closed; the meter's next job would empty it anyway
    for (dimension, _), quantity in sums.items():
        if dimension not in hours:
            target = cache.targets.get((dimension, hour))
            if target is None:  # records only change in other jobs: this answer holds until they run
                target = cache.targets[(dimension, hour)] = target_hour(conn, dimension, hour)
            hours[dimension] = target
        added[dimension] = added.get(dimension, 0) + quantity
    after: dict[tuple[str, int], int] = {}
    for dimension, at in hours.items():
        before = cache.totals.get((dimension, at))
        if before is None:
            (before,) = conn.execute(
                "SELECT COALESCE(SUM(quantity), 0) FROM usage WHERE dimension = ? AND hour = ?",
                (dimension, at),
            ).fetchone()
        if before + added[dimension] > MAX_QUANTITY:
            # AWS takes at most 2,147,483,647 per record (§2.1); refuse rather than lose or split the hour.
            raise LedgerError("quantity", f"the hour's total for {dimension!r} would exceed {MAX_QUANTITY}")
        after[(dimension, at)] = before + added[dimension]
    rows: dict[str, list[tuple[str, int]]] = {}
    for (dimension, tags), quantity in sums.items():
        rows.setdefault(dimension, []).append((tags, quantity))
    for dimension, tag_sets in rows.items():
        add_usage_rows(conn, dimension, hours[dimension], tag_sets)
    # Last, once nothing can fail: a job that raised (and was rolled back) leaves the totals as they were.
    cache.totals.update(after)
    return Ingested(len(events) - duplicates, duplicates)


ADD_USAGE = (
    "INSERT INTO usage (dimension, hour, tags, quantity) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dimension, hour, tags) DO UPDATE SET quantity = quantity + excluded.quantity"
)


def add_usage(conn: sqlite3.Connection, dimension: str, hour: int, tags: str, quantity: int) -> None:
    conn.execute(ADD_USAGE, (dimension, hour, tags, quantity))


# All of a request's tag sets for one dimension in one statement: SQLite walks the JSON array itself. With
# one statement per row, the writer thread needed the GIL back after every row, and while the event loop
# was busy reading the next request each row waited for it (up to sys.getswitchinterval(), 5 ms).
ADD_USAGE_ROWS = (
    "INSERT INTO usage (dimension, hour, tags, quantity) "
    "SELECT ?, ?, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) "
    "WHERE true "  # SQLite's rule: an upsert after INSERT ... SELECT needs a WHERE clause
    "ON CONFLICT (dimension, hour, tags) DO UPDATE SET quantity = quantity + excluded.quantity"
)


def add_usage_rows(conn: sqlite3.Connection, dimension: str, hour: int, rows: list[tuple[str, int]]) -> None:
    """add_usage for many (tags, quantity) of one dimension and hour; the tag sets must be distinct."""
    if len(rows) == 1:  # one statement either way; this one skips the JSON
        conn.execute(ADD_USAGE, (dimension, hour, *rows[0]))
        return
    text = json.dumps(rows)
    if "\\u0000" in text or "\\ud" in text:
        # A NUL or a surrogate: their round trip through SQLite's JSON is not assured (tag keys from
        # allocations.tag_key never have them), so these go row by row, bound as they are.
        conn.executemany(ADD_USAGE, [(dimension, hour, tags, quantity) for tags, quantity in rows])
    else:
        conn.execute(ADD_USAGE_ROWS, (dimension, hour, text))
