"""Item 5: from Popen to the first 200 on /readyz, and the import time (python -X importtime)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from bench.procs import Emu, Launcher, Settings


def measure_startup(launcher: Launcher, emu: Emu, s: Settings) -> tuple[list[float], list[float]]:
    """Popen to the first 200 on /readyz, sidecar and baseline alternately; fresh state dir each time."""
    sidecar: list[float] = []
    baseline: list[float] = []
    for _ in range(s.starts):
        for name, times in (("sidecar", sidecar), ("baseline", baseline)):
            proc = launcher.sidecar(emu) if name == "sidecar" else launcher.baseline()
            try:
                times.append(proc.wait_ready())
            finally:
                proc.stop()
    return sidecar, baseline


@dataclass(frozen=True)
class Imports:
    total_ms: float
    top: list[tuple[str, float]]  # top-level package -> its modules' own import time, ms


def import_time(launcher: Launcher, modules: str, runs: int = 3) -> Imports:
    """`python -X importtime -c "import ..."`: the run with the median total, and the top 10 packages."""
    measured = []
    env = {
        "PATH": os.environ.get("PATH", ""),
        **({"PYTHONPATH": launcher.pythonpath} if launcher.pythonpath else {}),
    }
    for _ in range(runs):
        out = subprocess.run(
            [launcher.python, "-X", "importtime", "-c", f"import {modules}"],
            capture_output=True,
            text=True,
            cwd=launcher.workdir,
            env=env,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        packages: dict[str, float] = {}
        total = 0.0
        for self_us, name in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)$", out.stderr, re.M):
            total += int(self_us) / 1e3
            top = name.split(".")[0]
            packages[top] = packages.get(top, 0.0) + int(self_us) / 1e3
        measured.append((total, sorted(packages.items(), key=lambda kv: -kv[1])[:10]))
    measured.sort(key=lambda m: m[0])
    total, top = measured[len(measured) // 2]
    return Imports(total, top)
