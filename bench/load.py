"""Items 1-3: single-event ingest, batch ingest and entitlement reads under wrk, sidecar and baseline."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from bench import wrk
from bench.procs import BATCH, TAG_SETS, Emu, Launcher, Proc, Settings, log
from bench.report import Row


@dataclass(frozen=True)
class Load:
    """One wrk figure, and the server's CPU time per request while it ran (robust to a noisy machine)."""

    result: wrk.WrkResult
    cpu_us: float


def _load(proc: Proc, path: str, script: str | None, s: Settings, connections: int = 16) -> Load:
    url = f"http://127.0.0.1:{proc.port}{path}"
    env = {**os.environ, "BENCH_TAG_SETS": str(TAG_SETS), "BENCH_BATCH": str(BATCH)}
    wrk.run(url, script=script, seconds=s.warmup, connections=connections, env=env)
    before = proc.cpu_seconds()
    result = wrk.run(url, script=script, seconds=s.seconds, connections=connections, env=env)
    cpu = proc.cpu_seconds() - before
    return Load(result, cpu / max(1, result.requests) * 1e6)


def http_round(proc: Proc, s: Settings) -> dict[str, Load]:
    return {
        "single": _load(proc, "/v1/usage", "usage_single.lua", s),
        "batch": _load(proc, "/v1/usage", "usage_batch.lua", s),
        "entitlement": _load(proc, "/v1/entitlement", None, s),
        "entitlement-1": _load(proc, "/v1/entitlement", None, s, connections=1),
    }


def measure_http(launcher: Launcher, emu: Emu, s: Settings) -> dict[str, dict[str, list[Load]]]:
    """Rounds of baseline then sidecar (the order alternates), each on a fresh process and state dir."""
    figures: dict[str, dict[str, list[Load]]] = {"sidecar": {}, "baseline": {}}
    for n in range(s.rounds):
        order = ("baseline", "sidecar") if n % 2 == 0 else ("sidecar", "baseline")
        for name in order:
            proc = launcher.sidecar(emu) if name == "sidecar" else launcher.baseline()
            try:
                proc.wait_ready()
                for key, load in http_round(proc, s).items():
                    figures[name].setdefault(key, []).append(load)
                    log(f"  {name} {key}: {load.result.rps:,.0f} req/s, p99 {load.result.p99_ms:.2f} ms")
            finally:
                proc.stop()
    return figures


def http_rows(figures: dict[str, dict[str, list[Load]]]) -> list[Row]:
    def m(name: str, key: str, attr: str) -> float:
        loads = figures[name][key]
        if attr == "cpu_us":
            return statistics.median([load.cpu_us for load in loads])
        return statistics.median([float(getattr(load.result, attr)) for load in loads])

    rows = []
    s_rps, b_rps = m("sidecar", "single", "rps"), m("baseline", "single", "rps")
    rows += [
        Row(
            "1 single-event ingest: events/s",
            f"{s_rps:,.0f}",
            f"{b_rps:,.0f}",
            f"{s_rps / b_rps:.2f}",
            ">= 0.6 x baseline",
            (s_rps / b_rps >= 0.6),
        ),
        Row(
            "1 single-event ingest: p50",
            f"{m('sidecar', 'single', 'p50_ms'):.2f} ms",
            f"{m('baseline', 'single', 'p50_ms'):.2f} ms",
        ),
        Row(
            "1 single-event ingest: p99",
            f"{m('sidecar', 'single', 'p99_ms'):.2f} ms",
            f"{m('baseline', 'single', 'p99_ms'):.2f} ms",
            "",
            "< 10 ms",
            (m("sidecar", "single", "p99_ms") < 10),
        ),
        Row(
            "1 single-event ingest: server CPU per request",
            f"{m('sidecar', 'single', 'cpu_us'):.0f} us",
            f"{m('baseline', 'single', 'cpu_us'):.0f} us",
            f"{m('sidecar', 'single', 'cpu_us') / m('baseline', 'single', 'cpu_us'):.2f}",
        ),
    ]
    s_ev, b_ev = m("sidecar", "batch", "rps") * BATCH, m("baseline", "batch", "rps") * BATCH
    rows += [
        Row(
            f"2 batch ingest ({BATCH:,} events/request): events/s",
            f"{s_ev:,.0f}",
            f"{b_ev:,.0f}",
            f"{s_ev / b_ev:.2f}",
            ">= 200,000",
            (s_ev >= 200_000),
        ),
        Row(
            "2 batch ingest: p50 / p99 per request",
            f"{m('sidecar', 'batch', 'p50_ms'):.1f} / {m('sidecar', 'batch', 'p99_ms'):.1f} ms",
            f"{m('baseline', 'batch', 'p50_ms'):.1f} / {m('baseline', 'batch', 'p99_ms'):.1f} ms",
        ),
        Row(
            "2 batch ingest: server CPU per event",
            f"{m('sidecar', 'batch', 'cpu_us') / BATCH:.1f} us",
            f"{m('baseline', 'batch', 'cpu_us') / BATCH:.2f} us",
            f"{m('sidecar', 'batch', 'cpu_us') / m('baseline', 'batch', 'cpu_us'):.1f}",
        ),
    ]
    s_e, b_e = m("sidecar", "entitlement", "rps"), m("baseline", "entitlement", "rps")
    rows += [
        Row(
            "3 entitlement reads: requests/s",
            f"{s_e:,.0f}",
            f"{b_e:,.0f}",
            f"{s_e / b_e:.2f}",
            ">= 0.8 x baseline",
            (s_e / b_e >= 0.8),
        ),
        Row(
            "3 entitlement reads: p50 / p99, 16 connections",
            f"{m('sidecar', 'entitlement', 'p50_ms'):.2f} / {m('sidecar', 'entitlement', 'p99_ms'):.2f} ms",
            f"{m('baseline', 'entitlement', 'p50_ms'):.2f} / {m('baseline', 'entitlement', 'p99_ms'):.2f} ms",
            "",
            "p99 < 2 ms",
            (m("sidecar", "entitlement", "p99_ms") < 2),
        ),
        Row(
            "3 entitlement reads: p50 / p99, 1 connection",
            f"{m('sidecar', 'entitlement-1', 'p50_ms'):.2f} / {m('sidecar', 'entitlement-1', 'p99_ms'):.2f} ms",
            f"{m('baseline', 'entitlement-1', 'p50_ms'):.2f} / {m('baseline', 'entitlement-1', 'p99_ms'):.2f} ms",
            "",
            "p99 < 2 ms",
            (m("sidecar", "entitlement-1", "p99_ms") < 2),
        ),
        Row(
            "3 entitlement reads: server CPU per request",
            f"{m('sidecar', 'entitlement', 'cpu_us'):.0f} us",
            f"{m('baseline', 'entitlement', 'cpu_us'):.0f} us",
            f"{m('sidecar', 'entitlement', 'cpu_us') / m('baseline', 'entitlement', 'cpu_us'):.2f}",
        ),
    ]
    return rows
