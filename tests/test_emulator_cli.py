"""`metering-sidecar emulator` as a real process: start-up, its output, --config, bad input, signals, --help.

Every process is bounded: output is read with a deadline, each run has a timeout, and whatever was
started is terminated (then killed) in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import make_client

from sidecar.cli import build_parser
from sidecar.token import load_public_key, verify_token

pytestmark = pytest.mark.slow

EMULATOR = [sys.executable, "-m", "sidecar", "emulator"]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "metering-sidecar")
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
START_TIMEOUT = 30.0
KEY, SECRET = "AKIACLITEST000000001", "cli-test-secret"


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    banner: list[str]  # stdout up to and including the listening line, then what followed it

    def admin(self, method: str, path: str) -> Any:
        with urllib.request.urlopen(
            urllib.request.Request(self.url + path, method=method), timeout=10
        ) as resp:
            raw = resp.read()
        return json.loads(raw) if resp.headers.get("Content-Type") == "application/json" else raw.decode()

    def client(
        self, region: str = "us-east-1", key: str = KEY, secret: str = SECRET, attempts: int = 1
    ) -> Any:
        return make_client(self.url, key, secret, region, attempts)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def emulator(*args: str, tmp_path: Path) -> Iterator[Running]:
    """Start the emulator on a free port and wait (bounded) for its "listening on" line."""
    stderr = (tmp_path / "emulator.stderr").open("w")
    proc = subprocess.Popen(
        [*EMULATOR, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    pump_thread = threading.Thread(target=pump, daemon=True)
    pump_thread.start()
    try:
        try:
            banner = _read_banner(lines, last="Public key" if "--public-key-out" in args else "  (static")
        except AssertionError as err:
            raise AssertionError(f"{err}\nstderr: {(tmp_path / 'emulator.stderr').read_text()}") from None
        match = LISTENING.search(banner[0])
        assert match is not None, banner
        yield Running(proc, match.group(1), banner)
    finally:
        _stop(proc)
        pump_thread.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
        stderr.close()


def _read_banner(lines: queue.Queue[str | None], last: str) -> list[str]:
    """stdout from the "listening on" line to the line starting with `last`, within START_TIMEOUT."""
    banner: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while not (banner and banner[-1].startswith(last)):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"the emulator printed no complete banner within {START_TIMEOUT} s: {banner}"
            ) from None
        if line is None:
            raise AssertionError(f"the emulator exited before it was ready: {banner}")
        if banner or LISTENING.search(line):
            banner.append(line.rstrip("\n"))
    return banner


def _stop_with(running: Running, signum: int) -> int:
    running.proc.send_signal(signum)
    return running.proc.wait(timeout=5)


# --- start, answer, stop --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_emulator_process_answers_boto3_and_exits_0_on_a_signal(tmp_path: Path, signum: int) -> None:
    pem_path = tmp_path / "public.pem"
    with emulator(
        "--product-code",
        "cli-product",
        "--dimension",
        "widgets",
        "--dimension",
        "gadgets",
        "--public-key-out",
        str(pem_path),
        "--credentials",
        f"{KEY}:{SECRET}",
        tmp_path=tmp_path,
    ) as running:
        assert f"  export AWS_ENDPOINT_URL_MARKETPLACE_METERING={running.url}" in running.banner
        assert f"Public key (PEM) written to {pem_path}" in running.banner
        assert "cli-product [widgets, gadgets]" in running.banner[0]
        pem = pem_path.read_text()
        assert pem == running.admin("GET", "/_emulator/public-key")

        client = running.client()
        token = client.register_usage(ProductCode="cli-product", PublicKeyVersion=1, Nonce="n")["Signature"]
        verify_token(
            token, {1: load_public_key(pem)}, product_code="cli-product", public_key_version=1, nonce="n"
        )
        now = running.admin("GET", "/_emulator/clock")["now"]
        client.meter_usage(
            ProductCode="cli-product", Timestamp=now, UsageDimension="gadgets", UsageQuantity=2
        )
        [record] = running.admin("GET", "/_emulator/records")["records"]
        assert (record["caller"], record["dimension"], record["quantity"]) == (KEY, "gadgets", 2)
        # --credentials: the secret is known, so a wrong one is refused.
        with pytest.raises(ClientError) as info:
            running.client(secret="wrong").register_usage(ProductCode="cli-product", PublicKeyVersion=1)
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"

        started = time.monotonic()
        assert _stop_with(running, signum) == 0
        assert time.monotonic() - started < 5


def test_config_file_takes_effect(tmp_path: Path) -> None:
    config = {
        "region": "eu-west-1",
        "products": {"cfg-product": ["widgets"]},
        "strict_auth": True,
        "credentials": [{"access_key_id": KEY, "secret_access_key": SECRET}],
        "customers": [{"product_code": "cfg-product", "customer_aws_account_id": "123456789012"}],
        "faults": [{"operation": "RegisterUsage", "kind": "throttle", "count": 1}],
        "clock": {"now": "2026-11-26T10:00:00Z", "frozen": True},
    }
    path = tmp_path / "emulator.json"
    path.write_text(json.dumps(config))
    with emulator("--config", str(path), tmp_path=tmp_path) as running:
        assert running.admin("GET", "/_emulator/clock") == {
            "now": 1795687200.0,
            "iso": "2026-11-26T10:00:00Z",
            "frozen": True,
        }
        settings = running.admin("GET", "/_emulator/settings")
        assert settings["region"] == "eu-west-1"
        assert settings["products"] == {"cfg-product": ["widgets"]}  # no default product added
        assert settings["strict_auth"] is True
        [fault] = running.admin("GET", "/_emulator/faults")["faults"]
        assert (fault["operation"], fault["kind"], fault["count"]) == ("RegisterUsage", "throttle", 1)

        client = running.client(region="eu-west-1")
        with pytest.raises(client.exceptions.ThrottlingException):
            client.register_usage(ProductCode="cfg-product", PublicKeyVersion=1)
        client.register_usage(ProductCode="cfg-product", PublicKeyVersion=1)
        client.meter_usage(ProductCode="cfg-product", Timestamp=1795687200, UsageDimension="widgets")
        batch = client.batch_meter_usage(
            ProductCode="cfg-product",
            UsageRecords=[
                {
                    "Timestamp": 1795687200,
                    "Dimension": "widgets",
                    "Quantity": 1,
                    "CustomerAWSAccountId": account,
                }
                for account in ("123456789012", "999999999999")
            ],
        )
        assert [r["Status"] for r in batch["Results"]] == ["Success", "CustomerNotSubscribed"]
        elsewhere = running.client(region="us-east-1")
        with pytest.raises(elsewhere.exceptions.InvalidRegionException):
            elsewhere.register_usage(ProductCode="cfg-product", PublicKeyVersion=1)
        with pytest.raises(ClientError) as info:  # strict_auth from the file
            running.client(region="eu-west-1", key="AKIASTRANGER00000001").register_usage(
                ProductCode="cfg-product", PublicKeyVersion=1
            )
        assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert _stop_with(running, signal.SIGTERM) == 0


def test_flags_win_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "emulator.json"
    path.write_text(json.dumps({"region": "eu-west-1", "clock": {"now": "2026-11-26T10:00:00Z"}}))
    with emulator(
        "--config",
        str(path),
        "--region",
        "us-west-2",
        "--clock",
        "2027-01-01T00:00:00Z",
        "--frozen-clock",
        tmp_path=tmp_path,
    ) as running:
        assert "(region us-west-2;" in running.banner[0]
        assert running.admin("GET", "/_emulator/settings")["region"] == "us-west-2"
        assert running.admin("GET", "/_emulator/clock")["iso"] == "2027-01-01T00:00:00Z"


# --- bad input: exit 2 and say which flag or key ---------------------------------------------------


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


BAD_INPUT = [
    (["--region", "moon-base-1"], ["--region", "moon-base-1"]),
    (["--region", "US-EAST-1"], ["--region"]),
    (["--product-code", "bad code!"], ["--product-code", "bad code!"]),
    (["--dimension", "d" * 256], ["--dimension"]),
    (["--fault", "MeterUsage"], ["--fault", "OPERATION:KIND"]),
    (["--fault", "MeterUsage:explode"], ["--fault", "explode"]),
    (["--fault", "MeterUsage:throttle:rate=2"], ["--fault", "rate"]),
    (["--fault", "MeterUsage:throttle:count=many"], ["--fault", "count"]),
    (["--credentials", "AKIAONLYTHEKEY"], ["--credentials", "ACCESS_KEY_ID:SECRET_ACCESS_KEY"]),
    (["--credentials", ":secret"], ["--credentials"]),
    (["--clock", "yesterday"], ["--clock", "yesterday"]),
    (["--private-key", "/nonexistent/key.pem"], ["--private-key"]),
    (["--config", "/nonexistent/emulator.json"], ["--config", "cannot read"]),
    (["--port", "http"], ["--port"]),
    (["--dry-run-response", "maybe"], ["--dry-run-response"]),
]
BAD_CONFIG = [
    ("{not json", ["--config", "not valid JSON"]),
    ("[1, 2]", ["--config", "JSON object"]),
    ('{"regions": "us-east-1"}', ["--config", "unknown key(s) regions"]),
    ('{"region": "nowhere"}', ["region", "nowhere"]),
    ('{"products": ["a", "b"]}', ["--config", "products"]),
    ('{"products": {"bad code!": []}}', ["--config", "products", "bad code!"]),
    ('{"faults": [{"kind": "explode"}]}', ["--config", "faults", "explode"]),
    ('{"faults": [{"kind": "throttle", "count": "3"}]}', ["--config", "faults", "count"]),
    (
        '{"customers": [{"customer_aws_account_id": "123456789012"}]}',
        ["--config", "customers", "product_code"],
    ),
    ('{"customers": [{"product_code": "p", "account": "1"}]}', ["--config", "customers", "account"]),
    ('{"credentials": [{"access_key_id": "AKIA"}]}', ["--config", "credentials", "secret_access_key"]),
    ('{"clock": {"now": "soon"}}', ["--config", "clock", "soon"]),
    ('{"key_versions": {"one": null}}', ["--config", "key_versions", "one"]),
    ('{"dry_run_response": "maybe"}', ["dry_run_response", "maybe"]),
]


def _fails_to_start(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*EMULATOR, "--port", "0", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert "listening on" not in proc.stdout
    return proc


@pytest.mark.parametrize(("args", "named"), BAD_INPUT, ids=[" ".join(a)[:40] for a, _ in BAD_INPUT])
def test_bad_flags_exit_2_naming_the_flag(args: list[str], named: list[str]) -> None:
    proc = _fails_to_start(args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in named:
        assert text in proc.stderr


@pytest.mark.parametrize(("text", "named"), BAD_CONFIG, ids=[t[:40] for t, _ in BAD_CONFIG])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, named: list[str]) -> None:
    proc = _fails_to_start(["--config", _config(tmp_path, text)])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in named:
        assert word in proc.stderr


# --- --help ---------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONSOLE_SCRIPT, *args], capture_output=True, text=True, timeout=60, check=False)


def test_top_level_help_lists_only_commands_that_work() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    block = proc.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = re.findall(r"^    ([a-z][a-z-]+)", block, flags=re.MULTILINE)
    assert "emulator" in listed
    for command in listed:
        sub = _run(command, "--help")
        assert sub.returncode == 0, f"{command} --help: {sub.stderr}"
        assert sub.stdout.startswith(f"usage: metering-sidecar {command}")
        assert "not implemented" not in sub.stdout.lower()


def test_an_unknown_command_is_refused() -> None:
    proc = _run("inject-everything")
    assert proc.returncode == 2
    assert "invalid choice: 'inject-everything'" in proc.stderr


def _emulator_parser() -> argparse.ArgumentParser:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parser: argparse.ArgumentParser = sub.choices["emulator"]
    return parser


def test_emulator_help_documents_its_flags() -> None:
    proc = _run("emulator", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    flags = {o for a in _emulator_parser()._actions for o in a.option_strings if o.startswith("--")}
    # The contract in DESIGN.md ("The emulator"), and what the README shows.
    assert {"--host", "--port", "--region", "--product-code", "--dimension", "--public-key-out"} <= flags
    assert {"--config", "--fault", "--credentials", "--clock", "--frozen-clock", "--strict-auth"} <= flags
    for action in _emulator_parser()._actions:
        flag = action.option_strings[-1]
        assert flag in text
        assert action.help and len(action.help.split()) >= 3, f"{flag} has no real help text"
        assert " ".join(action.help.split()).split("%")[0] in text
    assert "AWS_ENDPOINT_URL_MARKETPLACE_METERING" in text
    assert "MeterUsage:throttle:count=3" in text
