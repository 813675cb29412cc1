"""wrk, the load generator: run it, and read its `--latency` report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    """The figures of a `wrk --latency` run. Non-2xx answers and socket errors are counted, not hidden."""
    percentiles = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not (done and rps and {"50", "90", "99"} <= percentiles.keys()):
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def version() -> str:
    found = shutil.which("wrk")
    if found is None:
        return "not installed"
    # `wrk -v` prints its version and usage, and exits 1.
    out = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def run(
    url: str,
    *,
    script: str | None = None,
    seconds: float = 10.0,
    threads: int = 2,
    connections: int = 16,
    env: dict[str, str] | None = None,
) -> WrkResult:
    """One bounded wrk run against a loopback URL (wrk stops by itself after `seconds`)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark sends traffic to 127.0.0.1 only")
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if script:
        cmd += ["-s", str(BENCH / script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse(out.stdout)
