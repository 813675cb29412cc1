"""Metering with real processes: SIGTERM flush, kill -9 at awkward moments, and AWS faults.

The sidecar's clock is driven through METERING_FAKE_CLOCK_FILE and the emulator's through its own
settable clock, so hours pass instantly. The test is the product: it posts usage with event ids and
retries anything not acknowledged, so "billed exactly once" means: the emulator's accepted records
sum, per dimension, to what the product reported, and nothing was refused as a duplicate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, Emu
from sidecar_proc import DIMENSIONS, HOUR, Pod, get, log_lines


@pytest.fixture
def pod(emu: Emu, tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(emu, tmp_path)
    try:
        yield pod
    finally:
        pod.stop()


def events(n: int, rng: random.Random, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "dimension": rng.choice(DIMENSIONS),
            "quantity": rng.randint(0, 50),
            "tags": {"tenant": rng.choice(["a", "b", "c"])} if rng.random() < 0.8 else {},
            "event_id": f"{prefix}-{i}",
        }
        for i in range(n)
    ]


def test_an_hour_is_sent_once_after_it_closes(pod: Pod) -> None:
    pod.start()
    rng = random.Random(1)
    pod.report(events(40, rng, "h0"))
    assert pod.records() == []  # the hour is still open
    pod.move_to(T0 + HOUR)  # 11:30: the 10:00 hour has closed
    pod.wait_sent()
    records = pod.records()
    assert {r["hour"] for r in records} == {int(T0 // HOUR * HOUR)}
    for record in records:
        request = record["request"]
        assert request["Timestamp"] == int(T0 // HOUR * HOUR)
        allocations = request.get("UsageAllocations", [{"AllocatedUsageQuantity": request["UsageQuantity"]}])
        assert sum(a["AllocatedUsageQuantity"] for a in allocations) == request["UsageQuantity"]
    pod.assert_billed_exactly_once()
    assert pod.stop() == 0


def test_sigterm_sends_the_partial_hour_within_the_grace_period(pod: Pod) -> None:
    pod.start()
    pod.report(events(25, random.Random(2), "p"))
    assert pod.sidecar is not None
    began = time.monotonic()
    assert pod.stop() == 0
    took = time.monotonic() - began
    assert took < 20, f"took {took:.1f} s, longer than the default 20 s grace"
    pod.assert_billed_exactly_once()
    assert {r["hour"] for r in pod.records()} == {int(T0 // HOUR * HOUR)}  # the partial 10:00 hour
    flushed = [line for line in log_lines(pod.sidecar) if line["msg"].startswith("final flush")]
    assert flushed and flushed[0]["unsent_records"] == 0


def test_sigterm_gives_up_at_the_grace_period_and_keeps_the_rest(emu: Emu, tmp_path: Path) -> None:
    pod = Pod(emu, tmp_path, METERING_SHUTDOWN_GRACE="2")
    pod.start()
    pod.report(events(10, random.Random(3), "g"))
    emu.fault(operation="MeterUsage", kind="error500")  # AWS is down at shutdown
    began = time.monotonic()
    assert pod.stop() == 0
    assert time.monotonic() - began < 10
    assert pod.records() == []
    # The records stayed in the ledger: a restarted container in the same pod sends them.
    emu.admin("DELETE", "/_emulator/faults")
    pod.start()
    pod.wait_sent()
    pod.assert_billed_exactly_once()
    assert pod.stop() == 0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kill_9_at_random_points_bills_every_acknowledged_event_exactly_once(pod: Pod, seed: int) -> None:
    rng = random.Random(seed)
    pod.start()
    hour = T0
    for step in range(6):
        # Ingest, with a kill -9 somewhere in the middle of a burst.
        burst = events(rng.randint(5, 30), rng, f"s{seed}-{step}")
        if rng.random() < 0.5:
            pod.report(burst[: len(burst) // 2])
            pod.kill9()
            pod.report(burst[len(burst) // 2 :])
        else:
            pod.report(burst)
        # Close the hour; sometimes kill right after it is sealed, or while MeterUsage is in flight,
        # or after AWS stored the record but before the sidecar heard back.
        moment = rng.choice(["sealed", "mid-send", "answer-lost", "none"])
        if moment == "mid-send":
            pod.emu.fault(operation="MeterUsage", kind="latency", latency_ms=400, count=1)
        if moment == "answer-lost":
            pod.emu.fault(operation="MeterUsage", kind="drop_response", count=1)
        hour += HOUR
        pod.move_to(hour)
        if moment in ("sealed", "mid-send", "answer-lost"):
            time.sleep(rng.uniform(0.0, 0.3))  # let the tick seal (and maybe start sending); not a clock wait
            pod.kill9()
            pod.start()
        pod.wait_sent()
    assert pod.stop() == 0
    pod.assert_billed_exactly_once()


def test_aws_faults_throttling_500s_latency_and_drops(pod: Pod) -> None:
    rng = random.Random(7)
    pod.start()
    pod.emu.emulator.faults._random = random.Random(7)  # the fault draws repeat from run to run
    pod.emu.fault(operation="MeterUsage", kind="throttle", rate=0.5)
    pod.emu.fault(operation="MeterUsage", kind="error500", count=3)
    pod.emu.fault(operation="MeterUsage", kind="latency", latency_ms=100, rate=0.3)
    pod.emu.fault(operation="MeterUsage", kind="drop", count=2)
    pod.emu.fault(operation="MeterUsage", kind="drop_response", count=2)
    hour = T0
    for step in range(4):
        pod.report(events(20, rng, f"f{step}"))
        hour += HOUR
        pod.move_to(hour)
        pod.wait_sent(timeout=60)
    assert pod.stop() == 0
    pod.assert_billed_exactly_once()
    calls = [c for c in pod.emu.calls() if c["operation"] == "MeterUsage" and not c["request"].get("DryRun")]
    assert any(c["error"] == "ThrottlingException" for c in calls)
    assert sum(c["error"] == "ResponseDropped" for c in calls) == 2


def test_bad_usage_is_refused_with_the_field_and_nothing_is_stored(pod: Pod) -> None:
    pod.start()
    good = {"dimension": "requests", "quantity": 1}
    cases = [
        ({"dimension": "nope", "quantity": 1}, "dimension"),
        ({"dimension": "requests", "quantity": -1}, "quantity"),
        ({"dimension": "requests", "quantity": 2_147_483_648}, "quantity"),
        ({"dimension": "requests", "quantity": True}, "quantity"),
        ({"dimension": "requests", "quantity": 1, "tags": {f"k{i}": "v" for i in range(6)}}, "tags"),
        ({"dimension": "requests", "quantity": 1, "tags": {"bad#key": "v"}}, "tags"),
        ({"dimension": "requests", "quantity": 1, "tags": {"k": "x" * 257}}, "tags.k"),
        ({"events": [good, good, {"dimension": "requests"}]}, "events[2].quantity"),
        ({"events": []}, "events"),
    ]
    for body, field in cases:
        status, answer = pod.post(body)
        assert status == 422, (body, answer)
        assert answer["error"] == "invalid_request" and answer["message"].startswith(field + ":"), answer
    assert pod.sidecar is not None
    _, usage = get(pod.sidecar.url + "/v1/usage")
    assert usage == {"records": []}
    # Overflow of an hour's total is refused as a whole, too.
    assert pod.post({"dimension": "requests", "quantity": 2_147_483_647})[0] == 202
    status, answer = pod.post(
        {"events": [{"dimension": "storage_gb", "quantity": 5}, {"dimension": "requests", "quantity": 1}]}
    )
    assert status == 422 and "exceed" in answer["message"]
    _, usage = get(pod.sidecar.url + "/v1/usage")
    assert [(r["dimension"], r["quantity"]) for r in usage["records"]] == [("requests", 2_147_483_647)]
