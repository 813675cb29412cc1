"""Hourly metering: seal each closed hour into a frozen MeterUsage request, send it once, and account for
every answer. The rules live in `allocations` (pure); this is the engine around the ledger and boto3.

- A record is frozen before its first send (the exact request is stored), so every retry is the same
  request and AWS deduplicates it (reference/aws-metering-semantics.md §2.3).
- Sending waits for a per-pod random offset into the next hour, so a fleet of pods does not hit the
  10 requests/s account quota at once (§2.5).
- A record never sits until AWS's 6-hour window closes: after `carry_after` its usage moves into the
  open hour, which AWS allows (§2.2, "send it in the following hours metering").
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar import aws
from sidecar.allocations import (
    HOUR,
    UNTAGGED,
    build_record,
    client_token,
    freeze,
    hour_start,
    meter_request,
    tag_key,
)
from sidecar.clock import Clock, iso
from sidecar.ledger import Ledger, Record, add_usage, target_hour
from sidecar.metrics import Metrics
from sidecar.retry import Backoff

log = logging.getLogger("sidecar.meter")


@dataclass(frozen=True)
class MeterSettings:
    product_code: str
    dimensions: tuple[str, ...]
    send_spread: float = 300.0  # seconds into the next hour over which pods spread their sends
    carry_after: float = 5 * HOUR  # AWS refuses records more than 6 hours old (§2.2)
    send_zero_hours: bool = False  # AWS needs no record for an hour with no usage; some sellers want one
    heartbeat_dimension: str | None = None
    heartbeat_quantity: int = 0
    tick: float = 15.0


class Meter:
    def __init__(
        self,
        settings: MeterSettings,
        ledger: Ledger,
        send: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        clock: Clock,
        metrics: Metrics,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._send = send
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff or Backoff(initial=5.0, maximum=300.0)
        self.offset = (rng or random.Random()).uniform(0, settings.send_spread)
        self.last_success: float | None = None
        self.consecutive_failures = 0
        self._lock = threading.Lock()  # one sender at a time (the loop, or the shutdown flush)
        self.first_hour = ledger.submit(lambda conn: _first_hour(conn, hour_start(clock.now()))).result()

    # --- sealing ---------------------------------------------------------------------------------

    def seal(self, upto_hour: int) -> list[tuple[str, int]]:
        """Freeze every open hour up to and including `upto_hour` into a record. Returns what was sealed."""
        return self.ledger.submit(lambda conn: self._seal(conn, upto_hour)).result()

    def _seal(self, conn: sqlite3.Connection, upto: int) -> list[tuple[str, int]]:
        s = self.settings
        now = self._clock.now()
        for dimension in s.dimensions:
            (last,) = conn.execute(
                "SELECT MAX(hour) FROM records WHERE dimension = ?", (dimension,)
            ).fetchone()
            # Hours this pod lived through that no record covers yet, within AWS's window.
            start = max(
                self.first_hour,
                (last + HOUR) if last is not None else self.first_hour,
                hour_start(now - s.carry_after),
            )
            for hour in range(start, upto + 1, HOUR):
                if dimension == s.heartbeat_dimension and s.heartbeat_quantity:
                    add_usage(conn, dimension, hour, UNTAGGED, s.heartbeat_quantity)
                elif s.send_zero_hours:
                    add_usage(conn, dimension, hour, UNTAGGED, 0)
        rows = conn.execute(
            "SELECT dimension, hour, tags, quantity FROM usage WHERE hour <= ? ORDER BY dimension, hour",
            (upto,),
        ).fetchall()
        grouped: dict[tuple[str, int], dict[str, int]] = {}
        for dimension, hour, tags, quantity in rows:
            grouped.setdefault((dimension, hour), {})[tags] = quantity
        sealed = []
        for (dimension, hour), usage in grouped.items():
            record = build_record(usage)
            if record.quantity == 0 and not s.send_zero_hours:
                continue  # no zero "probe" records: a zero record would block the hour (§7.5)
            token = client_token(self.ledger.pod_id, s.product_code, dimension, hour)
            body = freeze(meter_request(s.product_code, dimension, hour, record, token))
            note = (
                f"{record.folded} units moved to the untagged allocation (AWS tag limits)"
                if record.folded
                else None
            )
            conn.execute(
                "INSERT INTO records (dimension, hour, state, quantity, body, sealed_at, note) "
                "VALUES (?, ?, 'sealed', ?, ?, ?, ?)",
                (dimension, hour, record.quantity, body, now, note),
            )
            sealed.append((dimension, hour))
        conn.execute("DELETE FROM usage WHERE hour <= ?", (upto,))
        # Event ids are kept for a day: long enough for any client retry, bounded on disk.
        conn.execute("DELETE FROM event_ids WHERE hour < ?", (hour_start(now) - 24 * HOUR,))
        return sealed

    # --- carrying forward ------------------------------------------------------------------------

    def _carry(self, record: Record, why: str) -> None:
        now = self._clock.now()

        def job(conn: sqlite3.Connection) -> int:
            (state,) = conn.execute(
                "SELECT state FROM records WHERE dimension = ? AND hour = ?", (record.dimension, record.hour)
            ).fetchone()
            if state != "sealed":
                return 0
            into = target_hour(conn, record.dimension, hour_start(now))
            request = record.request
            allocations = request.get("UsageAllocations") or [
                {"AllocatedUsageQuantity": request["UsageQuantity"]}
            ]
            for allocation in allocations:
                tags = {t["Key"]: t["Value"] for t in allocation.get("Tags", [])}
                add_usage(conn, record.dimension, into, tag_key(tags), allocation["AllocatedUsageQuantity"])
            conn.execute(
                "UPDATE records SET state = 'carried', note = ? WHERE dimension = ? AND hour = ?",
                (
                    f"{why}; its {record.quantity} units were carried into the hour of {iso(into)}",
                    record.dimension,
                    record.hour,
                ),
            )
            return into

        into = self.ledger.submit(job).result()
        if into:
            self._metrics.records.labels(outcome="carried").inc()
            log.warning(
                "usage of %s for %s carried into %s: %s",
                record.dimension,
                iso(record.hour),
                iso(into),
                why,
                extra={"dimension": record.dimension, "hour": iso(record.hour), "quantity": record.quantity},
            )

    # --- sending ---------------------------------------------------------------------------------

    def _due(self, now: float, flushing: bool) -> list[Record]:
        due = []
        for record in self.ledger.records(states=("sealed",)):
            if now - record.hour >= self.settings.carry_after:
                self._carry(record, f"not accepted within {self.settings.carry_after / 3600:g} h of the hour")
                continue
            # Due once sealed (at the end of its hour, or early at a shutdown: then it is final) plus this
            # pod's offset, and once any retry backoff has passed.
            if flushing or (record.next_attempt <= now and now >= record.sealed_at + self.offset):
                due.append(record)
        return due

    def send_due(self, flushing: bool = False, deadline: float | None = None) -> int:
        """Send every record whose time has come (no new call starts after `deadline`). Returns how many
        are still waiting."""
        with self._lock:
            now = self._clock.now()
            for record in self._due(now, flushing):
                if deadline is not None and self._clock.now() >= deadline:
                    break  # past the grace period: the rest stays in the ledger
                self._send_one(record)
            return len(self.ledger.records(states=("sealed",)))

    def _send_one(self, record: Record) -> None:
        where = {"dimension": record.dimension, "hour": iso(record.hour), "quantity": record.quantity}
        try:
            response = self._send(record.request)
        except Exception as exc:
            self._failed(record, exc, where)
            return
        record_id = str(response.get("MeteringRecordId", ""))
        now = self._clock.now()
        self.ledger.submit(
            lambda conn: conn.execute(
                "UPDATE records SET state = 'sent', metering_record_id = ?, sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE dimension = ? AND hour = ?",
                (record_id, now, record.dimension, record.hour),
            )
        ).result()
        self.last_success = now
        self.consecutive_failures = 0
        self._metrics.records.labels(outcome="sent").inc()
        log.info(
            "MeterUsage sent",
            extra={**where, "metering_record_id": record_id, "attempts": record.attempts + 1},
        )

    def _failed(self, record: Record, exc: BaseException, where: dict[str, Any]) -> None:
        code, message = aws.error_code(exc), aws.error_message(exc)
        outcome = aws.meter_outcome(exc)
        now = self._clock.now()
        self.consecutive_failures += 1
        if outcome == aws.CARRY:
            self._carry(record, f"AWS refused the hour with {code}")
            return
        if outcome == aws.RETRY:
            delay = self._backoff.delay(record.attempts + 1)
            self.ledger.submit(
                lambda conn: conn.execute(
                    "UPDATE records SET attempts = attempts + 1, next_attempt = ?, last_error = ? "
                    "WHERE dimension = ? AND hour = ?",
                    (now + delay, f"{code}: {message}", record.dimension, record.hour),
                )
            ).result()
            self._metrics.records.labels(outcome="retried").inc()
            log.warning(
                "MeterUsage failed with %s; retrying in %.0f s", code, delay, extra={**where, "code": code}
            )
            return
        note = (
            "AWS already holds a different quantity for this pod, dimension and hour; not resent"
            if outcome == aws.DUPLICATE
            else "AWS refused this record for good; it is kept here and not retried"
        )
        self.ledger.submit(
            lambda conn: conn.execute(
                "UPDATE records SET state = 'rejected', attempts = attempts + 1, last_error = ?, note = ? "
                "WHERE dimension = ? AND hour = ?",
                (f"{code}: {message}", note, record.dimension, record.hour),
            )
        ).result()
        self._metrics.records.labels(outcome="rejected").inc()
        log.error(
            "MeterUsage record rejected: %s: %s (%s)", code, message, note, extra={**where, "code": code}
        )

    # --- the loop and the last flush -------------------------------------------------------------

    def tick(self) -> None:
        self.seal(hour_start(self._clock.now()) - HOUR)
        self.send_due()
        self.update_gauges()

    def run(self, wait: Callable[[float], bool]) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("metering tick failed; trying again at the next tick")
            if wait(self.settings.tick):
                return

    def flush(self, deadline: float, wait: Callable[[float], bool]) -> int:
        """On shutdown: seal the current partial hour too (it is this pod's last record) and send all, until
        `deadline` (clock time). Returns how many records are still unsent."""
        now_hour = hour_start(self._clock.now())
        # Records too old to send are carried into the current hour *before* it is sealed: carried after,
        # their usage would land in the next hour, which this pod never sends.
        self.seal(now_hour - HOUR)
        with self._lock:
            self._due(self._clock.now(), flushing=True)
        self.seal(now_hour)
        remaining = self.send_due(flushing=True, deadline=deadline)
        while remaining and self._clock.now() < deadline:
            if wait(min(0.5, max(0.0, deadline - self._clock.now()))):
                break
            remaining = self.send_due(flushing=True, deadline=deadline)
        self.update_gauges()
        return remaining

    def update_gauges(self) -> None:
        now = self._clock.now()
        pending: dict[str, int] = dict.fromkeys(self.settings.dimensions, 0)
        for dimension, _hour, _tags, quantity in self.ledger.open_usage():
            pending[dimension] = pending.get(dimension, 0) + quantity
        unsent = self.ledger.records(states=("sealed",))
        for record in unsent:
            pending[record.dimension] = pending.get(record.dimension, 0) + record.quantity
        for dimension, quantity in pending.items():
            self._metrics.pending.labels(dimension=dimension).set(quantity)
        oldest = min((r.hour for r in unsent), default=None)
        self._metrics.oldest_unsent.set(0 if oldest is None else max(0.0, now - oldest - HOUR))


def _first_hour(conn: sqlite3.Connection, now_hour: int) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'first_hour'").fetchone()
    if row:
        return int(row[0])
    conn.execute("INSERT INTO meta (key, value) VALUES ('first_hour', ?)", (str(now_hour),))
    return now_hour


def records_json(meter: Meter) -> list[dict[str, Any]]:
    """Every hourly record: the open hours (from the usage table) and the sealed ones, with their state."""
    out: list[dict[str, Any]] = []
    open_hours: dict[tuple[str, int], dict[str, int]] = {}
    for dimension, hour, tags, quantity in meter.ledger.open_usage():
        open_hours.setdefault((dimension, hour), {})[tags] = quantity
    for record in meter.ledger.records():
        request = record.request
        allocations = [
            {
                "tags": {t["Key"]: t["Value"] for t in a.get("Tags", [])},
                "quantity": a["AllocatedUsageQuantity"],
            }
            for a in request.get("UsageAllocations", [])
        ] or [{"tags": {}, "quantity": record.quantity}]
        out.append(
            {
                "dimension": record.dimension,
                "hour": iso(record.hour),
                "state": record.state,
                "quantity": record.quantity,
                "allocations": allocations,
                "metering_record_id": record.metering_record_id,
                "attempts": record.attempts,
                "last_error": record.last_error,
                "note": record.note,
            }
        )
    for (dimension, hour), usage in sorted(open_hours.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        built = build_record(usage)
        out.append(
            {
                "dimension": dimension,
                "hour": iso(hour),
                "state": "open",
                "quantity": built.quantity,
                "allocations": [
                    {"tags": {k: v for k, v in json.loads(key)} if key else {}, "quantity": q}
                    for key, q in built.allocations
                ],
                "metering_record_id": None,
                "attempts": 0,
                "last_error": None,
                "note": None,
            }
        )
    return out
