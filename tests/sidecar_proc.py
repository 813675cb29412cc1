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

from conftest import PRODUCT, REGION, Emu

from sidecar.emulator.server import CREDENTIALS_PATH


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
