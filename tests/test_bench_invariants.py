"""What the benchmark (bench/, `make bench`) measures that cannot drift with noise, asserted in CI.

No timing is asserted here: these machines are noisy. What is asserted:
- the AWS calls of a simulated day (both clocks driven, so 24 hours pass in seconds), counted from the
  emulator's call log: exactly one MeterUsage per dimension per hour with usage, one RegisterUsage per start,
  and attest calls to RegisterUsage no more than the rate limit allows;
- that the sidecar's memory does not grow with the number of events, only with the number of tag sets.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import T0, Emu
from sidecar_proc import DIMENSIONS, HOUR, Pod, Sidecar, get, post, sidecar_env, start_sidecar

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(sidecar: Sidecar) -> float:
    for line in Path(f"/proc/{sidecar.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Day(Pod):
    """One pod over a simulated day, reporting every hour and asking for attestations in bursts."""

    def report_hour(self, hour: int) -> None:
        events = [
            {"dimension": d, "quantity": 1 + (hour + i) % 5, "tags": {"tenant": f"t{i % 3}"}}
            for i, d in enumerate(DIMENSIONS * 3)
        ]
        status, body = self.post({"events": events})
        assert status == 202, body

    def attest_burst(self, hour: int, nonces: set[str], size: int = 4) -> tuple[int, float]:
        """Fresh nonces as fast as it can, then one repeat (the cache answers it). Returns the 429s and how
        long the burst took."""
        fresh = [f"attest-{hour}-{i}" for i in range(size)]
        nonces.update(fresh)
        refused = 0
        began = time.monotonic()
        for nonce in [*fresh, fresh[0]]:
            status, body = self.post({"nonce": nonce}, "/v1/entitlement/attest")
            assert status in (200, 429), body
            refused += status == 429
        return refused, time.monotonic() - began


def test_a_simulated_day_makes_exactly_the_aws_calls_it_should(emu: Emu, tmp_path: Path) -> None:
    hours, restart_after, attest_at = 24, (7, 15), (2, 10, 18)
    day = Day(emu, tmp_path)
    day.move_to(T0)
    nonces: set[str] = set()
    allowed = 0.0
    refused = 0
    day.start()
    try:
        for hour in range(hours):
            day.report_hour(hour)
            if hour in attest_at:
                n, took = day.attest_burst(hour, nonces)
                refused += n
                # The bucket is full (an hour has passed): burst = max(1, rate) = 1, plus what refills
                # (1/s) while the burst runs.
                allowed += 1 + took
            day.move_to(T0 + (hour + 1) * HOUR)
            day.wait_sent()
            if hour in restart_after:  # a restart between hours: SIGTERM, then a new process
                assert day.stop() == 0
                day.start()
    finally:
        day.stop()

    calls = emu.calls()
    meter = [c for c in calls if c["operation"] == "MeterUsage" and not c["request"].get("DryRun")]
    keys = [(c["request"]["UsageDimension"], c["request"]["Timestamp"]) for c in meter]
    first = int(T0 // HOUR * HOUR)
    expected = {(d, first + h * HOUR) for d in DIMENSIONS for h in range(hours)}
    assert len(meter) == hours * len(DIMENSIONS), "exactly one MeterUsage per dimension per hour"
    assert set(keys) == expected and len(keys) == len(set(keys))
    assert all(c["status"] == 200 for c in meter), [c for c in meter if c["status"] != 200]

    register = [c for c in calls if c["operation"] == "RegisterUsage"]
    at_start = [c for c in register if c["request"]["Nonce"] not in nonces]
    for_attest = [c for c in register if c["request"]["Nonce"] in nonces]
    assert day.starts == 3
    assert len(at_start) == day.starts, "one RegisterUsage per start"
    assert len(attest_at) <= len(for_attest) <= int(allowed), (len(for_attest), allowed)
    assert refused >= len(attest_at) * 4 - int(allowed)  # the rest were refused with 429, not sent
    dry_runs = [c for c in calls if c["operation"] == "MeterUsage" and c["request"].get("DryRun")]
    assert len(dry_runs) == day.starts  # the start-up check: exactly one per start


def test_memory_does_not_grow_with_the_event_count(emu: Emu, tmp_path: Path) -> None:
    tag_sets, batch = 500, 1000
    env = sidecar_env(emu, tmp_path, METERING_DIMENSIONS=",".join(DIMENSIONS))
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    try:
        assert sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled"
        bodies = []
        for b in range(4):
            events = []
            for i in range(b * batch, (b + 1) * batch):
                t = i % tag_sets
                events.append(
                    {
                        "dimension": DIMENSIONS[i % 2],
                        "quantity": 1,
                        "tags": {"tenant": f"t{t:04d}", "plan": f"p{t % 5}"},
                    }
                )
            bodies.append({"events": events})
        sent = 0

        def post_until(total: int) -> None:
            nonlocal sent
            while sent < total:
                status, body = post(sidecar.url + "/v1/usage", bodies[(sent // batch) % len(bodies)])
                assert status == 202, body
                sent += batch

        post_until(50_000)  # every tag set is there by now: the hour holds all it will hold
        after_50k = rss_mib(sidecar)
        post_until(250_000)
        after_250k = rss_mib(sidecar)
        _, status = get(sidecar.url + "/v1/status")
        assert sum(status["pending_quantity"].values()) == 250_000
        # Five times the events: the memory stays (a generous bound; the expected growth is about 0).
        assert after_250k - after_50k < 30, (after_50k, after_250k)
    finally:
        assert sidecar.stop() == 0


def test_the_benchmark_reads_wrk_output() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench import wrk
    finally:
        sys.path.remove(str(ROOT))
    output = """Running 10s test @ http://127.0.0.1:8787/v1/usage
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  800.00us  12.50ms   80.00%
  Latency Distribution
     50%  950.00us
     75%    2.00ms
     90%    3.10ms
     99%    1.20s
  23456 requests in 10.01s, 3.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   2343.36
Transfer/sec:    306.00KB
"""
    result = wrk.parse(output)
    assert (result.requests, result.rps, result.non_2xx) == (23456, 2343.36, 3)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == pytest.approx((0.95, 3.1, 1200.0))
    assert result.seconds == 10.01
