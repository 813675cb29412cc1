"""The processes a benchmark measures: the emulator (in this process, on loopback), the real sidecar
(`python -m sidecar run`, as a child process) and the bare baseline app; and what is read from them
(/proc/PID/status VmRSS, CPU time from /proc/PID/stat)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.clock import SettableClock
from sidecar.emulator.faults import Faults
from sidecar.emulator.server import CREDENTIALS_PATH, Emulator, EmulatorServer
from sidecar.emulator.signer import Signer
from sidecar.emulator.state import EmulatorState
from sidecar.emulator.state import Settings as EmulatorSettings

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = "bench-product-0001"
DIMENSIONS = ("requests", "storage_gb", "seats")  # the product: 3 dimensions
TAG_SETS = 2500  # the tag sets usage is spread over (AWS allows 2,500 allocations per record)
BATCH = 1000  # events per batch request
REGION = "us-east-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    """How long and how often: --quick makes all of these small."""

    seconds: float = 10.0  # per wrk figure
    warmup: float = 3.0
    rounds: int = 2  # baseline/sidecar rounds for items 1-3
    starts: int = 10
    memory_events: int = 1_000_000


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Emu:
    """The emulator on an ephemeral loopback port, with a settable clock (the benchmark drives it)."""

    def __init__(self, clock: SettableClock | None = None) -> None:
        self.signer = Signer.generate()
        self.clock = clock or SettableClock()
        settings = EmulatorSettings(region=REGION, products={PRODUCT: list(DIMENSIONS)})
        self.emulator = Emulator(EmulatorState(settings, self.clock, self.signer), Faults())
        self.server = EmulatorServer(self.emulator).start()
        self.url = self.server.url

    def calls(self) -> list[dict[str, Any]]:
        with self.emulator._log_lock:
            return list(self.emulator.calls)

    def records(self) -> list[dict[str, Any]]:
        with self.emulator.state.lock:
            return list(self.emulator.state.accepted)

    def stop(self) -> None:
        self.server.stop()


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> tuple[int, Any]:
    status, raw = request(port, "GET", path)
    return status, json.loads(raw or b"null")


@dataclass
class Proc:
    """A server process under test: the sidecar or the baseline app."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # time.monotonic() just before Popen
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.002) -> float:
        """Poll /readyz until it answers 200; returns the seconds since Popen. Bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                status, _ = request(self.port, "GET", "/readyz", timeout=2)
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(interval)
        self.kill()
        raise RuntimeError(f"{self.name} was not ready within {timeout} s:\n{self.log.read_text()}")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (all its threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Launcher:
    """How to start the processes: which interpreter, and an optional PYTHONPATH in front (to measure an
    experimental copy of the code, or another interpreter with other packages, against the same baseline)."""

    workdir: Path
    python: str = sys.executable
    pythonpath: str | None = None
    runs: int = 0

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        env.update(extra)
        return env

    def _fresh(self, name: str) -> Path:
        self.runs += 1
        directory = self.workdir / f"{self.runs:03d}-{name}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return directory

    def sidecar(self, emu: Emu, **extra: str) -> Proc:
        """The real sidecar, against the emulator, with a fresh METERING_STATE_DIR."""
        directory = self._fresh("sidecar")
        env, port = self._sidecar_env(emu, directory, extra)
        return self._start("sidecar", [self.python, "-m", "sidecar", "run"], env, port, directory)

    def floor(self, emu: Emu) -> Proc:
        """The baseline app with the sidecar's libraries loaded and used (baseline_app.load_libraries),
        in the sidecar's environment: the memory the sidecar cannot go below with them."""
        directory = self._fresh("floor")
        env, port = self._sidecar_env(emu, directory, {})
        cmd = [self.python, str(ROOT / "bench" / "baseline_app.py"), "--port", str(port), "--libraries"]
        return self._start("floor", cmd, env, port, directory)

    def _sidecar_env(self, emu: Emu, directory: Path, extra: dict[str, str]) -> tuple[dict[str, str], int]:
        key = directory / "public.pem"
        key.write_text(emu.signer.public_pem())
        port = free_port()
        env = self._env(
            {
                "METERING_PRODUCT_CODE": PRODUCT,
                "METERING_PUBLIC_KEY_FILE": str(key),
                "METERING_DIMENSIONS": ",".join(DIMENSIONS),
                "METERING_STATE_DIR": str(directory / "state"),
                "METERING_LISTEN": f"127.0.0.1:{port}",
                "METERING_LOG_FORMAT": "json",
                "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emu.url,
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": emu.url + CREDENTIALS_PATH,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": f"bench-pod-{self.runs}",
                "AWS_CONFIG_FILE": str(directory / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(directory / "no-aws-credentials"),
                **extra,
            }
        )
        return env, port

    def baseline(self) -> Proc:
        """The bare FastAPI app, run the same way (same interpreter and uvicorn settings)."""
        directory = self._fresh("baseline")
        port = free_port()
        cmd = [self.python, str(ROOT / "bench" / "baseline_app.py"), "--port", str(port)]
        return self._start("baseline", cmd, self._env({}), port, directory)

    def _start(self, name: str, cmd: list[str], env: dict[str, str], port: int, directory: Path) -> Proc:
        log = directory / f"{name}.log"
        with log.open("wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
        return Proc(name, proc, port, log, started, {"dir": directory})
