"""The benchmark's table: each figure next to its same-run baseline, the ratio, the target and whether it
is met; printed, and written to bench/results.md with the machine and the versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench import wrk

RESULTS = Path(__file__).resolve().parent / "results.md"
# Everything below this line in results.md is written by hand (before/after, findings) and kept.
NOTES_MARK = "<!-- notes below are kept by bench/run.py; the table above is rewritten on every run -->"


@dataclass(frozen=True)
class Row:
    item: str
    figure: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: no target, shown for information

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "**no**")
        return [self.item, self.figure, self.baseline, self.ratio, self.target, met]


HEADER = ["item", "figure", "baseline (same run)", "ratio", "target", "met?"]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def text(rows: list[Row]) -> str:
    table = [HEADER] + [[cell.replace("**", "") for cell in row.cells()] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    out = []
    for n, r in enumerate(table):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(python: str) -> dict[str, str]:
    """The machine and the versions. `python` is the interpreter the servers ran on."""
    server_python = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True
    ).stdout.strip()
    revision = subprocess.run(
        ["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Code under sidecar/ or bench/ that is not committed yet: the revision alone would not say what ran.
    changed = subprocess.run(
        ["git", "-C", str(RESULTS.parent.parent), "status", "--porcelain", "--", "sidecar", "bench"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    if revision and any(line and not line.endswith("results.md") for line in changed):
        revision += " with uncommitted changes to sidecar/ or bench/"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores (nproc)": str(os.cpu_count()),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "Python": server_python or platform.python_version(),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "starlette": _version("starlette"),
        "pydantic": _version("pydantic"),
        "botocore": _version("botocore"),
        "SQLite": sqlite3.sqlite_version,
        "wrk": wrk.version(),
        "uvicorn extras": f"httptools {_version('httptools')}, uvloop {_version('uvloop')}",
        "git revision": revision or "unknown",
    }


def write(rows: list[Row], env: dict[str, str], details: list[str], path: Path = RESULTS) -> None:
    notes = ""
    if path.exists():
        _, mark, kept = path.read_text().partition(NOTES_MARK)
        notes = kept if mark else ""
    body = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`). The sidecar runs as a real process on loopback "
        "against the emulator; every baseline is measured in the same run, on the same machine, one after "
        "the other. The machine is shared and noisy: read the ratios, not the absolute times.",
        "",
        markdown(rows),
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
        "## Details of this run",
        "",
        *[f"- {d}" for d in details],
        "",
        NOTES_MARK,
    ]
    path.write_text("\n".join(body) + (notes if notes else "\n"))
