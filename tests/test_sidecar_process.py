"""The sidecar as a real process against the emulator: entitlement at start, fail closed, retries."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PRODUCT, Emu
from sidecar_proc import Sidecar, get, log_lines, sidecar_env, start_sidecar

from sidecar.token import verify_token


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def register_calls(emu: Emu) -> list[dict[str, object]]:
    return [c for c in emu.calls() if c["operation"] == "RegisterUsage"]


def test_entitled_then_ready(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    sidecar = start_sidecar(sidecar_env(emu, tmp_path), tmp_path / "sidecar.log")
    running.append(sidecar)
    body = sidecar.wait_for(lambda b: b["status"] != "pending")
    assert body["status"] == "entitled", sidecar.logs()
    assert get(sidecar.url + "/readyz") == (200, {"status": "ready", "reason": None})
    assert body["product_code"] == PRODUCT and body["public_key_version"] == 1
    # The token the sidecar holds is the one AWS signed for its own nonce.
    keys = {1: emu.emulator.state.signer._key.public_key()}
    claims = verify_token(
        body["signature"], keys, product_code=PRODUCT, public_key_version=1, nonce=body["nonce"]
    )
    assert claims.nonce == body["nonce"]
    assert len(register_calls(emu)) == 1
    assert any(
        line["msg"].startswith("AWS credentials: container credentials") for line in log_lines(sidecar)
    )
    assert sidecar.stop() == 0


def test_not_entitled_is_503_with_the_reason_and_no_hot_loop(
    emu: Emu, tmp_path: Path, running: list[Sidecar]
) -> None:
    emu.admin("POST", "/_emulator/entitlement", {"entitled": False})
    env = sidecar_env(emu, tmp_path)
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    running.append(sidecar)
    body = sidecar.wait_for(lambda b: b["status"] != "pending")
    assert body["status"] == "denied"
    assert "CustomerNotEntitledException" in body["reason"] and "not subscribed" in body["reason"]
    status, probe = get(sidecar.url + "/readyz")
    assert status == 503 and probe["status"] == "denied" and "not subscribed" in probe["reason"]
    assert sidecar.proc.poll() is None, "a denial must not crash the process into a restart loop"
    assert len(register_calls(emu)) == 1
    assert sidecar.stop() == 0

    # The container restarts in the same pod (same state dir): it must not ask AWS again at once.
    again = start_sidecar(env, tmp_path / "sidecar-2.log")
    running.append(again)
    body = again.wait_for(lambda b: b["status"] == "denied")
    assert "earlier start in this pod was refused" in body["reason"]
    assert len(register_calls(emu)) == 1


def test_throttled_three_times_then_entitled(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    emu.fault(operation="RegisterUsage", kind="throttle", count=3)
    sidecar = start_sidecar(sidecar_env(emu, tmp_path), tmp_path / "sidecar.log")
    running.append(sidecar)
    body = sidecar.wait_for(lambda b: b["status"] != "pending")
    assert body["status"] == "entitled", sidecar.logs()
    calls = register_calls(emu)
    assert [c["error"] for c in calls] == ["ThrottlingException"] * 3 + [None]
    # One nonce for the whole start: every retry is the same registration.
    assert len({c["request"]["Nonce"] for c in calls}) == 1  # type: ignore[index]
    retries = [line for line in log_lines(sidecar) if "retrying in" in line["msg"]]
    assert len(retries) == 3 and all(line["code"] == "ThrottlingException" for line in retries)


def test_500_storm_outlasting_the_deadline_is_denied(
    emu: Emu, tmp_path: Path, running: list[Sidecar]
) -> None:
    emu.fault(operation="RegisterUsage", kind="error500")
    env = sidecar_env(emu, tmp_path, METERING_REGISTER_DEADLINE="1")
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    running.append(sidecar)
    body = sidecar.wait_for(lambda b: b["status"] != "pending")
    assert body["status"] == "denied"
    assert "kept failing for 1 s" in body["reason"] and "InternalServiceErrorException" in body["reason"]
    calls = register_calls(emu)
    assert len(calls) >= 2 and all(c["status"] == 500 for c in calls)


def test_dropped_connections_are_retried(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    emu.fault(operation="RegisterUsage", kind="drop", count=2)
    sidecar = start_sidecar(sidecar_env(emu, tmp_path), tmp_path / "sidecar.log")
    running.append(sidecar)
    assert sidecar.wait_for(lambda b: b["status"] != "pending")["status"] == "entitled"
    assert [c["error"] for c in register_calls(emu)] == ["ConnectionDropped", "ConnectionDropped", None]


def test_wrong_region_is_fatal_with_advice(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    env = sidecar_env(emu, tmp_path, AWS_REGION="eu-west-1")
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    running.append(sidecar)
    body = sidecar.wait_for(lambda b: b["status"] != "pending")
    assert body["status"] == "denied" and "InvalidRegionException" in body["reason"]
    assert "do not hard-code AWS_REGION" in body["reason"]


def test_missing_region_stops_at_once(emu: Emu, tmp_path: Path) -> None:
    env = sidecar_env(emu, tmp_path)
    del env["AWS_REGION"]
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run"], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"no AWS Region" in result.stderr and b"never guesses" in result.stderr
    assert register_calls(emu) == []


def test_attest_through_the_process(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    from sidecar.client import SidecarClient

    sidecar = start_sidecar(sidecar_env(emu, tmp_path), tmp_path / "sidecar.log")
    running.append(sidecar)
    client = SidecarClient(sidecar.url)
    client.wait_ready(timeout=20)
    claims = client.verify_entitlement(emu.emulator.state.signer.public_pem(), PRODUCT, 1)
    assert claims.product_code == PRODUCT
    assert len(register_calls(emu)) == 2  # the start, and the product's own nonce


def test_the_probe_listener_answers_only_the_probes(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    from sidecar_proc import free_port

    probe_port = free_port()
    env = sidecar_env(emu, tmp_path, METERING_PROBE_LISTEN=f"127.0.0.1:{probe_port}")
    sidecar = start_sidecar(env, tmp_path / "sidecar.log")
    running.append(sidecar)
    sidecar.wait_for(lambda b: b["status"] == "entitled")
    probes = f"http://127.0.0.1:{probe_port}"
    assert get(probes + "/readyz") == (200, {"status": "ready", "reason": None})
    assert get(probes + "/healthz")[0] == 200
    status, body = get(probes + "/v1/entitlement")  # no token or usage on the probe port
    assert status == 404 and body["error"] == "not_found"


def test_probe_listener_reports_a_denial(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    from sidecar_proc import free_port

    emu.admin("POST", "/_emulator/entitlement", {"entitled": False})
    probe_port = free_port()
    sidecar = start_sidecar(
        sidecar_env(emu, tmp_path, METERING_PROBE_LISTEN=f"127.0.0.1:{probe_port}"), tmp_path / "sidecar.log"
    )
    running.append(sidecar)
    sidecar.wait_for(lambda b: b["status"] == "denied")
    status, body = get(f"http://127.0.0.1:{probe_port}/readyz")
    assert status == 503 and body["status"] == "denied" and "not subscribed" in body["reason"]


def wait_ready(url: str, timeout: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "wait-ready", "--url", url, "--timeout", timeout],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wait_ready_for_plain_container_products(emu: Emu, tmp_path: Path, running: list[Sidecar]) -> None:
    from sidecar_proc import free_port

    nothing = wait_ready(f"http://127.0.0.1:{free_port()}", "0.5")
    assert nothing.returncode == 1 and "not ready after 0.5 s" in nothing.stderr

    sidecar = start_sidecar(sidecar_env(emu, tmp_path), tmp_path / "sidecar.log")
    running.append(sidecar)
    ready = wait_ready(sidecar.url, "30")
    assert ready.returncode == 0 and "ready" in ready.stdout

    emu.admin("POST", "/_emulator/entitlement", {"entitled": False})
    denied_dir = tmp_path / "denied"
    denied_dir.mkdir()
    other = start_sidecar(sidecar_env(emu, denied_dir, pod="pod-2"), denied_dir / "sidecar.log")
    running.append(other)
    refused = wait_ready(other.url, "30")
    assert refused.returncode == 1 and "denied" in refused.stderr and "not subscribed" in refused.stderr
