"""Item 4: RSS when idle and ready, and as events pile up (they should not make it grow: tag sets may)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import BATCH, DIMENSIONS, TAG_SETS, Emu, Launcher, Proc, Settings
from bench.report import Row


def usage_bodies(batch: int = BATCH, tag_sets: int = TAG_SETS, count: int = 10) -> list[bytes]:
    """Batch bodies that together cover every (tag set, dimension) pair: event i has tag set i % tag_sets
    and dimension i % 3 (2,500 and 3 are coprime, so 7,500 events cover all pairs)."""
    bodies = []
    for b in range(count):
        events = []
        for i in range(b * batch, (b + 1) * batch):
            t = i % tag_sets
            events.append(
                {
                    "dimension": DIMENSIONS[i % len(DIMENSIONS)],
                    "quantity": i % 7 + 1,
                    "tags": {"tenant": f"t{t:04d}", "plan": f"p{t % 5}"},
                }
            )
        bodies.append(json.dumps({"events": events}, separators=(",", ":")).encode())
    return bodies


def post_events(proc: Proc, total: int, at: Callable[[int], None], batch: int = BATCH) -> float:
    """Post `total` events in batches on one keep-alive connection; calls at(events_so_far) after each
    request. Returns the seconds it took. Bounded: total / batch requests."""
    bodies = usage_bodies(batch)
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=60)
    began = time.monotonic()
    try:
        for n in range(total // batch):
            conn.request(
                "POST",
                "/v1/usage",
                body=bodies[n % len(bodies)],
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            answer = response.read()
            if response.status != 202:
                raise RuntimeError(f"usage refused: {response.status} {answer[:300]!r}")
            at((n + 1) * batch)
    finally:
        conn.close()
    return time.monotonic() - began


@dataclass(frozen=True)
class Memory:
    idle_mib: float
    baseline_idle_mib: float
    floor_idle_mib: float  # the baseline app with the sidecar's libraries loaded and used
    at: dict[int, float]  # events -> RSS MiB
    seconds: float


def idle_rss(proc: Proc) -> float:
    """RSS in MiB of a server once ready and left alone for a second; then it is stopped."""
    try:
        proc.wait_ready()
        time.sleep(1.0)
        return proc.rss_mib()
    finally:
        proc.stop()


def measure_memory(launcher: Launcher, emu: Emu, s: Settings) -> Memory:
    baseline_idle = idle_rss(launcher.baseline())
    floor_idle = idle_rss(launcher.floor(emu))
    proc = launcher.sidecar(emu)
    try:
        proc.wait_ready()
        time.sleep(1.0)  # idle and ready: RegisterUsage done, the meter's first tick run
        idle = proc.rss_mib()
        marks = {s.memory_events // 10, s.memory_events // 2, s.memory_events}
        at: dict[int, float] = {}

        def check(events: int) -> None:
            if events in marks:
                at[events] = proc.rss_mib()

        seconds = post_events(proc, s.memory_events, check)
    finally:
        proc.stop()
    return Memory(idle, baseline_idle, floor_idle, at, seconds)


def memory_rows(mem: Memory) -> list[Row]:
    marks = sorted(mem.at)
    first, last = marks[0], marks[-1]
    growth = mem.at[last] - mem.at[first]
    rows = [
        Row(
            "4 RSS idle and ready",
            f"{mem.idle_mib:.1f} MiB",
            f"{mem.baseline_idle_mib:.1f} MiB",
            f"{mem.idle_mib / mem.baseline_idle_mib:.2f}",
            "<= 60 MiB",
            (mem.idle_mib <= 60),
        ),
        Row(
            # bench/baseline_app.py --libraries: see load_libraries() there.
            "4 RSS idle: the libraries' floor (bare app + boto3 client, cryptography, prometheus, SQLite, in use)",
            f"{mem.floor_idle_mib:.1f} MiB",
            f"{mem.baseline_idle_mib:.1f} MiB",
            f"+{mem.floor_idle_mib - mem.baseline_idle_mib:.1f} MiB",
        ),
        Row(
            "4 RSS idle: the sidecar's own code and state, above that floor",
            f"+{mem.idle_mib - mem.floor_idle_mib:.1f} MiB",
            f"{mem.floor_idle_mib:.1f} MiB floor",
        ),
    ]
    rows += [
        Row(
            f"4 RSS after {n:,} events ({TAG_SETS:,} tag sets x 3 dimensions)",
            f"{mem.at[n]:.1f} MiB",
            f"{mem.idle_mib:.1f} MiB idle",
            f"+{mem.at[n] - mem.idle_mib:.1f} MiB",
        )
        for n in marks
    ]
    rows.append(
        Row(
            f"4 RSS growth from {first:,} to {last:,} events",
            f"{growth:+.1f} MiB",
            "",
            "",
            "bounded by tag sets (< 10 MiB)",
            (growth < 10),
        )
    )
    return rows
