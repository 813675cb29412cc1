"""The usage side of the local API: ingest into the ledger, and what the records and metering look like."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from sidecar.allocations import Event, hour_start, parse_events
from sidecar.clock import Clock, iso
from sidecar.entitlement import EntitlementService
from sidecar.ledger import Ingested, Ledger
from sidecar.meter import Meter, records_json
from sidecar.metrics import Metrics


class UsageUnavailable(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class UsageService:
    def __init__(
        self, ledger: Ledger, meter: Meter, entitlement: EntitlementService, clock: Clock, metrics: Metrics
    ) -> None:
        self.ledger = ledger
        self.meter = meter
        self.entitlement = entitlement
        self.dimensions = frozenset(meter.settings.dimensions)
        self._clock = clock
        # The counters' children, looked up once: labels() takes a lock and a dict lookup on every call.
        self._refused = metrics.events.labels(result="refused")
        self._accepted = metrics.events.labels(result="accepted")
        self._duplicate = metrics.events.labels(result="duplicate")
        self.accepting = True

    def parse(self, body: Any) -> list[Event]:
        try:
            return parse_events(body, self.dimensions)
        except ValueError:
            self._refused.inc()
            raise

    def ingest(self, events: list[Event]) -> Future[Ingested]:
        return self.ledger.ingest(events, self._open_hour())

    async def ingest_async(self, events: list[Event]) -> Ingested:
        """ingest, awaited on the event loop (the API's way: one loop wake-up per commit)."""
        return await self.ledger.ingest_async(events, self._open_hour())

    def _open_hour(self) -> int:
        if not self.accepting:
            raise UsageUnavailable(
                503, "shutting_down", "the sidecar is shutting down and sending its last records"
            )
        state = self.entitlement.snapshot()
        if state.status != "entitled":
            raise UsageUnavailable(
                503, "not_entitled", f"usage is accepted once entitled; entitlement is {state.status}"
            )
        return hour_start(self._clock.now())

    def counted(self, result: Ingested) -> None:
        self._accepted.inc(result.accepted)
        if result.duplicates:
            self._duplicate.inc(result.duplicates)

    def records(self) -> list[dict[str, Any]]:
        return records_json(self.meter)

    def status(self) -> dict[str, Any]:
        now = self._clock.now()
        records = self.ledger.records()
        by_state: dict[str, int] = {}
        for record in records:
            by_state[record.state] = by_state.get(record.state, 0) + 1
        unsent = [r for r in records if r.state == "sealed"]
        oldest = min(unsent, key=lambda r: r.hour) if unsent else None
        sent = [r.sent_at for r in records if r.sent_at is not None]
        last_success = self.meter.last_success or (max(sent) if sent else None)
        rejected = [r for r in records if r.state == "rejected"]
        pending: dict[str, int] = dict.fromkeys(sorted(self.dimensions), 0)
        for dimension, _hour, _tags, quantity in self.ledger.open_usage():
            pending[dimension] = pending.get(dimension, 0) + quantity
        for record in unsent:
            pending[record.dimension] = pending.get(record.dimension, 0) + record.quantity
        healthy = not rejected and (oldest is None or now - oldest.hour < 2 * 3600)
        return {
            "entitlement": self.entitlement.snapshot().status,
            "metering": "ok" if healthy else "attention",
            "now": iso(now),
            "last_success": iso(last_success) if last_success else None,
            "consecutive_failures": self.meter.consecutive_failures,
            "oldest_unsent": None
            if oldest is None
            else {
                "dimension": oldest.dimension,
                "hour": iso(oldest.hour),
                "waiting_seconds": max(0, int(now - oldest.hour - 3600)),
                "last_error": oldest.last_error,
            },
            "records": by_state,
            "rejected": [
                {"dimension": r.dimension, "hour": iso(r.hour), "quantity": r.quantity, "error": r.last_error}
                for r in rejected
            ],
            "pending_quantity": pending,
            "send_offset_seconds": round(self.meter.offset),
        }
