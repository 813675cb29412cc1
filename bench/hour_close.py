"""Item 6, in-process: closing an hour whose record has 2,500 allocations.

- `pure`: allocations.build_record + client_token + meter_request + freeze, on plain data.
- `seal`: Meter._seal on a real Ledger (SQLite in a temporary directory), run as the meter runs it: a job
  on the ledger's writer thread, committed (and fsynced) before it returns.
- `floor`: the SQLite work any seal must do, with none of our logic: in one transaction, read the hour's
  2,500 rows, store one record row of the same size, delete the rows, commit. It is the baseline.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sidecar.allocations import HOUR, Event, build_record, client_token, freeze, meter_request, tag_key
from sidecar.clock import SettableClock
from sidecar.ledger import Ledger
from sidecar.meter import Meter, MeterSettings
from sidecar.metrics import Metrics

PRODUCT = "bench-product-0001"
HOUR0 = 1795651200  # 2026-11-26T00:00:00Z


@dataclass(frozen=True)
class HourClose:
    pure_ms: float
    seal_ms: float
    floor_ms: float
    allocations: int
    repetitions: int


def _usage(tag_sets: int) -> list[Event]:
    rng = random.Random(6)
    return [
        Event("requests", rng.randint(1, 1000), tag_key({"tenant": f"t{i:04d}", "plan": f"p{i % 5}"}))
        for i in range(tag_sets)
    ]


def _floor(conn: sqlite3.Connection, hour: int, body: str) -> None:
    rows = conn.execute("SELECT tags, quantity FROM usage WHERE dimension = 'requests' AND hour = ?", (hour,))
    rows.fetchall()
    conn.execute(
        "INSERT INTO records (dimension, hour, state, quantity, body, sealed_at) "
        "VALUES ('requests', ?, 'sealed', 0, ?, 0)",
        (hour, body),
    )
    conn.execute("DELETE FROM usage WHERE hour <= ?", (hour,))


def _seal(meter: Meter, hour: int, conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return meter._seal(conn, hour)


def _forget(conn: sqlite3.Connection, hour: int) -> None:
    conn.execute("DELETE FROM records WHERE hour = ?", (hour,))


def measure(repetitions: int = 9, tag_sets: int = 2500) -> HourClose:
    events = _usage(tag_sets)
    usage = {e.tags: e.quantity for e in events}
    pure = []
    for _ in range(repetitions):
        began = time.perf_counter()
        record = build_record(usage)
        token = client_token("pod", PRODUCT, "requests", HOUR0)
        body = freeze(meter_request(PRODUCT, "requests", HOUR0, record, token))
        pure.append(time.perf_counter() - began)
    allocations = len(record.allocations)

    seal, floor = [], []
    with tempfile.TemporaryDirectory(prefix="bench-hour-close-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.db")
        clock = SettableClock(HOUR0 + 1800, frozen=True)
        settings = MeterSettings(product_code=PRODUCT, dimensions=("requests", "storage_gb", "seats"))
        meter = Meter(
            settings, ledger, lambda params: {}, clock=clock, metrics=Metrics(), rng=random.Random(0)
        )
        for rep in range(repetitions):
            hour = HOUR0 + rep * HOUR
            # The usage of one hour, then the clock just past its end: what the meter's tick sees.
            clock.set(hour + 1800)
            ledger.ingest(events, hour).result()
            clock.set(hour + HOUR + 60)
            began = time.perf_counter()
            sealed = ledger.submit(partial(_seal, meter, hour)).result()
            seal.append(time.perf_counter() - began)
            assert sealed == [("requests", hour)], sealed
            # The floor, on the same database and the same amount of data, an hour later.
            floor_hour = hour + 100 * HOUR
            ledger.ingest(events, floor_hour).result()
            began = time.perf_counter()
            ledger.submit(partial(_floor, hour=floor_hour, body=body)).result()
            floor.append(time.perf_counter() - began)
            ledger.submit(partial(_forget, hour=floor_hour))
        ledger.close()
    return HourClose(
        pure_ms=statistics.median(pure) * 1e3,
        seal_ms=statistics.median(seal) * 1e3,
        floor_ms=statistics.median(floor) * 1e3,
        allocations=allocations,
        repetitions=repetitions,
    )
