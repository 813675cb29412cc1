"""Running `metering-sidecar run` as a real process against the in-process emulator, for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import PRODUCT, REGION, T0, Emu

from sidecar.emulator.server import CREDENTIALS_PATH

HOUR = 3600
DIMENSIONS = ("requests", "storage_gb")  # the emu fixture's product


def post(url: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> Any:
        """Poll /v1/entitlement until predicate(body) holds; bounded, and fails loudly with the log."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the sidecar exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                _, body = get(self.url + "/v1/entitlement")
            except OSError:
                body = None
            if body is not None and predicate(body):
                return body
            time.sleep(0.05)
        raise AssertionError(f"timed out; last entitlement {body}; log:\n{self.logs()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the sidecar did not stop within {timeout} s of SIGTERM") from None
        return self.proc.returncode


def sidecar_env(emu: Emu, tmp: Path, pod: str = "pod-1", **extra: str) -> dict[str, str]:
    key = tmp / "public.pem"
    key.write_text(emu.emulator.state.signer.public_pem())
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "METERING_PRODUCT_CODE": PRODUCT,
        "METERING_PUBLIC_KEY_FILE": str(key),
        "METERING_STATE_DIR": str(tmp / "state"),
        "METERING_LOG_FORMAT": "json",
        "METERING_RETRY_INITIAL_DELAY": "0.05",
        "METERING_RETRY_MAX_DELAY": "0.5",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emu.url,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": emu.url + CREDENTIALS_PATH,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": pod,
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
    }
    env.update(extra)
    return env


def start_sidecar(env: dict[str, str], log: Path) -> Sidecar:
    port = free_port()
    env = {"METERING_LISTEN": f"127.0.0.1:{port}", **env}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    sidecar = Sidecar(proc, f"http://{env['METERING_LISTEN']}", log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return sidecar  # exited early: the caller asserts on it
        try:
            get(sidecar.url + "/healthz")
            return sidecar
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the sidecar never answered /healthz:\n{log.read_text()}")


def log_lines(sidecar: Sidecar) -> list[dict[str, Any]]:
    lines = []
    for line in sidecar.logs().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


class Pod:
    """One pod: a state dir that outlives container restarts, one credential identity, one clock file."""

    def __init__(self, emu: Emu, tmp: Path, **extra: str) -> None:
        self.emu = emu
        self.tmp = tmp
        self.clock_file = tmp / "clock-offset"
        self.env = sidecar_env(
            emu,
            tmp,
            METERING_DIMENSIONS=",".join(DIMENSIONS),
            METERING_TICK="0.05",
            METERING_SEND_SPREAD="0",
            METERING_FAKE_CLOCK_FILE=str(self.clock_file),
            **extra,
        )
        self.sidecar: Sidecar | None = None
        self.starts = 0
        self.reported = dict.fromkeys(DIMENSIONS, 0)
        self.move_to(T0)

    def move_to(self, t: float) -> None:
        """Both clocks to `t`: the emulator's (frozen there) and the sidecar's (running from there)."""
        self.emu.clock.set(t)
        self.clock_file.write_text(str(t - time.time()))

    def start(self) -> Sidecar:
        self.starts += 1
        self.sidecar = start_sidecar(self.env, self.tmp / f"sidecar-{self.starts}.log")
        assert self.sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled", (
            self.sidecar.logs()
        )
        return self.sidecar

    def kill9(self) -> None:
        assert self.sidecar is not None
        self.sidecar.proc.send_signal(signal.SIGKILL)
        self.sidecar.proc.wait(timeout=10)

    def post(self, body: dict[str, Any], path: str = "/v1/usage") -> tuple[int, Any]:
        assert self.sidecar is not None
        return post(self.sidecar.url + path, body)

    def report(self, events: list[dict[str, Any]]) -> None:
        """Post until acknowledged (202), restarting the sidecar if it is gone: what a product would do."""
        for _ in range(20):
            try:
                status, body = self.post({"events": events})
            except OSError:
                status, body = 0, None
            if status == 202:
                for event in events:
                    self.reported[event["dimension"]] += event["quantity"]
                return
            assert status in (0, 503), (status, body)
            if self.sidecar is None or self.sidecar.proc.poll() is not None:
                self.start()
            else:
                time.sleep(0.05)
        raise AssertionError("usage was never acknowledged")

    def records(self) -> list[dict[str, Any]]:
        return [r for r in self.emu.records() if r["operation"] == "MeterUsage"]

    def billed(self) -> dict[str, int]:
        totals = dict.fromkeys(DIMENSIONS, 0)
        for record in self.records():
            totals[record["dimension"]] += record["quantity"]
        return totals

    def wait_sent(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until the sidecar has no sealed records left and reports nothing pending."""
        assert self.sidecar is not None
        deadline = time.monotonic() + timeout
        status: Any = None
        while time.monotonic() < deadline:
            _, status = get(self.sidecar.url + "/v1/status")
            if not status["records"].get("sealed") and not any(status["pending_quantity"].values()):
                return dict(status)
            time.sleep(0.05)
        raise AssertionError(f"records still unsent: {status}\n{self.sidecar.logs()}")

    def assert_billed_exactly_once(self) -> None:
        assert self.billed() == self.reported
        errors = [c["error"] for c in self.emu.calls() if c["operation"] == "MeterUsage"]
        assert "DuplicateRequestException" not in errors
        assert "TimestampOutOfBoundsException" not in errors
        hours = [(r["dimension"], r["hour"]) for r in self.records()]
        assert len(hours) == len(set(hours)), "one record per dimension per hour"

    def stop(self) -> int:
        return self.sidecar.stop() if self.sidecar and self.sidecar.proc.poll() is None else 0
