"""The benchmark suite (issue "Performance: a benchmark suite with same-run baselines").

    make bench                      # or: .venv/bin/python -m bench.run   (or: python bench/run.py)
    python -m bench.run --quick     # short runs, to check that everything works
    python -m bench.run --items 1,3 # some items only

It starts the real sidecar as a process on loopback against the emulator, measures it, measures the bare
baseline app (bench/baseline_app.py) the same way right after, and prints a table with each figure next to
its baseline, then writes it to bench/results.md. Items (as numbered in the issue):
  1 single-event ingest   2 batch ingest   3 entitlement reads   4 memory   5 start-up and import time
  6 hour close            7 AWS calls over a simulated day       8 image size (when docker is there)
Load comes from wrk (2 threads, 16 connections, ~10 s per figure after a warm-up). All traffic goes to
127.0.0.1, and every loop is bounded. --python and --pythonpath run the servers on another interpreter or
an experimental copy of the code, to measure a change against the same baseline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`: make `bench` and `sidecar` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import aws_calls, hour_close, image, load, memory, report, startup
from bench.procs import DIMENSIONS, Emu, Launcher, Settings, log
from bench.report import Row
from sidecar.clock import SettableClock


def run(args: argparse.Namespace) -> int:
    s = (
        Settings(seconds=3, warmup=1, rounds=1, starts=3, memory_events=200_000)
        if args.quick
        else Settings(seconds=args.seconds, rounds=args.rounds)
    )
    items = {int(i) for i in args.items.split(",")}
    if items & {1, 2, 3} and shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (make bench does it)")
    workdir = Path(tempfile.mkdtemp(prefix="metering-bench-"))
    launcher = Launcher(workdir, python=args.python, pythonpath=args.pythonpath)
    emu = Emu()
    rows: list[Row] = []
    details: list[str] = [
        f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    ]
    try:
        if items & {1, 2, 3}:
            log(f"items 1-3: HTTP under load, {s.rounds} round(s) of {s.seconds:g} s per figure")
            figures = load.measure_http(launcher, emu, s)
            rows += [r for r in load.http_rows(figures) if int(r.item.split()[0]) in items]
            for name in figures:
                bad = [
                    (k, one.result.non_2xx, one.result.socket_errors)
                    for k, loads in figures[name].items()
                    for one in loads
                    if one.result.non_2xx or one.result.socket_errors
                ]
                details.append(f"{name}: non-2xx answers and socket errors: {bad or 'none'}")
        if 4 in items:
            log(f"item 4: memory, {s.memory_events:,} events")
            mem = memory.measure_memory(launcher, emu, s)
            rows += memory.memory_rows(mem)
            details.append(
                f"memory: {s.memory_events:,} events posted in {mem.seconds:.1f} s on one connection "
                f"({s.memory_events / mem.seconds:,.0f} events/s, sequential)"
            )
        if 5 in items:
            log(f"item 5: start-up, {s.starts} runs each")
            side, base = startup.measure_startup(launcher, emu, s)
            rows.append(
                Row(
                    f"5 start-up: Popen to /readyz 200, median of {s.starts}",
                    f"{statistics.median(side):.3f} s",
                    f"{statistics.median(base):.3f} s",
                    f"{statistics.median(side) / statistics.median(base):.2f}",
                    "<= 1.0 s",
                    (statistics.median(side) <= 1.0),
                )
            )
            details.append(
                "start-up runs (s): sidecar "
                + ", ".join(f"{t:.3f}" for t in side)
                + "; baseline "
                + ", ".join(f"{t:.3f}" for t in base)
            )
            ours = startup.import_time(launcher, "sidecar.run, sidecar.api")
            whole = startup.import_time(
                launcher, "sidecar.run, sidecar.api, sidecar.ledger, sidecar.meter, sidecar.usage, uvicorn"
            )
            bare = startup.import_time(launcher, "fastapi, uvicorn")
            rows.append(
                Row(
                    "5 import time: sidecar.run, sidecar.api",
                    f"{ours.total_ms:.0f} ms",
                    f"{bare.total_ms:.0f} ms (fastapi, uvicorn)",
                    f"{ours.total_ms / bare.total_ms:.2f}",
                )
            )
            rows.append(
                Row(
                    "5 import time: all that `run` imports (+ ledger, meter, usage, uvicorn)",
                    f"{whole.total_ms:.0f} ms",
                    f"{bare.total_ms:.0f} ms",
                    f"{whole.total_ms / bare.total_ms:.2f}",
                )
            )
            details.append(
                "import time, top 10 packages (own time, ms): "
                + ", ".join(f"{name} {ms:.0f}" for name, ms in whole.top)
            )
        if 6 in items:
            log("item 6: hour close, in-process")
            hc = hour_close.measure()
            rows.append(
                Row(
                    f"6 hour close: seal a record of {hc.allocations:,} allocations (median of {hc.repetitions})",
                    f"{hc.seal_ms:.1f} ms",
                    f"{hc.floor_ms:.1f} ms (SQLite floor)",
                    f"{hc.seal_ms / hc.floor_ms:.1f}",
                    "<= 50 ms",
                    (hc.seal_ms <= 50),
                )
            )
            rows.append(
                Row("6 hour close: build_record + meter_request + freeze alone", f"{hc.pure_ms:.1f} ms")
            )
        if 7 in items:
            log("item 7: AWS calls over a simulated day")
            day_emu = Emu(SettableClock(aws_calls.T0, frozen=True))
            try:
                c = aws_calls.simulate(launcher, day_emu)
            finally:
                day_emu.stop()
            rows += [
                Row(
                    f"7 MeterUsage calls, {c.hours} h x {len(DIMENSIONS)} dimensions",
                    str(c.meter_usage),
                    f"{c.meter_usage_expected} expected",
                    "",
                    "exactly 1 per dimension per hour",
                    c.meter_usage == c.meter_usage_expected and c.most_per_dimension_hour == 1,
                ),
                Row(
                    "7 RegisterUsage calls at start",
                    str(c.register_start),
                    f"{c.starts} starts",
                    "",
                    "1 per start",
                    c.register_start == c.starts,
                ),
                Row(
                    "7 RegisterUsage calls for attest",
                    str(c.register_attest),
                    f"<= {c.attest_allowed} allowed",
                    "",
                    "bounded by the rate limit",
                    c.register_attest <= c.attest_allowed,
                ),
            ]
            details.append(
                f"simulated day: {c.hours} h in {c.seconds:.1f} s, {c.starts} starts, "
                f"{c.dry_runs} DryRun MeterUsage (the start-up check), {c.attest_refused} attest 429s"
            )
        if 8 in items:
            sizes = image.measure_image(args.build_image)
            if sizes is None:
                rows.append(Row("8 image: what our layers add", "not measured", "", "", "<= 40 MB", None))
                details.append(
                    "image: no docker image and no build/image-size.txt (scripts/build_image.py makes both)"
                )
            else:
                added, base_bytes, source = sizes
                rows.append(
                    Row(
                        "8 image: what our layers add",
                        f"{added / 1e6:.1f} MB",
                        f"{base_bytes / 1e6:.1f} MB base",
                        f"{added / base_bytes:.2f}",
                        "<= 40 MB",
                        (added <= 40e6),
                    )
                )
                details.append(f"image sizes from {source}")
    finally:
        emu.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    details.append(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.pythonpath or args.python != sys.executable:
        details.append(
            f"servers ran on {args.python}"
            + (f" with PYTHONPATH={args.pythonpath}" if args.pythonpath else "")
        )
    print(report.text(rows))
    if args.results:
        report.write(rows, report.environment(args.python), details, Path(args.results))
        log(f"written to {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", default="1,2,3,4,5,6,7,8", help="which items (default: all)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk figure (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline/sidecar rounds for items 1-3 (default 2)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: checks the suite, not the figures")
    parser.add_argument(
        "--results", default=str(report.RESULTS), help="where to write (default bench/results.md)"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the servers")
    parser.add_argument("--pythonpath", help="PYTHONPATH for the servers (an experimental copy of the code)")
    parser.add_argument(
        "--build-image", action="store_true", help="run scripts/build_image.py first (item 8)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, state dirs)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
