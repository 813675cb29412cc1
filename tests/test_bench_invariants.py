"""What the benchmark (bench/, `make bench`) measures that cannot drift with noise, asserted in CI.

No timing is asserted here: these machines are noisy. What is asserted:
- the AWS calls of a simulated day (both clocks driven, so 24 hours pass in seconds), counted from the
  emulator's call log: exactly one MeterUsage per dimension per hour with usage, one RegisterUsage per start,
  and attest calls to RegisterUsage no more than the rate limit allows;
- that the sidecar's memory does not grow with the number of events, only with the number of tag sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import Emu
from sidecar_proc import DIMENSIONS, HOUR, Sidecar, get, post, sidecar_env, start_sidecar

from sidecar.clock import SettableClock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))


def rss_mib(sidecar: Sidecar) -> float:
    for line in Path(f"/proc/{sidecar.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_benchmarks_simulated_day_makes_exactly_the_aws_calls_it_should(tmp_path: Path) -> None:
    """Item 7 as the benchmark runs it (bench/aws_calls.py's own simulate), so CI checks what `make
    bench` reports: 24 hours, two restarts, four attest bursts larger than the rate limit allows."""
    from bench import aws_calls
    from bench.procs import DIMENSIONS, Emu, Launcher

    emu = Emu(SettableClock(aws_calls.T0, frozen=True))
    try:
        counts = aws_calls.simulate(Launcher(tmp_path), emu)
        calls = emu.calls()
    finally:
        emu.stop()

    assert counts.exact, counts  # the benchmark's own verdict: the counts below, taken together
    assert counts.meter_usage == counts.meter_usage_expected == 24 * len(DIMENSIONS)
    assert counts.most_per_dimension_hour == 1, "exactly one MeterUsage per dimension per hour"
    assert counts.starts == 3 and counts.register_start == counts.starts, "one RegisterUsage per start"
    assert counts.dry_runs == counts.starts  # the start-up check: exactly one per start
    bursts = len(aws_calls.ATTEST_AT)
    assert bursts <= counts.register_attest <= counts.attest_allowed, counts
    # Each burst asks for more fresh nonces than the bucket holds: the rest were refused with 429, not sent.
    assert counts.attest_refused >= bursts * aws_calls.ATTEST_BURST - counts.attest_allowed > 0, counts
    # Every hour of the day, for every dimension, accepted by the emulator.
    meter = [c for c in calls if c["operation"] == "MeterUsage" and not c["request"].get("DryRun")]
    first = int(aws_calls.T0 // HOUR * HOUR)
    assert {(c["request"]["UsageDimension"], c["request"]["Timestamp"]) for c in meter} == {
        (d, first + h * HOUR) for d in DIMENSIONS for h in range(24)
    }
    assert all(c["status"] == 200 for c in meter), [c for c in meter if c["status"] != 200]


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
    from bench import wrk

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
