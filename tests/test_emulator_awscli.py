"""The real AWS CLI against the emulator: every operation, with full SigV4 verification.

The CLI runs as a subprocess with a clean environment: no config or credentials files, only an endpoint
override, a Region and a static key pair the emulator knows the secret of. The emulator's clock is frozen
at T0, so every timestamp is relative to T0.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PRODUCT, REGION, T0, Emu

from sidecar.token import load_public_key, verify_token

AWS = Path(sys.executable).parent / "aws"
CLI_KEY = "AKIAAWSCLI0000000001"
CLI_SECRET = "aws-cli-secret"
HOUR = int(T0 // 3600 * 3600)
# AWS CLI v1 (the one pinned in requirements.lock) exits 255 for any error, a service error included;
# v2 exits 254 for a service error. Either way a non-zero exit and the error code on stderr.
SERVICE_ERROR_EXIT = 255

pytestmark = pytest.mark.slow


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


@pytest.fixture
def aws(emu: Emu, tmp_path: Path) -> Any:
    """Runs `aws meteringmarketplace ...` against the emulator, as a key whose secret it knows."""
    emu.emulator.add_static_credentials(CLI_KEY, CLI_SECRET)
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, secret: str = CLI_SECRET) -> Result:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING": emu.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": CLI_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CONFIG_FILE": str(tmp_path / "no-such-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-such-credentials"),
        }
        proc = subprocess.run(
            [str(AWS), "meteringmarketplace", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _cli_calls(emu: Emu) -> list[tuple[str, str | None, int, str | None]]:
    return [(c["operation"], c["caller"], c["status"], c["error"]) for c in emu.calls()]


def test_register_usage(emu: Emu, aws: Any) -> None:
    result = aws(
        "register-usage", "--product-code", PRODUCT, "--public-key-version", "1", "--nonce", "cli-n1"
    )
    token = result.json()["Signature"]
    assert _claims(token) == {
        "productCode": PRODUCT,
        "publicKeyVersion": 1,
        "nonce": "cli-n1",
        "iat": int(T0),
    }
    # The token verifies with the emulator's public key, through the project's own verifier.
    key = load_public_key(emu.admin("GET", "/_emulator/public-key"))
    claims = verify_token(token, {1: key}, product_code=PRODUCT, public_key_version=1, nonce="cli-n1")
    assert claims.issued_at == int(T0)
    registrations = emu.admin("GET", "/_emulator/registrations")["registrations"]
    assert [(r["caller"], r["nonce"]) for r in registrations] == [(CLI_KEY, "cli-n1")]
    assert _cli_calls(emu) == [("RegisterUsage", CLI_KEY, 200, None)]
    assert emu.records() == []  # RegisterUsage is not a metering record


def test_meter_usage_then_a_duplicate(emu: Emu, aws: Any) -> None:
    meter = ("meter-usage", "--product-code", PRODUCT, "--usage-dimension", "requests")
    first = aws(*meter, "--timestamp", str(int(T0) - 600), "--usage-quantity", "3").json()
    # The same quantity later in the same hour is the same record (the CLI sends a new ClientToken).
    again = aws(*meter, "--timestamp", str(int(T0)), "--usage-quantity", "3").json()
    assert again["MeteringRecordId"] == first["MeteringRecordId"]

    duplicate = aws(*meter, "--timestamp", str(int(T0)), "--usage-quantity", "4")
    assert duplicate.code == SERVICE_ERROR_EXIT
    assert duplicate.stdout == ""
    assert "An error occurred (DuplicateRequestException) when calling the MeterUsage operation" in (
        duplicate.stderr
    )
    assert "already been emitted" in duplicate.stderr

    [record] = emu.records()
    assert record["operation"] == "MeterUsage"
    assert record["caller"] == CLI_KEY
    assert record["metering_record_id"] == first["MeteringRecordId"]
    assert record["hour"] == HOUR
    assert record["quantity"] == 3
    request = record["request"]
    assert request["Timestamp"] == int(T0) - 600 and request["UsageQuantity"] == 3
    assert len(request["ClientToken"]) == 36  # the CLI fills the idempotency token in, as boto3 does
    assert [c[2:] for c in _cli_calls(emu)] == [(200, None), (200, None), (400, "DuplicateRequestException")]


def test_meter_usage_with_allocations_and_an_iso_timestamp(emu: Emu, aws: Any) -> None:
    allocations = [
        {"AllocatedUsageQuantity": 2, "Tags": [{"Key": "tenant", "Value": "a"}]},
        {"AllocatedUsageQuantity": 1},
    ]
    result = aws(
        "meter-usage",
        "--product-code",
        PRODUCT,
        "--usage-dimension",
        "storage_gb",
        "--timestamp",
        "2026-11-26T09:59:59Z",  # T0 - 1801 s: the previous hour
        "--usage-quantity",
        "3",
        "--usage-allocations",
        json.dumps(allocations),
    ).json()
    [record] = emu.records()
    assert record["metering_record_id"] == result["MeteringRecordId"]
    assert record["hour"] == HOUR - 3600
    assert record["request"]["Timestamp"] == int(T0) - 1801
    assert record["request"]["UsageAllocations"] == allocations


def test_batch_meter_usage(emu: Emu, aws: Any) -> None:
    emu.admin(
        "POST", "/_emulator/customers", {"product_code": PRODUCT, "customer_aws_account_id": "123456789012"}
    )
    records = [
        {
            "Timestamp": int(T0) - 7200,
            "Dimension": "requests",
            "Quantity": 5,
            "CustomerAWSAccountId": "123456789012",
        },
        {
            "Timestamp": int(T0) - 7200,
            "Dimension": "requests",
            "Quantity": 6,
            "CustomerAWSAccountId": "999999999999",
        },
    ]
    result = aws(
        "batch-meter-usage", "--product-code", PRODUCT, "--usage-records", json.dumps(records)
    ).json()
    assert [r["Status"] for r in result["Results"]] == ["Success", "CustomerNotSubscribed"]
    assert result["UnprocessedRecords"] == []
    [record] = emu.records()
    assert record["operation"] == "BatchMeterUsage"
    assert record["customer"] == "123456789012"
    assert record["metering_record_id"] == result["Results"][0]["MeteringRecordId"]
    assert record["hour"] == HOUR - 7200
    assert record["request"]["Quantity"] == 5
    assert _cli_calls(emu) == [("BatchMeterUsage", CLI_KEY, 200, None)]


def test_resolve_customer(emu: Emu, aws: Any) -> None:
    made = emu.admin(
        "POST",
        "/_emulator/registration-tokens",
        {
            "product_code": PRODUCT,
            "customer_aws_account_id": "123456789012",
            "customer_identifier": "cust-cli",
        },
    )
    result = aws("resolve-customer", "--registration-token", made["registration_token"]).json()
    assert {k: v for k, v in result.items() if k != "ResponseMetadata"} == {
        "ProductCode": PRODUCT,
        "CustomerAWSAccountId": "123456789012",
        "CustomerIdentifier": "cust-cli",
    }
    bad = aws("resolve-customer", "--registration-token", "not-a-token")
    assert bad.code == SERVICE_ERROR_EXIT
    assert "(InvalidTokenException)" in bad.stderr
    assert emu.records() == []


def test_a_wrong_secret_is_refused_so_signatures_are_really_checked(emu: Emu, aws: Any) -> None:
    result = aws(
        "register-usage", "--product-code", PRODUCT, "--public-key-version", "1", secret="not-the-secret"
    )
    assert result.code == SERVICE_ERROR_EXIT
    assert "(InvalidSignatureException)" in result.stderr
    assert [(c["operation"], c["status"], c["error"]) for c in emu.calls()] == [
        ("RegisterUsage", 400, "InvalidSignatureException")
    ]
    assert emu.admin("GET", "/_emulator/registrations")["registrations"] == []
