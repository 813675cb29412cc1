"""Shared fixtures: a real emulator on an ephemeral loopback port, and real boto3 clients against it."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config

from sidecar.clock import SettableClock
from sidecar.emulator.faults import Faults
from sidecar.emulator.server import Emulator, EmulatorServer
from sidecar.emulator.signer import Signer
from sidecar.emulator.state import EmulatorState, Settings

PRODUCT = "prod-test-0001"
DIMENSIONS = ["requests", "storage_gb"]
REGION = "us-east-1"
# 2026-11-26T10:30:00Z: half past an hour, so hour rounding is visible.
T0 = 1795689000.0
ACCESS_KEY = "AKIAPODONE0000000001"
SECRET = "pod-one-secret"


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@dataclass
class Emu:
    server: EmulatorServer
    clock: SettableClock

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if resp.headers.get("Content-Type") == "application/json" else raw.decode()

    def records(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/_emulator/records")["records"]
        return result

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/_emulator/calls")["calls"]
        return result

    def fault(self, **rule: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("POST", "/_emulator/faults", rule)
        return result

    def client(
        self, access_key: str = ACCESS_KEY, secret: str = SECRET, region: str = REGION, attempts: int = 1
    ) -> Any:
        self.emulator.add_static_credentials(access_key, secret)
        return make_client(self.url, access_key, secret, region, attempts)


def make_client(url: str, access_key: str, secret: str, region: str = REGION, attempts: int = 1) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret, region_name=region
    )
    return session.client(
        "meteringmarketplace",
        endpoint_url=url,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=5, read_timeout=10
        ),
    )


@pytest.fixture(scope="module")
def sts_url() -> Iterator[str]:
    """moto's STS server on loopback: AssumeRoleWithWebIdentity for the IRSA path (AWS_ENDPOINT_URL_STS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def emu(signer: Signer) -> Iterator[Emu]:
    clock = SettableClock(T0, frozen=True)
    settings = Settings(region=REGION, products={PRODUCT: list(DIMENSIONS), "prod-hourly": []})
    emulator = Emulator(EmulatorState(settings, clock, signer), Faults())
    server = EmulatorServer(emulator).start()
    try:
        yield Emu(server, clock)
    finally:
        server.stop()


@pytest.fixture
def client(emu: Emu) -> Any:
    return emu.client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI (CI=true), a test marked required_in_ci may not skip: a missing helm or docker is a failure."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and item.get_closest_marker("required_in_ci")
        and os.environ.get("CI", "").lower() == "true"
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"required in CI but skipped: {reason}"
