"""The hourly engine against the emulator: real boto3, real SQLite, one frozen clock shared by both.

Time only moves when a test moves it (emu.clock); nothing sleeps. T0 is 10:30, so the first hour H0 is 10:00.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import DIMENSIONS, PRODUCT, T0, Emu

from sidecar.allocations import HOUR, client_token, freeze, hour_start, parse_events
from sidecar.clock import iso
from sidecar.ledger import Ledger
from sidecar.meter import Meter, MeterSettings, records_json
from sidecar.metrics import Metrics
from sidecar.retry import Backoff
from sidecar.usage import UsageService

H0 = hour_start(T0)  # 2026-11-26T10:00:00Z
SEED = 20261126


class Entitled:
    """UsageService asks the entitlement service for its state; these tests are about metering."""

    def snapshot(self) -> Any:
        return SimpleNamespace(status="entitled")


class Rig:
    def __init__(self, emu: Emu, ledger: Ledger, backoff: Backoff | None = None, **changes: Any) -> None:
        self.emu = emu
        self.clock = emu.clock
        self.ledger = ledger
        self.metrics = Metrics()
        client = emu.client(attempts=1)
        settings: dict[str, Any] = {"product_code": PRODUCT, "dimensions": tuple(DIMENSIONS)}
        settings.update(changes)
        self.settings = MeterSettings(**settings)
        self.meter = Meter(
            self.settings,
            ledger,
            lambda params: client.meter_usage(**params),
            clock=emu.clock,
            metrics=self.metrics,
            backoff=backoff or Backoff(initial=5.0, maximum=300.0, rng=random.Random(SEED)),
            rng=random.Random(SEED),
        )
        self.usage = UsageService(ledger, self.meter, Entitled(), emu.clock, self.metrics)

    def report(self, body: Any) -> None:
        self.usage.counted(self.usage.ingest(self.usage.parse(body)).result(timeout=10))

    def at(self, t: float) -> None:
        """Move the shared clock to `t` and run one metering tick there."""
        assert t >= self.clock.now()
        self.clock.set(t)
        self.meter.tick()

    def run_until(self, t: float, step: float = 300.0) -> None:
        """Tick every `step` seconds of clock time up to `t` (the sidecar ticks every 15 s; coarser is
        enough when nothing in between depends on it)."""
        now = self.clock.now()
        while now < t:
            now = min(t, now + step)
            self.at(now)

    def meter_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.emu.calls() if c["operation"] == "MeterUsage"]

    def states(self) -> dict[tuple[str, int], str]:
        return {(r.dimension, r.hour): r.state for r in self.ledger.records()}

    def gauge(self, name: str, **labels: str) -> float | None:
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value

    def counter(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value("metering_records_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "ledger.db")
    yield opened
    opened.close()


@pytest.fixture
def rig(emu: Emu, ledger: Ledger) -> Rig:
    return Rig(emu, ledger)


def billed(emu: Emu) -> dict[str, int]:
    totals: dict[str, int] = {}
    for record in emu.records():
        totals[record["dimension"]] = totals.get(record["dimension"], 0) + record["quantity"]
    return totals


# --- (a) seal after the hour, send after the offset ------------------------------------------------


def test_an_hour_is_sealed_after_it_closes_and_sent_after_the_pod_offset(rig: Rig, emu: Emu) -> None:
    offset = rig.meter.offset
    assert offset == random.Random(SEED).uniform(0, rig.settings.send_spread)
    assert 1 < offset < rig.settings.send_spread  # this seed gives a visible offset
    rig.report(
        {
            "events": [
                {"dimension": "requests", "quantity": 5, "tags": {"tenant": "a"}},
                {"dimension": "requests", "quantity": 2},
                {"dimension": "storage_gb", "quantity": 7, "tags": {"tenant": "b", "tier": "gold"}},
                {"dimension": "requests", "quantity": 1, "tags": {"tenant": "a"}},
            ]
        }
    )

    rig.at(H0 + HOUR - 1)  # 10:59:59: the hour is still open
    assert rig.ledger.records() == []
    assert {(r["dimension"], r["state"]) for r in records_json(rig.meter)} == {
        ("requests", "open"),
        ("storage_gb", "open"),
    }

    rig.at(H0 + HOUR)  # 11:00:00: sealed, but this pod's turn comes `offset` seconds later
    assert rig.states() == {("requests", H0): "sealed", ("storage_gb", H0): "sealed"}
    assert rig.ledger.open_usage() == []
    rig.at(H0 + HOUR + offset - 0.5)
    assert rig.meter_calls() == []

    rig.at(H0 + HOUR + offset)
    assert rig.states() == {("requests", H0): "sent", ("storage_gb", H0): "sent"}
    records = {r["dimension"]: r for r in emu.records()}
    assert sorted(records) == ["requests", "storage_gb"]
    assert len(emu.records()) == 2
    pod = rig.ledger.pod_id
    assert records["requests"]["request"] == {
        "ProductCode": PRODUCT,
        "Timestamp": H0,
        "UsageDimension": "requests",
        "UsageQuantity": 8,
        "UsageAllocations": [
            {"AllocatedUsageQuantity": 6, "Tags": [{"Key": "tenant", "Value": "a"}]},
            {"AllocatedUsageQuantity": 2},
        ],
        "ClientToken": client_token(pod, PRODUCT, "requests", H0),
    }
    assert records["storage_gb"]["request"] == {
        "ProductCode": PRODUCT,
        "Timestamp": H0,
        "UsageDimension": "storage_gb",
        "UsageQuantity": 7,
        "UsageAllocations": [
            {
                "AllocatedUsageQuantity": 7,
                "Tags": [{"Key": "tenant", "Value": "b"}, {"Key": "tier", "Value": "gold"}],
            }
        ],
        "ClientToken": client_token(pod, PRODUCT, "storage_gb", H0),
    }
    by_dimension = {r.dimension: r for r in rig.ledger.records()}
    for dimension, record in records.items():
        assert by_dimension[dimension].metering_record_id == record["metering_record_id"]
        assert by_dimension[dimension].sent_at == H0 + HOUR + offset
    assert rig.meter.last_success == H0 + HOUR + offset
    assert rig.counter("sent") == 2

    # Later hours with no usage send nothing, and the sent hour is never sent again.
    rig.run_until(H0 + 4 * HOUR)
    assert len(rig.meter_calls()) == 2
    assert len(emu.records()) == 2


def test_usage_reported_after_its_hour_is_sealed_rolls_into_the_next_hour(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 4})
    rig.at(H0 + HOUR)  # H0 sealed at 11:00
    # A late event stamped by the ledger for H0 (say, it queued while the hour was sealed) rolls forward.
    rig.ledger.ingest(
        parse_events({"dimension": "requests", "quantity": 3}, frozenset(DIMENSIONS)), H0
    ).result()
    rig.run_until(H0 + 2 * HOUR + rig.meter.offset)
    assert [(r["hour"], r["quantity"]) for r in emu.records()] == [(H0, 4), (H0 + HOUR, 3)]


# --- (b) retries resend the frozen request ---------------------------------------------------------


def test_a_throttled_record_is_resent_byte_identical_after_its_backoff(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 9, "tags": {"tenant": "a"}})
    rig.at(H0 + HOUR)
    [sealed] = rig.ledger.records()
    emu.fault(operation="MeterUsage", kind="throttle", count=2)

    rig.at(H0 + HOUR + rig.meter.offset)
    for attempt in (1, 2):
        [record] = rig.ledger.records()
        assert (record.state, record.attempts) == ("sealed", attempt)
        assert record.last_error is not None and record.last_error.startswith("ThrottlingException")
        assert record.body == sealed.body  # frozen: the stored request never changes
        assert record.next_attempt > rig.clock.now()
        rig.at(record.next_attempt - 0.5)  # not before its time
        assert len(rig.meter_calls()) == attempt
        rig.at(record.next_attempt)
        assert len(rig.meter_calls()) == attempt + 1

    [record] = rig.ledger.records()
    assert record.state == "sent"
    calls = rig.meter_calls()
    assert [(c["status"], c["error"]) for c in calls] == [
        (400, "ThrottlingException"),
        (400, "ThrottlingException"),
        (200, None),
    ]
    assert calls[0]["request"] == calls[1]["request"] == calls[2]["request"] == sealed.request
    assert calls[0]["request"]["ClientToken"] == client_token(rig.ledger.pod_id, PRODUCT, "requests", H0)
    [stored] = emu.records()
    assert stored["metering_record_id"] == record.metering_record_id
    assert (rig.counter("retried"), rig.counter("sent")) == (2, 1)
    assert rig.meter.consecutive_failures == 0


# --- (c) the answer was lost, AWS kept the record ----------------------------------------------------


def test_a_lost_answer_is_resent_and_aws_returns_the_same_record(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "storage_gb", "quantity": 12})
    rig.at(H0 + HOUR)
    emu.fault(operation="MeterUsage", kind="drop_response", count=1)
    rig.at(H0 + HOUR + rig.meter.offset)
    [record] = rig.ledger.records()
    assert record.state == "sealed"  # we don't know that AWS has it
    [stored] = emu.records()  # ... but it does
    rig.at(record.next_attempt)
    [record] = rig.ledger.records()
    assert record.state == "sent"
    assert record.metering_record_id == stored["metering_record_id"]
    assert emu.records() == [stored]
    first, second = rig.meter_calls()
    assert (first["error"], second["error"]) == ("ResponseDropped", None)
    assert first["request"] == second["request"]


def test_after_a_restart_the_same_frozen_request_is_resent(emu: Emu, tmp_path: Path) -> None:
    """The sidecar container restarts (same pod, same emptyDir) after AWS stored a record whose answer
    was lost: the new process resends the stored request and AWS deduplicates it."""
    first = Rig(emu, Ledger(tmp_path / "ledger.db"))
    first.report({"dimension": "requests", "quantity": 3})
    first.at(H0 + HOUR)
    emu.fault(operation="MeterUsage", kind="drop_response", count=1)
    first.at(H0 + HOUR + first.meter.offset)
    [stored] = emu.records()
    pod = first.ledger.pod_id
    first.ledger.close()

    again = Rig(emu, Ledger(tmp_path / "ledger.db"))
    try:
        assert again.ledger.pod_id == pod
        again.run_until(H0 + HOUR + 600)
        [record] = again.ledger.records()
        assert (record.state, record.metering_record_id) == ("sent", stored["metering_record_id"])
        assert emu.records() == [stored]
    finally:
        again.ledger.close()


# --- (d) DuplicateRequestException ---------------------------------------------------------------------


def test_a_duplicate_hour_is_rejected_and_never_resent(rig: Rig, emu: Emu) -> None:
    # Something else with this pod's credentials already metered the hour with another quantity (for
    # example a sidecar whose ledger was lost).
    emu.client().meter_usage(ProductCode=PRODUCT, Timestamp=H0, UsageDimension="requests", UsageQuantity=999)
    rig.report({"dimension": "requests", "quantity": 5})
    rig.run_until(H0 + HOUR + rig.meter.offset + 1)
    [record] = rig.ledger.records()
    assert record.state == "rejected"
    assert record.last_error is not None and record.last_error.startswith("DuplicateRequestException")
    assert record.note is not None and "different quantity" in record.note
    calls = len(rig.meter_calls())
    assert calls == 2
    rig.run_until(H0 + 5 * HOUR)
    assert len(rig.meter_calls()) == calls
    assert [r["quantity"] for r in emu.records()] == [999]
    assert rig.usage.status()["rejected"] == [
        {"dimension": "requests", "hour": iso(H0), "quantity": 5, "error": record.last_error}
    ]
    assert rig.counter("rejected") == 1


# --- (e) a dimension AWS does not know ---------------------------------------------------------------


def test_an_invalid_dimension_is_rejected_kept_and_shown(emu: Emu, ledger: Ledger) -> None:
    rig = Rig(emu, ledger, dimensions=(*DIMENSIONS, "gpu_hours"))
    rig.report(
        {"events": [{"dimension": "gpu_hours", "quantity": 4}, {"dimension": "requests", "quantity": 1}]}
    )
    rig.run_until(H0 + HOUR + rig.meter.offset + 1)
    assert rig.states() == {("gpu_hours", H0): "rejected", ("requests", H0): "sent"}
    [shown] = [r for r in records_json(rig.meter) if r["dimension"] == "gpu_hours"]
    assert shown["state"] == "rejected"
    assert shown["quantity"] == 4
    assert shown["last_error"].startswith("InvalidUsageDimensionException")
    assert shown["note"] == "AWS refused this record for good; it is kept here and not retried"
    status = rig.usage.status()
    assert status["rejected"] == [
        {"dimension": "gpu_hours", "hour": iso(H0), "quantity": 4, "error": shown["last_error"]}
    ]
    assert status["metering"] == "attention"
    assert status["records"] == {"rejected": 1, "sent": 1}
    calls = len(rig.meter_calls())
    rig.run_until(H0 + 4 * HOUR)
    assert len(rig.meter_calls()) == calls  # never retried
    assert [r["dimension"] for r in emu.records()] == ["requests"]


# --- (f) a long outage carries usage forward, inside AWS's 6-hour window ------------------------------


def test_a_long_outage_carries_usage_forward_and_bills_it_once(emu: Emu, ledger: Ledger) -> None:
    # Backoff up to 30 minutes and a tick every 15: fewer calls into the outage, the same rules.
    rig = Rig(emu, ledger, backoff=Backoff(initial=5.0, maximum=1800.0, rng=random.Random(SEED)))
    emu.fault(operation="MeterUsage", kind="error500")  # every call, until cleared
    reported = {"requests": 0, "storage_gb": 0}

    def report(n: int) -> None:
        rig.report({"events": [{"dimension": "requests", "quantity": n, "tags": {"tenant": f"t{n % 3}"}}]})
        rig.report({"dimension": "storage_gb", "quantity": 2 * n})
        reported["requests"] += n
        reported["storage_gb"] += 2 * n

    report(10)  # 10:30, hour H0
    for hour in range(1, 5):  # usage every hour through 14:30
        rig.run_until(H0 + hour * HOUR + 1800, step=900)
        report(10 + hour)
    rig.run_until(H0 + 5 * HOUR - 300, step=900)
    assert rig.states()[("requests", H0)] == "sealed"  # 4h55m: still retrying the hour itself

    rig.at(H0 + 5 * HOUR)  # 15:00: H0 would be refused within the hour; its usage moves to 15:00
    states = rig.states()
    assert states[("requests", H0)] == states[("storage_gb", H0)] == "carried"
    assert states[("requests", H0 + HOUR)] == "sealed"
    [carried] = [r for r in rig.ledger.records() if (r.dimension, r.hour) == ("requests", H0)]
    assert carried.note is not None and iso(H0 + 5 * HOUR) in carried.note
    open_now = {(r["dimension"], r["hour"]): r for r in records_json(rig.meter) if r["state"] == "open"}
    assert open_now[("requests", iso(H0 + 5 * HOUR))]["quantity"] == 10
    assert open_now[("requests", iso(H0 + 5 * HOUR))]["allocations"] == [
        {"tags": {"tenant": "t1"}, "quantity": 10}
    ]
    assert open_now[("storage_gb", iso(H0 + 5 * HOUR))]["quantity"] == 20
    assert rig.usage.status()["metering"] == "attention"
    assert rig.counter("carried") == 2

    rig.run_until(H0 + 5 * HOUR + 1800, step=900)
    report(15)
    rig.run_until(H0 + 6 * HOUR + 600, step=900)  # 16:10: the hour of 11:00 has been carried too
    assert rig.states()[("requests", H0 + HOUR)] == "carried"
    assert emu.records() == []
    emu.admin("DELETE", "/_emulator/faults")

    rig.run_until(H0 + 9 * HOUR, step=900)
    states = rig.states()
    assert set(states.values()) == {"sent", "carried"}
    assert sorted(h for (d, h), s in states.items() if d == "requests" and s == "carried") == [H0, H0 + HOUR]
    assert billed(emu) == reported
    assert rig.ledger.open_usage() == []
    # Nothing was ever sent outside AWS's window, and the carried hours were never billed themselves.
    calls = rig.meter_calls()
    assert all(c["error"] in (None, "InternalServiceErrorException") for c in calls)
    for call in calls:
        assert call["at"] - call["request"]["Timestamp"] <= 6 * HOUR
    assert {r["hour"] for r in emu.records()} == {H0 + h * HOUR for h in (2, 3, 4, 5, 6)}
    # One record per dimension per hour.
    assert len({(r["dimension"], r["hour"]) for r in emu.records()}) == len(emu.records())
    assert rig.usage.status()["metering"] == "ok"


# --- (g) the last flush ---------------------------------------------------------------------------------


def advancing(clock: Any) -> Any:
    def wait(seconds: float) -> bool:
        clock.advance(seconds)
        return False

    return wait


def test_flush_seals_the_current_partial_hour_and_sends_it(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 6, "tags": {"tenant": "a"}})
    rig.clock.set(T0 + 600)  # 10:40, mid-hour, before any offset
    assert rig.meter.flush(T0 + 620, advancing(rig.clock)) == 0
    assert rig.clock.now() == T0 + 600  # nothing to wait for
    [record] = emu.records()
    assert (record["hour"], record["quantity"], record["request"]["Timestamp"]) == (H0, 6, H0)
    assert rig.states() == {("requests", H0): "sent"}
    assert rig.gauge("metering_pending_quantity", dimension="requests") == 0


def test_flush_gives_up_at_its_deadline_and_keeps_the_record(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 6})
    emu.fault(operation="MeterUsage", kind="error500")
    assert rig.meter.flush(T0 + 20, advancing(rig.clock)) == 1
    assert T0 + 20 <= rig.clock.now() < T0 + 21
    assert len(rig.meter_calls()) > 2  # it kept trying within the grace period ...
    assert rig.states() == {("requests", H0): "sealed"}  # ... and the record stays for the next start
    assert rig.gauge("metering_pending_quantity", dimension="requests") == 6
    assert emu.records() == []


def test_flush_after_a_long_pause_sends_old_usage_instead_of_stranding_it(rig: Rig, emu: Emu) -> None:
    """The sidecar was stopped (or stuck) for hours with a sealed record; it is then asked to shut down.
    The record is too old to send as is, so its usage is carried into the current hour, which the flush
    seals and sends: nothing is left behind in an hour this pod will never send."""
    rig.report({"dimension": "requests", "quantity": 7})
    rig.at(H0 + HOUR)  # sealed, not yet sent (offset)
    rig.clock.set(H0 + 5 * HOUR + 600)  # no ticks since: 15:10
    rig.report({"dimension": "requests", "quantity": 2})
    assert rig.meter.flush(rig.clock.now() + 20, advancing(rig.clock)) == 0
    assert rig.ledger.open_usage() == []
    assert [(r["hour"], r["quantity"]) for r in emu.records()] == [(H0 + 5 * HOUR, 9)]
    assert rig.states() == {("requests", H0): "carried", ("requests", H0 + 5 * HOUR): "sent"}


# --- (h) zero hours and the heartbeat ----------------------------------------------------------------


def test_send_zero_hours_sends_a_zero_record_for_each_hour_without_usage(emu: Emu, ledger: Ledger) -> None:
    rig = Rig(emu, ledger, send_zero_hours=True)
    rig.report({"dimension": "requests", "quantity": 4})
    rig.run_until(H0 + 3 * HOUR + rig.meter.offset)
    got = sorted((r["dimension"], r["hour"], r["quantity"]) for r in emu.records())
    assert got == sorted(
        [(d, H0 + h * HOUR, 4 if (d, h) == ("requests", 0) else 0) for d in DIMENSIONS for h in range(3)]
    )
    zero = [r["request"] for r in emu.records() if r["quantity"] == 0]
    assert all("UsageAllocations" not in r and r["UsageQuantity"] == 0 for r in zero)


def test_without_send_zero_hours_no_record_is_sent_for_an_hour_without_usage(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 0})  # reported, but nothing to bill
    rig.run_until(H0 + 3 * HOUR + rig.meter.offset)
    assert rig.meter_calls() == []
    assert rig.ledger.records() == []
    assert rig.ledger.open_usage() == []


def test_the_heartbeat_adds_its_quantity_for_every_pod_hour(emu: Emu, ledger: Ledger) -> None:
    rig = Rig(emu, ledger, heartbeat_dimension="requests", heartbeat_quantity=3)
    rig.report({"dimension": "requests", "quantity": 5, "tags": {"tenant": "a"}})
    rig.run_until(H0 + 3 * HOUR + rig.meter.offset)
    got = sorted((r["dimension"], r["hour"], r["quantity"]) for r in emu.records())
    assert got == [("requests", H0, 8), ("requests", H0 + HOUR, 3), ("requests", H0 + 2 * HOUR, 3)]
    [first] = [r["request"] for r in emu.records() if r["hour"] == H0]
    assert first["UsageAllocations"] == [
        {"AllocatedUsageQuantity": 5, "Tags": [{"Key": "tenant", "Value": "a"}]},
        {"AllocatedUsageQuantity": 3},
    ]
    # The flush adds it for the last, partial hour too: once.
    assert rig.meter.flush(rig.clock.now() + 20, advancing(rig.clock)) == 0
    assert [r["quantity"] for r in emu.records() if r["hour"] == H0 + 3 * HOUR] == [3]
    assert len(emu.records()) == 4


# --- (i) what the records and gauges show ------------------------------------------------------------


def test_records_json_and_gauges_follow_a_record_from_open_to_sent(rig: Rig, emu: Emu) -> None:
    rig.report({"dimension": "requests", "quantity": 5, "tags": {"tenant": "a"}})
    rig.report({"dimension": "requests", "quantity": 2})
    rig.meter.update_gauges()
    assert records_json(rig.meter) == [
        {
            "dimension": "requests",
            "hour": iso(H0),
            "state": "open",
            "quantity": 7,
            "allocations": [{"tags": {"tenant": "a"}, "quantity": 5}, {"tags": {}, "quantity": 2}],
            "metering_record_id": None,
            "attempts": 0,
            "last_error": None,
            "note": None,
        }
    ]
    assert rig.gauge("metering_pending_quantity", dimension="requests") == 7
    assert rig.gauge("metering_pending_quantity", dimension="storage_gb") == 0
    assert rig.gauge("metering_oldest_unsent_seconds") == 0

    rig.at(H0 + HOUR)
    rig.report({"dimension": "requests", "quantity": 4})  # 11:00, the next hour
    rig.at(H0 + HOUR + rig.meter.offset - 1)
    shown = records_json(rig.meter)
    assert [(r["hour"], r["state"], r["quantity"]) for r in shown] == [
        (iso(H0), "sealed", 7),
        (iso(H0 + HOUR), "open", 4),
    ]
    assert shown[0]["allocations"] == [{"tags": {"tenant": "a"}, "quantity": 5}, {"tags": {}, "quantity": 2}]
    assert rig.gauge("metering_pending_quantity", dimension="requests") == 11
    assert rig.gauge("metering_oldest_unsent_seconds") == pytest.approx(rig.meter.offset - 1)
    status = rig.usage.status()
    assert status["oldest_unsent"]["hour"] == iso(H0)
    assert status["pending_quantity"] == {"requests": 11, "storage_gb": 0}

    rig.at(H0 + HOUR + rig.meter.offset)
    [stored] = emu.records()
    shown = records_json(rig.meter)
    assert [(r["hour"], r["state"], r["quantity"], r["metering_record_id"]) for r in shown] == [
        (iso(H0), "sent", 7, stored["metering_record_id"]),
        (iso(H0 + HOUR), "open", 4, None),
    ]
    assert shown[0]["attempts"] == 1
    assert rig.gauge("metering_pending_quantity", dimension="requests") == 4
    assert rig.gauge("metering_oldest_unsent_seconds") == 0
    assert rig.usage.status()["oldest_unsent"] is None
    assert rig.usage.status()["last_success"] == iso(H0 + HOUR + rig.meter.offset)


def test_a_sealed_request_is_frozen_in_the_ledger(rig: Rig) -> None:
    rig.report({"dimension": "storage_gb", "quantity": 1, "tags": {"b": "2", "a": "1"}})
    rig.at(H0 + HOUR)
    [record] = rig.ledger.records()
    assert record.body == freeze(record.request)
    assert record.request["Timestamp"] == H0
