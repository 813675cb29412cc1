"""Item 7: the AWS calls of a simulated day, counted from the emulator's call log.

Both clocks are driven (the emulator's settable clock, frozen; the sidecar's METERING_FAKE_CLOCK_FILE), so
24 hours pass in seconds. Every hour the product reports usage for every dimension; the hour then closes
and the sidecar sends it. The sidecar is restarted twice (SIGTERM, then a new process on the same state
dir), and at some hours the product asks for attestations in a burst, more than the rate limit allows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from bench.procs import DIMENSIONS, Emu, Launcher, Proc, get_json, request

HOUR = 3600
T0 = 1795653000.0  # 2026-11-26T00:30:00Z
RESTART_AFTER = (8, 16)  # restart once these hours are sent, before the next hour's usage
ATTEST_AT = (3, 9, 15, 21)
ATTEST_BURST = 5


@dataclass(frozen=True)
class CallCounts:
    hours: int
    starts: int
    meter_usage: int  # MeterUsage calls, DryRun excluded
    meter_usage_expected: int  # one per dimension per hour with usage
    most_per_dimension_hour: int  # the most MeterUsage calls for one (dimension, hour)
    dry_runs: int  # DryRun MeterUsage: the sidecar's start-up check, one per start
    register_start: int  # RegisterUsage with the sidecar's own nonce: one per start
    register_attest: int  # RegisterUsage for attest requests (the product's nonces)
    attest_allowed: int  # what the token bucket allows for the bursts
    attest_refused: int  # 429 answers
    seconds: float

    @property
    def exact(self) -> bool:
        return (
            self.meter_usage == self.meter_usage_expected
            and self.most_per_dimension_hour == 1
            and self.register_start == self.starts
            and self.register_attest <= self.attest_allowed
        )


def count(calls: list[dict[str, Any]], attest_nonces: set[str]) -> tuple[int, int, int, int, int]:
    """(MeterUsage, the most for one dimension-hour, DryRuns, RegisterUsage at start, for attest)."""
    meter = [c for c in calls if c["operation"] == "MeterUsage" and not (c["request"] or {}).get("DryRun")]
    per_key: dict[tuple[str, int], int] = {}
    for c in meter:
        key = (c["request"]["UsageDimension"], int(c["request"]["Timestamp"]) // HOUR * HOUR)
        per_key[key] = per_key.get(key, 0) + 1
    dry_runs = sum(1 for c in calls if c["operation"] == "MeterUsage" and (c["request"] or {}).get("DryRun"))
    register = [c for c in calls if c["operation"] == "RegisterUsage"]
    attest = sum(1 for c in register if (c["request"] or {}).get("Nonce") in attest_nonces)
    return len(meter), max(per_key.values(), default=0), dry_runs, len(register) - attest, attest


class Day:
    def __init__(self, launcher: Launcher, emu: Emu) -> None:
        self.launcher = launcher
        self.emu = emu
        self.clock_file = launcher.workdir / "day-clock-offset"
        self.state_dir = launcher.workdir / "day-state"
        self.sidecar: Proc | None = None
        self.starts = 0

    def move_to(self, t: float) -> None:
        self.emu.clock.set(t)
        self.clock_file.write_text(str(t - time.time()))

    def start(self) -> None:
        self.starts += 1
        self.sidecar = self.launcher.sidecar(
            self.emu,
            METERING_STATE_DIR=str(self.state_dir),
            METERING_FAKE_CLOCK_FILE=str(self.clock_file),
            METERING_TICK="0.05",
            METERING_SEND_SPREAD="0",
            METERING_RETRY_INITIAL_DELAY="0.05",
            METERING_RETRY_MAX_DELAY="0.5",
            # One pod: the same identity at every start.
            **{"AWS_CONTAINER_AUTHORIZATION_TOKEN": "bench-day-pod"},
        )
        self.sidecar.wait_ready()

    def post_usage(self, hour: int) -> None:
        assert self.sidecar is not None
        events = [
            {"dimension": d, "quantity": 1 + (hour + i) % 9, "tags": {"tenant": f"t{i % 4}"}}
            for i, d in enumerate(DIMENSIONS * 4)
        ]
        status, body = request(
            self.sidecar.port, "POST", "/v1/usage", json.dumps({"events": events}).encode()
        )
        if status != 202:
            raise RuntimeError(f"usage refused: {status} {body!r}")

    def wait_sent(self, timeout: float = 30.0) -> None:
        assert self.sidecar is not None
        deadline = time.monotonic() + timeout
        status: Any = None
        while time.monotonic() < deadline:
            _, status = get_json(self.sidecar.port, "/v1/status")
            if not status["records"].get("sealed") and not any(status["pending_quantity"].values()):
                return
            time.sleep(0.02)
        raise RuntimeError(f"records still unsent: {status}\n{self.sidecar.log.read_text()}")

    def attest_burst(self, hour: int, nonces: set[str]) -> tuple[int, float]:
        """Fresh nonces as fast as possible, and one repeat (served from the cache). Returns the 429s and
        how long the burst took (the bucket refills during it)."""
        assert self.sidecar is not None
        refused = 0
        began = time.monotonic()
        burst = [f"bench-attest-{hour}-{i}" for i in range(ATTEST_BURST)]
        for nonce in [*burst, burst[0]]:
            nonces.add(nonce)
            status, _ = request(
                self.sidecar.port, "POST", "/v1/entitlement/attest", json.dumps({"nonce": nonce}).encode()
            )
            refused += status == 429
        return refused, time.monotonic() - began


def simulate(launcher: Launcher, emu: Emu, hours: int = 24, attest_rate: float = 1.0) -> CallCounts:
    began = time.monotonic()
    day = Day(launcher, emu)
    day.move_to(T0)
    nonces: set[str] = set()
    allowed = 0.0
    refused = 0
    day.start()
    try:
        for hour in range(hours):
            day.post_usage(hour)
            if hour in ATTEST_AT:
                n, took = day.attest_burst(hour, nonces)
                refused += n
                # A full bucket (burst = max(1, rate)), plus what refills while the burst runs.
                allowed += max(1.0, attest_rate) + attest_rate * took
            day.move_to(T0 + (hour + 1) * HOUR)
            day.wait_sent()
            if hour in RESTART_AFTER:
                assert day.sidecar is not None
                day.sidecar.stop()
                day.start()
    finally:
        if day.sidecar is not None:
            day.sidecar.stop()
    meter, most, dry_runs, register_start, register_attest = count(emu.calls(), nonces)
    return CallCounts(
        hours=hours,
        starts=day.starts,
        meter_usage=meter,
        meter_usage_expected=hours * len(DIMENSIONS),
        most_per_dimension_hour=most,
        dry_runs=dry_runs,
        register_start=register_start,
        register_attest=register_attest,
        attest_allowed=int(allowed),
        attest_refused=refused,
        seconds=time.monotonic() - began,
    )
